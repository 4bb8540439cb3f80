"""The public namespace `scoresde.nets`: the score networks' registry and device helpers (the modules
live in `scoresde.models.nets`)."""
from .models.nets import (MODELS, get_model, list_models, model_arguments, check_model_config, count_parameters,
                          autocast, prepare_model, DiT, MLP, NCSNpp, ddpmpp, SeqTransformer, causal_transformer,
                          DDPMUNet)

__all__ = ["MODELS", "get_model", "list_models", "model_arguments", "check_model_config", "count_parameters",
           "autocast", "prepare_model", "DiT", "MLP", "NCSNpp", "ddpmpp", "SeqTransformer", "causal_transformer",
           "DDPMUNet"]
