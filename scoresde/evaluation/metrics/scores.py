"""Scores from a classifier's logits: the Inception Score and the class accuracy of conditional samples.

Inception Score (Salimans et al. 2016, arXiv:1606.03498): IS = exp(E_x KL(p(y|x) || p(y))), where
p(y) is the mean of p(y|x) over the split; as in the original code (and torch-fidelity), the samples
are cut into `splits` parts in order (rows i N / s to (i + 1) N / s), and the mean and standard
deviation over parts are reported (torch-fidelity shuffles the rows first; the original does not).
For the FID Inception network the logits are pool3 @ W without the bias, the original code's
`softmax/logits/MatMul`.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score", "class_accuracy"]


def _logits(logits, name: str = "logits") -> torch.Tensor:
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).detach().double()
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name}: expected logits of shape (N, K) with K >= 2 classes, found shape {tuple(z.shape)}")
    return z


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` parts of exp(mean_x KL(p(y|x) || p(y))) from logits (N, K)."""
    z = _logits(logits)
    if not isinstance(splits, int) or not 1 <= splits <= len(z):
        raise ValueError(f"splits: expected an integer in [1, N = {len(z)}], found {splits!r}")
    log_p = torch.log_softmax(z, dim=1)                               # log p(y|x), (N, K)
    scores = []
    N = len(log_p)
    for i in range(splits):                                           # parts as the original code cuts them
        part = log_p[i * N // splits:(i + 1) * N // splits]
        log_py = torch.logsumexp(part, 0) - np.log(len(part))         # log p(y) = log mean_x p(y|x)
        kl = (part.exp() * (part - log_py)).sum(1)                    # KL(p(y|x) || p(y)), (n,)
        scores.append(kl.mean().exp().item())
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


def class_accuracy(logits, labels) -> float:
    """Fraction of samples whose most likely class is their label."""
    z = _logits(logits)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1).long()
    if len(y) != len(z):
        raise ValueError(f"labels: expected one label per sample ({len(z)}), found {len(y)}")
    return (z.argmax(1) == y.to(z.device)).double().mean().item()
