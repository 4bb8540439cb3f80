"""Tensor helpers: broadcasting a per-sample value against data of any rank (`append_dims`) and
turning a float or (B,) time into a (B,) tensor on the data's device and dtype (`as_time`).
"""
from __future__ import annotations

from typing import Any

import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample `(B,)` tensor broadcasts against rank `ndim`."""
    if v.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return time `t` (float, 0-d or `(B,)` tensor) as a `(B,)` tensor on `x`'s device and dtype."""
    B = x.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a tensor of shape ({B},), found {type(t).__name__}")
    if not isinstance(t, torch.Tensor):
        return torch.full((B,), float(t), device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.to(device=x.device, dtype=x.dtype).expand(B)
    if t.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},) to match the batch of x, found {tuple(t.shape)}")
    return t.to(device=x.device, dtype=x.dtype)
