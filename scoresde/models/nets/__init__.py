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
| `seq_transformer` | bidirectional transformer over tokens (masked diffusion, `nets.transformer`) | optional |
| `causal_transformer` | the same network with causal attention (autoregressive baseline) | none |
| `dit` | Diffusion Transformer, Peebles & Xie 2023 (arXiv:2212.09748); presets DiT-S/2 ... DiT-XL/8 | sinusoidal |

The token networks take `forward(x, t)` with x (B, L) token ids and return logits (B, L, K).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from scoresde._common.registry import Registry
from scoresde.models.nets.device import autocast, prepare_model
from scoresde.models.nets.dit import DiT
from scoresde.models.nets.mlp import MLP
from scoresde.models.nets.ncsnpp import NCSNpp, ddpmpp
from scoresde.models.nets.transformer import SeqTransformer, causal_transformer
from scoresde.models.nets.unet import DDPMUNet


__all__ = ["MODELS", "get_model", "list_models", "model_arguments", "model_parameters", "check_model_config", "count_parameters", "MLP",
           "DDPMUNet", "NCSNpp", "SeqTransformer", "DiT",
           "autocast", "prepare_model"]

MODELS = Registry("model")
MODELS.register("mlp")(MLP)
MODELS.register("ddpm_unet")(DDPMUNet)
MODELS.register("ddpmpp")(ddpmpp)
MODELS.register("ncsnpp")(NCSNpp)
MODELS.register("seq_transformer")(SeqTransformer)
MODELS.register("causal_transformer")(causal_transformer)
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
    check_model_config(name, config)
    return MODELS[name](**config)


def model_arguments(name: str) -> list[str] | None:
    """The keyword arguments the network `name` accepts (its constructor's signature), or None
    when it takes arbitrary keywords. A builder with `**config` names where they go with a
    `forwards_to` attribute (e.g. ddpmpp -> NCSNpp)."""
    params = model_parameters(name)
    return None if params is None else list(params)


def model_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """{argument: its `inspect.Parameter` (annotation, default)} of the network `name`, as `model_arguments`."""
    found: dict[str, inspect.Parameter] = {}
    obj: Any = MODELS[name]
    while obj is not None:
        params = inspect.signature(obj).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in found:
                found[p.name] = p
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return found
        obj = getattr(obj, "forwards_to", None)
    return None


def check_model_config(name: str, config: dict[str, Any], *, extra: tuple[str, ...] = (),
                       exclude: tuple[str, ...] = (), prefix: str = "") -> None:
    """Refuse keys of `config` that network `name` does not take (plus `extra`, minus `exclude`),
    naming the unknown keys and the known ones: TypeError for the Python API, ValueError for
    config keys (written with `prefix`, e.g. "model.")."""
    known = model_arguments(name)
    if known is None:
        return
    known = [k for k in [*known, *(k for k in extra if k not in known)] if k not in exclude]
    unknown = [k for k in config if k not in known]
    if unknown:
        what = ", ".join(f"{prefix}{k}" for k in unknown)
        where = "config " if prefix else ""
        msg = (f"{where}{what}: unknown {'key' if prefix else 'argument'}{'s' if len(unknown) > 1 else ''} "
               f"of model {name!r}; known: {', '.join(prefix + k for k in known)}")
        raise (ValueError if prefix else TypeError)(msg)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
