"""Masks of known entries for imputation / inpainting (`scoresde.impute`), from a short spec.

A mask is 1 (True) where an entry is known and kept, 0 where it is to be filled, of shape (n, *D)
for data of shape (n, *D) of any rank. Specs:

- "top", "bottom", "left", "right": the known half of images (..., H, W) - the top rows, the
  bottom rows, the left or the right columns (the other half is filled in);
- "center": the central H/2 x W/2 block unknown, the border known (a "hole");
- "random:P": each entry known independently with probability P in (0, 1) (per example, drawn
  from `generator`);
- "dims:I,J,...": data of shape (n, d): coordinates I, J, ... known (e.g. "dims:0" keeps x and
  samples y | x for 2-D points).

`load_mask(path, shape)` reads a mask from a `.npy` array of 0/1 broadcastable to (n, *D), checking its
header (no objects, the shape, the memory budget) before reading it.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from scoresde._common.headers import array_headers, load_checked

__all__ = ["make_mask", "load_mask", "MASK_SPECS"]

MASK_SPECS = ("top", "bottom", "left", "right", "center", "random:P", "dims:I,J,...")


def make_mask(spec: str, n: int, data_shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """The bool mask (n, *data_shape) described by `spec` (see the module docstring); True = known."""
    if not isinstance(spec, str):
        raise TypeError(f"mask: expected a spec string ({', '.join(MASK_SPECS)}), found {type(spec).__name__}")
    shape = (int(n), *(int(d) for d in data_shape))
    m = torch.zeros(shape, dtype=torch.bool)
    if spec in ("top", "bottom", "left", "right", "center"):
        if len(shape) < 3:
            raise ValueError(f"mask {spec!r}: expected image data (..., H, W), found examples of shape {shape[1:]}")
        H, W = shape[-2:]
        if spec == "top":
            m[..., : H // 2, :] = True
        elif spec == "bottom":
            m[..., H // 2:, :] = True
        elif spec == "left":
            m[..., : W // 2] = True
        elif spec == "right":
            m[..., W // 2:] = True
        else:
            m[:] = True
            m[..., H // 4: H // 4 + H // 2, W // 4: W // 4 + W // 2] = False
        return m
    head, _, arg = spec.partition(":")
    if head == "random":
        try:
            p = float(arg)
        except ValueError:
            p = float("nan")
        if not 0 < p < 1:
            raise ValueError(f"mask {spec!r}: expected random:P with P in (0, 1), found P = {arg!r}")
        return torch.rand(shape, generator=generator) < p
    if head == "dims":
        if len(shape) != 2:
            raise ValueError(f"mask {spec!r}: expected vector data (n, d), found examples of shape {shape[1:]}")
        try:
            idx = sorted({int(i) for i in arg.split(",")})
        except ValueError:
            idx = []
        if not idx or idx[0] < 0 or idx[-1] >= shape[1]:
            raise ValueError(f"mask {spec!r}: expected dims:I,J,... with indices in [0, {shape[1]}), found {arg!r}")
        m[:, idx] = True
        return m
    raise ValueError(f"mask: expected one of {', '.join(MASK_SPECS)} or a .npy file, found {spec!r}")


def load_mask(path: str, shape: Sequence[int], what: str = "mask") -> torch.Tensor:
    """The bool mask of `shape` (n, *D) from a `.npy` array of 0/1 (1 = known) broadcastable to it; errors
    name `what` (e.g. "--mask") and the file."""
    shape = tuple(int(d) for d in shape)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r}: no such file")
    headers = array_headers(path, what)
    if "" not in headers:
        raise ValueError(f"{what} {path!r}: expected a .npy array of 0/1, found an .npz archive")
    h = headers[""]
    try:
        fits = np.broadcast_shapes(h.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{what} {path!r}: expected a shape broadcastable to {shape}, found {h.shape}")
    arr = load_checked(path, "", what, extra_per_value=1, headers=headers)
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{what} {path!r}: expected an array of 0/1 (1 = known), found other values")
    return torch.from_numpy(np.ascontiguousarray(arr != 0)).expand(shape).clone()
