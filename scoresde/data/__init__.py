"""Data: built-in datasets, arrays and image folders, captions (metadata files, text arrays, the built-in
`digitpairs`), inpainting masks, and token data (tokenizers, the built-in languages)."""
from .datasets import (DATASETS, Dataset, list_datasets, load_dataset, from_array, load_array, load_image_folder,
                       check_data_source)
from . import digitpairs as _digitpairs      # noqa: F401  (registers the built-in "digitpairs")

__all__ = ["DATASETS", "Dataset", "list_datasets", "load_dataset", "from_array", "load_array", "load_image_folder",
           "check_data_source"]
