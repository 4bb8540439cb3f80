"""Fréchet distance of feature Gaussians (FID) and the `.npz` statistics files it is computed from.

FID (Heusel et al. 2017, arXiv:1706.08500) fits a Gaussian N(mu, Sigma) to the features of each set
of images and reports
    d^2 = |mu_1 - mu_2|^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}).
`frechet_distance` computes it as pytorch-fid's `calculate_frechet_distance` does (scipy's `sqrtm` of
the product; when that is not finite, both covariances get `eps` added to their diagonal; a small
imaginary part from round-off is dropped, a large one is an error), so figures agree with it and with
published numbers. Statistics files hold `mu` (F,) and `sigma` (F, F), the format pytorch-fid and EDM
(Karras et al. 2022, arXiv:2206.00364) read and write, so their reference statistics work as they are.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from scoresde._common.headers import array_headers, check_header, load_checked

__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "load_stats", "save_stats"]


def _as_features(f, name: str) -> np.ndarray:
    """Features as a float64 (N, F) numpy array."""
    if hasattr(f, "detach"):
        f = f.detach().cpu().numpy()
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise ValueError(f"{name}: expected features of shape (N, F), found shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: {int((~np.isfinite(f)).sum())} feature values are NaN or infinite")
    return f


def check_full_rank(n: int, dims: int, name: str) -> None:
    """FID needs N > F samples for a full-rank covariance of F-dimensional features."""
    if n <= dims:
        raise ValueError(f"{name}: FID needs more samples than feature dimensions (N > F) for a full-rank "
                         f"covariance; found N = {n} samples of F = {dims} features")


def feature_stats(features, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(mu (F,), sigma (F, F)) of features (N, F): the mean and the unbiased covariance (ddof 1), float64."""
    f = _as_features(features, name)
    if len(f) < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 samples, found {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), as pytorch-fid computes it."""
    from scipy import linalg
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1, mu2: expected two vectors of one length F, found shapes {mu1.shape} and {mu2.shape}")
    F = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (F, F):
            raise ValueError(f"{name}: expected a ({F}, {F}) covariance to match mu, found shape {s.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                        # scipy's 'singular matrix' notice
        covmean = linalg.sqrtm(sigma1 @ sigma2)                # (Sigma_1 Sigma_2)^{1/2}
    if not np.isfinite(covmean).all():                         # a singular product: regularise both factors
        warnings.warn(f"frechet_distance: the covariance product is singular; adding {eps} to the diagonals",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(F) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):                               # round-off gives a small imaginary part
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm(sigma1 sigma2) has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are not valid")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """FID between two feature sets (N1, F) and (N2, F); each needs N > F for a full-rank covariance."""
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features1, features2: expected the same feature dimension, found {f1.shape[1]} "
                         f"and {f2.shape[1]}")
    check_full_rank(len(f1), f1.shape[1], "features1")
    check_full_rank(len(f2), f2.shape[1], "features2")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2), eps=eps)


def save_stats(path: str, mu, sigma, **extra) -> None:
    """Write `mu` and `sigma` (and any `extra` arrays) to an `.npz` file, as pytorch-fid / EDM do."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"stats: expected mu (F,) and sigma (F, F), found shapes {mu.shape} and {sigma.shape}")
    if not str(path).endswith(".npz"):
        raise ValueError(f"stats path {path!r}: expected a file name ending in .npz")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"stats path {path!r}: the directory {directory!r} does not exist")
    np.savez(path, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in extra.items()})


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an `.npz` with arrays `mu` and `sigma` (pytorch-fid, EDM or `save_stats`).

    The shapes and dtypes are checked from the arrays' headers before either is read: mu (F,) and sigma
    (F, F) of numbers, within the memory budget, else a ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"stats {path!r}: no such file")
    headers = array_headers(path, "stats")
    if "" in headers:
        raise ValueError(f"stats {path!r}: expected an .npz file with arrays 'mu' and 'sigma', found a single array")
    if "mu" not in headers or "sigma" not in headers:
        raise ValueError(f"stats {path!r}: expected arrays 'mu' and 'sigma', found keys {list(headers)}")
    mu_h, sigma_h = headers["mu"], headers["sigma"]
    for h in (mu_h, sigma_h):
        if h.dtype.hasobject or not (np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating)):
            raise ValueError(f"stats {path!r}: array {h.key!r} has dtype {h.dtype}; expected real numbers "
                             "(object arrays are never unpickled)")
    F = mu_h.shape[0] if len(mu_h.shape) == 1 else None
    if F is None or sigma_h.shape != (F, F):
        raise ValueError(f"stats {path!r}: expected mu (F,) and sigma (F, F), found shapes {mu_h.shape} and "
                         f"{sigma_h.shape}")
    # sigma as float64, and the products and square root frechet_distance takes of it (about 6 copies)
    check_header(sigma_h, "stats", extra_per_value=6 * 8)
    mu = np.asarray(load_checked(path, "mu", "stats", headers=headers), np.float64)
    sigma = np.asarray(load_checked(path, "sigma", "stats", headers=headers), np.float64)
    return mu, sigma
