"""scoresde: score-based generative modelling through stochastic differential equations.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential
Equations", arXiv:2011.13456.
"""
from .sde import SDE, VPSDE, SubVPSDE, VESDE, ReverseSDE, get_sde
from .sde_discrete import DiscreteVPSDE, CosineVPSDE
from .analytic import Gaussian, GaussianMixture
from .likelihood import bits_per_dim, dataset_likelihood
from .losses import dsm_loss, ddpm_loss, smld_loss
from .parameterization import ScoreModel, score_from_eps, eps_from_score
from .guidance import (classifier_free_score, classifier_guided_score, impute, NoiseConditionalClassifier,
                       conditional_dsm_loss, classifier_loss, label_dropout)
from .nets import get_model, list_models
from .ema import EMA
from .samplers import list_samplers
from .samplers.optimize import optimize_steps
from .utils import Registry, append_dims
from .checks import NonFiniteError
from .train import train, TrainResult, TrainingError
from .checkpoint import load, CheckpointError
from .data import load_dataset, list_datasets
from .latent import Autoencoder, load_autoencoder
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
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "get_sde",
    "DiscreteVPSDE", "CosineVPSDE",
    "Gaussian", "GaussianMixture",
    "bits_per_dim", "dataset_likelihood",
    "dsm_loss", "ddpm_loss", "smld_loss", "ScoreModel", "score_from_eps", "eps_from_score",
    "get_model", "list_models", "EMA",
    "classifier_free_score", "classifier_guided_score", "impute", "NoiseConditionalClassifier",
    "conditional_dsm_loss", "classifier_loss", "label_dropout",
    "list_samplers", "optimize_steps",
    "Registry", "append_dims", "NonFiniteError",
    "train", "TrainResult", "TrainingError", "load", "CheckpointError", "load_dataset", "list_datasets",
    "load_score_sde", "from_diffusers", "load_dit",
    "discrete", "metrics", "pretrained",
    "Autoencoder", "load_autoencoder",
]
