"""Kernel Inception Distance: the unbiased MMD^2 of features under a cubic polynomial kernel.

Binkowski et al. (2018), "Demystifying MMD GANs", arXiv:1801.01401, Sec. 4 / Appendix: with
k(x, y) = (x.y / d + 1)^3 for d-dimensional features and m features per set,
    MMD_u^2 = 1/(m(m-1)) sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i,j} k(x_i, y_j),
an unbiased estimate of MMD^2 (its expectation is exactly MMD^2, zero for equal distributions, so it
can be negative). As torch-fidelity, clean-fid and StyleGAN's metrics do, it is averaged over
`subsets` random subsets of `subset_size` rows of each set (drawn without replacement; the size is
capped at the smaller set), reporting the mean and standard deviation over subsets.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["polynomial_kernel", "mmd2_unbiased", "kid"]


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x_i, y_j) = (x_i . y_j / d + 1)^3 for rows of x (m, d) and y (n, d): (m, n)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 of rows x (m, d) and y (n, d) under `polynomial_kernel` (m, n >= 2)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    # sum_{i != j}: the full sum less the diagonal
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def _features(f, name: str) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f).detach().cpu().double()
    if f.ndim != 2 or f.shape[1] == 0:
        raise ValueError(f"{name}: expected features of shape (N, F), found shape {tuple(f.shape)}")
    if len(f) < 2:
        raise ValueError(f"{name}: KID needs at least 2 samples, found {len(f)}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: {int((~torch.isfinite(f)).sum())} feature values are NaN or infinite")
    return f


def kid(features1, features2, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `subsets` random subsets of two feature sets (N1, F), (N2, F)."""
    x, y = _features(features1, "features1"), _features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features1, features2: expected the same feature dimension, found {x.shape[1]} and "
                         f"{y.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets, subset_size: expected >= 1 and >= 2, found {subsets} and {subset_size}")
    m = min(len(x), len(y), subset_size)
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ix, iy = torch.randperm(len(x), generator=g)[:m], torch.randperm(len(y), generator=g)[:m]
        values.append(mmd2_unbiased(x[ix], y[iy]))
    v = np.asarray(values)
    return float(v.mean()), float(v.std())
