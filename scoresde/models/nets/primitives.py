"""Primitive layers with score_sde's / DDPM's initialisation: variance scaling (fan-average uniform),
convolutions and linear maps with zero bias, group normalisation with DDPM's group count."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["variance_scaling_", "conv", "linear", "group_norm"]


def variance_scaling_(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM / score_sde default init: uniform with variance scale / fan_avg (scale 0 -> 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = w[0, 0].numel() if w.ndim > 2 else 1
    fan_avg = 0.5 * (w.shape[0] + w.shape[1]) * receptive
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return w.uniform_(-bound, bound)


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    """k x k convolution ('same' padding for stride 1) with the DDPM init and zero bias."""
    m = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0)
    variance_scaling_(m.weight, init_scale)
    nn.init.zeros_(m.bias)
    return m


def linear(cin: int, cout: int, init_scale: float = 1.0) -> nn.Linear:
    m = nn.Linear(cin, cout)
    variance_scaling_(m.weight, init_scale)
    nn.init.zeros_(m.bias)
    return m


def group_norm(channels: int, num_groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm with `num_groups` (default NCSN++'s min(C // 4, 32)); refuses groups not dividing C."""
    g = min(channels // 4, 32) if num_groups is None else num_groups
    if g < 1 or channels % g:
        raise ValueError(f"GroupNorm: {g} groups must divide the {channels} channels of a layer; "
                         "choose ch / ch_mult / num_groups so that every width is a multiple of the groups")
    return nn.GroupNorm(g, channels, eps=1e-6)
