"""scoresde: score-based generative modelling through stochastic differential equations.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential
Equations", arXiv:2011.13456. The package is layered; each layer imports only those below it
(docs/architecture.md, enforced by import-linter):

    _common -> sde -> data -> samplers | evaluation -> models -> runs -> pretrained -> training -> cli

This module holds the public names only.
"""
from .sde import SDE, VPSDE, SubVPSDE, VESDE, FlowSDE, EDMSDE, ReverseSDE, get_sde, DiscreteVPSDE, CosineVPSDE, Gaussian, GaussianMixture
from .evaluation.likelihood import bits_per_dim, dataset_likelihood
from .training.losses import dsm_loss, ddpm_loss, smld_loss, conditional_dsm_loss, classifier_loss, label_dropout
from .training.losses import edm_loss, flow_matching_loss
from .models.score_model import ScoreModel, score_from_eps, eps_from_score
from .models.conditioning import Cond
from .models.text import TextEncoder, TransformerTextEncoder
from .models.guidance import classifier_free_score, classifier_guided_score
from .models.cascade import super_resolve, cascade
from .models.classifier import NoiseConditionalClassifier
from .samplers.inpainting import impute
from .samplers.img2img import sdedit, invert
from .models.nets import get_model, list_models
from .models.ema import EMA
from .models.phema import PowerFunctionEMA
from .samplers import list_samplers
from .samplers.optimize import optimize_steps
from ._common.registry import Registry
from ._common.tensors import append_dims
from ._common.finite import NonFiniteError
from .training.api import train, TrainResult, TrainingError
from .runs.load import load, load_autoencoder
from .runs.checkpoint import CheckpointError
from .data.datasets import load_dataset, list_datasets
from .models.autoencoders import Autoencoder
from .models.clip_text import CLIPTextEncoder, SDXLTextEncoder
from . import pretrained
from . import metrics
from . import discrete                      # masked diffusion for token sequences (MDLM / LLaDA)

__version__ = "0.1.0"

_PRETRAINED = ("load_score_sde", "from_diffusers", "load_dit")


def __getattr__(name):                      # pretrained loaders: imported on first use
    if name in _PRETRAINED:
        return getattr(pretrained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "FlowSDE", "EDMSDE", "ReverseSDE", "get_sde",
    "DiscreteVPSDE", "CosineVPSDE",
    "Gaussian", "GaussianMixture",
    "bits_per_dim", "dataset_likelihood",
    "dsm_loss", "ddpm_loss", "smld_loss", "ScoreModel", "score_from_eps", "eps_from_score",
    "get_model", "list_models", "EMA", "PowerFunctionEMA",
    "Cond", "TextEncoder", "TransformerTextEncoder", "classifier_free_score", "classifier_guided_score", "impute",
    "sdedit", "invert",
    "NoiseConditionalClassifier",
    "conditional_dsm_loss", "classifier_loss", "label_dropout", "edm_loss", "flow_matching_loss",
    "list_samplers", "optimize_steps",
    "Registry", "append_dims", "NonFiniteError",
    "train", "TrainResult", "TrainingError", "load", "CheckpointError", "load_dataset", "list_datasets",
    "load_score_sde", "from_diffusers", "load_dit",
    "discrete", "metrics", "pretrained",
    "Autoencoder", "load_autoencoder",
    "CLIPTextEncoder", "SDXLTextEncoder",
    "super_resolve", "cascade",
]
