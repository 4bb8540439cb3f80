"""A noise-conditional classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021,
arXiv:2105.05233, Sec. 4; Song et al. 2021, arXiv:2011.13456, Sec. 5 / App. I.1), trained on perturbed
data x_t = alpha x0 + sigma z by `scoresde.training.losses.classifier_loss`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.models.nets.layers import (check_data_shape, make_embedding)
from scoresde.models.nets.primitives import linear
from scoresde.models.score_model import CONDITIONINGS, conditioning_value
from scoresde.sde.base import check_sde
from scoresde._common.tensors import as_time
from scoresde._common.validation import check_choice, check_int


# --- classifier guidance --------------------------------------------------------------------------
class NoiseConditionalClassifier(nn.Module):
    """A noise-conditional classifier p(y | x_t, t): an MLP on flattened x (any rank), logits (B, K).

    Conditioning follows `ScoreModel`: the network sees c = 999 t ("t", sinusoidal features; VP /
    sub-VP), c = sde.timestep(t) ("timestep", sinusoidal; a discrete schedule's timesteps) or
    c = log sigma(t) ("log_sigma", Gaussian Fourier features; VE); "auto" picks the
    SDE's default. The embedding of c is added to every hidden layer.
    forward(x, t) with t a float or (B,) tensor returns the logits.
    """

    def __init__(self, sde: Any, data_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, conditioning: str = "auto", embed_dim: int = 64):
        super().__init__()
        self.sde = check_sde(sde)
        self.data_shape = check_data_shape(data_shape, image=False)
        self.num_classes = check_int("num_classes", num_classes)
        width, depth, embed_dim = check_int("width", width), check_int("depth", depth), check_int("embed_dim", embed_dim)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        if conditioning == "auto":
            conditioning = getattr(sde, "default_conditioning", "t")
        self.conditioning = conditioning
        self._config = dict(data_shape=list(self.data_shape), num_classes=self.num_classes, width=width,
                            depth=depth, conditioning=conditioning, embed_dim=embed_dim)
        kind = "sinusoidal" if conditioning in ("t", "timestep") else "fourier"
        self.embed = make_embedding(kind, embed_dim if kind == "sinusoidal" else embed_dim // 2 or 1)
        self.temb = nn.Sequential(linear(self.embed.out_dim, width), nn.SiLU(), linear(width, width))
        self.inp = linear(math.prod(self.data_shape), width)
        self.hidden = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.cond = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.out = linear(width, self.num_classes)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (except the SDE), for checkpoints."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != self.data_shape:
            found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a floating-point tensor of shape (B, {', '.join(map(str, self.data_shape))}), "
                             f"found {found}")
        t = as_time(t, x)
        _, sigma = self.sde.marginal_coefs(t)
        c = conditioning_value(self.conditioning, self.sde, t, sigma)
        dtype = self.inp.weight.dtype
        emb = F.silu(self.temb(self.embed(c.to(dtype))))                       # (B, width)
        h = self.inp(x.to(dtype).flatten(1)) + emb
        for lin, cond in zip(self.hidden, self.cond):
            h = F.silu(lin(h) + cond(emb))
        return self.out(h)                                                       # (B, K) logits
