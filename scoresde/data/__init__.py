"""Data: built-in datasets, arrays and image folders, inpainting masks, and token data (tokenizers,
the built-in languages)."""
from .datasets import (DATASETS, Dataset, list_datasets, load_dataset, from_array, load_array, load_image_folder,
                       check_data_source)

__all__ = ["DATASETS", "Dataset", "list_datasets", "load_dataset", "from_array", "load_array", "load_image_folder",
           "check_data_source"]
