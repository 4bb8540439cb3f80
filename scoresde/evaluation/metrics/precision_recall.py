"""Improved precision and recall of generative models (Kynkäänniemi et al. 2019, arXiv:1904.06991).

Each set of features spans a manifold estimate: the union of balls around its points, each ball's
radius the distance to that point's k-th nearest neighbour within its own set (k = 3 by default,
the point itself not counted). Precision is the fraction of generated features inside the real
manifold; recall is the fraction of real features inside the generated manifold:
    precision = 1/|G| sum_g 1[exists r: |g - r| <= NN_k(r)],   recall = the same with R and G swapped.
Distances are computed in blocks, so memory stays at `block` x N.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["kth_neighbour_radii", "manifold_coverage", "precision_recall"]


def _features(f, name: str) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f).detach().double()
    if f.ndim != 2 or f.shape[1] == 0:
        raise ValueError(f"{name}: expected features of shape (N, F), found shape {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: {int((~torch.isfinite(f)).sum())} feature values are NaN or infinite")
    return f


def kth_neighbour_radii(manifold: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """Distance from each row of `manifold` (N, F) to its k-th nearest other row: (N,)."""
    # the row itself is at distance 0, the smallest: the (k+1)-th smallest distance is the k-th neighbour
    return torch.cat([torch.cdist(b, manifold).kthvalue(k + 1, dim=1).values for b in manifold.split(block)])


def manifold_coverage(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> float:
    """Fraction of `probes` (M, F) within radii[j] of some manifold row j."""
    inside = [(torch.cdist(b, manifold) <= radii[None]).any(1) for b in probes.split(block)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real, fake, *, k: int = 3, block: int = 1024) -> dict[str, float]:
    """{"precision", "recall"} of fake features (M, F) against real features (N, F)."""
    r, g = _features(real, "real"), _features(fake, "fake")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"real, fake: expected the same feature dimension, found {r.shape[1]} and {g.shape[1]}")
    if not isinstance(k, int) or k < 1 or k >= min(len(r), len(g)):
        raise ValueError(f"k: expected an integer in [1, {min(len(r), len(g)) - 1}] (fewer than either set's "
                         f"size), found {k!r}")
    g = g.to(r.device)
    return {"precision": manifold_coverage(g, r, kth_neighbour_radii(r, k, block), block),
            "recall": manifold_coverage(r, g, kth_neighbour_radii(g, k, block), block)}
