"""Score networks and their registry.

Every network is an `nn.Module` built by `get_model(name, data_shape=..., **config)` with
`forward(x, c)`: x is (B, *data_shape) and c a (B,) noise-conditioning value of arbitrary scale
(ScoreModel passes 999 t for VP / sub-VP or log sigma for VE). Each module carries `data_shape`
(a tuple) and `config` (the resolved constructor arguments, JSON/TOML-serialisable), so that
`get_model(name, **net.config)` rebuilds it.

| name | network | default conditioning features |
|---|---|---|
| `mlp` | noise-conditional MLP for low-dimensional data | sinusoidal |
| `ddpm_unet` | DDPM U-Net, Ho et al. 2020 (arXiv:2006.11239) | sinusoidal |
| `ddpmpp` | DDPM++ cont., Song et al. 2021 (arXiv:2011.13456, App. H) | sinusoidal |
| `ncsnpp` | NCSN++ cont., Song et al. 2021 (App. H) | Gaussian Fourier, scale 16 |
| `dit` | Diffusion Transformer, Peebles & Xie 2023 (arXiv:2212.09748); presets DiT-S/2 ... DiT-XL/8 | sinusoidal |
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..utils import Registry
from .cuda import autocast, prepare_model
from .dit import DiT
from .mlp import MLP
from .ncsnpp import NCSNpp, ddpmpp
from .unet import DDPMUNet

__all__ = ["MODELS", "get_model", "list_models", "count_parameters", "MLP", "DDPMUNet", "NCSNpp", "DiT",
           "autocast", "prepare_model"]

MODELS = Registry("model")
MODELS.register("mlp")(MLP)
MODELS.register("ddpm_unet")(DDPMUNet)
MODELS.register("ddpmpp")(ddpmpp)
MODELS.register("ncsnpp")(NCSNpp)
MODELS.register("dit")(DiT)


def list_models() -> list[str]:
    """Names of the registered score networks."""
    return list(MODELS)


def get_model(name: str, **config: Any) -> nn.Module:
    """Build the network registered as `name` with `config` (data_shape=..., widths, ...).

    Unknown names raise KeyError listing the known ones; bad config values raise ValueError /
    TypeError naming the argument.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), one of {list_models()}, found {type(name).__name__}")
    return MODELS[name](**config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
