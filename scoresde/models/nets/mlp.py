"""A noise-conditional MLP score network for low-dimensional data (toy 2-D sets, tabular data).

The conditioning value c is mapped to sinusoidal (Vaswani et al. 2017, arXiv:1706.03762) or
Gaussian Fourier features (Tancik et al. 2020, arXiv:2006.10739), embedded by a small MLP, and
added to every hidden layer, as the time embedding enters each block of the DDPM U-Net
(Ho et al. 2020, arXiv:2006.11239). Data of any shape (B, *D) is flattened to (B, prod D).
With `num_classes=K` a learned class embedding (K classes and a null label K, Ho & Salimans 2022,
arXiv:2207.12598) is added to the noise-level embedding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_int
from scoresde.models.conditioning import Cond
from scoresde.models.nets.layers import (LabelEmbedding, check_data_shape, check_num_classes, embed_inputs,
                                         make_embedding)
from scoresde.models.nets.primitives import linear


__all__ = ["MLP"]


class MLP(nn.Module):
    """e = SiLU(MLP(feat(c)));  h_0 = W_in x + e;  h_{l+1} = SiLU(W_l h_l + U_l e);  out = W_out h_L (zero-initialised).

    Args:
        data_shape: shape D of one sample (default (2,): 2-D points).
        width: hidden width.
        depth: number of hidden layers.
        embedding: "sinusoidal" (for c = 999 t) or "fourier" (for c = log sigma).
        embed_dim: size of the noise-level features.
        fourier_scale: std of the Fourier frequencies.
        num_classes: None (unconditional) or K: forward(x, c, cond) reads cond.labels in [0, K], K = null.
    """

    def __init__(self, data_shape: Sequence[int] = (2,), width: int = 128, depth: int = 3,
                 embedding: str = "sinusoidal", embed_dim: int = 64, fourier_scale: float = 16.0,
                 num_classes: int | None = None):
        super().__init__()
        self.data_shape = check_data_shape(data_shape, image=False)
        width, depth = check_int("width", width), check_int("depth", depth)
        embed_dim = check_int("embed_dim", embed_dim)
        self.config = dict(data_shape=list(self.data_shape), width=width, depth=depth, embedding=embedding,
                           embed_dim=embed_dim, fourier_scale=float(fourier_scale))
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes is not None:  # only then in the config: unconditional configs stay as they were
            self.config["num_classes"] = self.num_classes
        d = math.prod(self.data_shape)
        self.embed = make_embedding(embedding, embed_dim if embedding != "fourier" else embed_dim // 2 or 1,
                                    fourier_scale)
        self.temb = nn.Sequential(linear(self.embed.out_dim, width), nn.SiLU(), linear(width, width))
        self.inp = linear(d, width)
        self.hidden = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.cond = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.out = linear(width, d, init_scale=0.0)
        self.label = LabelEmbedding(self.num_classes, width) if self.num_classes is not None else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *D), c (B,) noise-conditioning value, cond a Cond (its labels in [0, K]), (B,) labels or None
        (the null label)."""
        h, emb = embed_inputs(self, x, c, cond, self.inp.weight.dtype)
        emb = F.silu(emb)
        h = self.inp(h.flatten(1)) + emb
        for lin, cond in zip(self.hidden, self.cond):
            h = F.silu(lin(h) + cond(emb))
        return self.out(h).reshape(x.shape).to(x.dtype)
