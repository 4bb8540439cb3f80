"""Analytic data with exact perturbed scores: Gaussian and Gaussian-mixture distributions.

For x_0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and the kernel x_t = alpha x_0 + sigma z of a linear SDE,
the perturbed density is the mixture sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)), so its
score, density and (for one component) the probability-flow map are exact. These drive the tests,
the benchmarks (samplers compared on the exact score) and the built-in 2-D mixture dataset.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from scoresde._common.tensors import append_dims, as_time


__all__ = ["GaussianMixture", "Gaussian", "four_mode_mixture", "mode_stats"]


class GaussianMixture:
    """Mixture of diagonal Gaussians on data of any shape `D` (weights sum to one)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: Sequence[float] | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)           # (K, *D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand_as(self.means).clone()
        K = self.means.shape[0]
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.shape = tuple(self.means.shape[1:])

    # --- data ---------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * z).to(dtype)

    def _perturbed(self, sde, t: torch.Tensor, ndim: int):
        """Per-sample perturbed component means and variances: (B, K, *D) each."""
        alpha, sigma = sde.marginal_coefs(t.double())
        a = append_dims(alpha, ndim + 1)                                    # (B, 1, 1...)
        s = append_dims(sigma, ndim + 1)
        mean = a * self.means[None]
        var = a.square() * self.stds[None].square() + s.square()
        return mean, var

    def log_prob(self, x: torch.Tensor, t=0.0, sde=None) -> torch.Tensor:
        """log p_t(x) (B,), exact; at t with `sde`, or of the data itself when `sde` is None."""
        xd = x.double()
        if sde is None:
            mean, var = self.means[None], self.stds[None].square()
        else:
            mean, var = self._perturbed(sde, as_time(t, xd), x.ndim)
        comp = -0.5 * ((xd[:, None] - mean).square() / var + torch.log(2 * math.pi * var))
        comp = comp.flatten(2).sum(-1) + self.weights.log()                 # (B, K)
        return torch.logsumexp(comp, 1).to(x.dtype)

    def score(self, x: torch.Tensor, t, sde) -> torch.Tensor:
        """grad_x log p_t(x), exact."""
        xd = x.double()
        mean, var = self._perturbed(sde, as_time(t, xd), x.ndim)
        diff = xd[:, None] - mean
        comp = -0.5 * (diff.square() / var + torch.log(2 * math.pi * var))
        resp = torch.softmax(comp.flatten(2).sum(-1) + self.weights.log(), 1)  # (B, K)
        s = (append_dims(resp, diff.ndim) * (-diff / var)).sum(1)
        return s.to(x.dtype)

    def score_fn(self, sde):
        """A score function score_fn(x, t) for this data under `sde` (counts its calls in .nfe)."""
        def fn(x, t):
            fn.nfe += 1
            return self.score(x, t, sde)
        fn.nfe = 0
        return fn

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely component of each point (B,)."""
        xd = x.double()
        var = self.stds[None].square()
        comp = -0.5 * ((xd[:, None] - self.means[None]).square() / var + torch.log(var))
        return (comp.flatten(2).sum(-1) + self.weights.log()).argmax(1)


class Gaussian(GaussianMixture):
    """A single diagonal Gaussian N(mu, diag(s^2)): also has the exact probability-flow map."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        super().__init__(mean[None], torch.as_tensor(std, dtype=torch.float64).expand_as(mean)[None])

    def flow_map(self, x: torch.Tensor, t, s, sde) -> torch.Tensor:
        """Exact probability-flow ODE solution from time t to time s: the standardised
        coordinate (x - alpha mu) / sqrt(alpha^2 s_0^2 + sigma^2) is conserved."""
        xd = x.double()
        m_t, v_t = self._perturbed(sde, as_time(t, xd), x.ndim)
        m_s, v_s = self._perturbed(sde, as_time(s, xd), x.ndim)
        u = (xd - m_t[:, 0]) / v_t[:, 0].sqrt()
        return (m_s[:, 0] + v_s[:, 0].sqrt() * u).to(x.dtype)


def four_mode_mixture(std: float = 0.1) -> GaussianMixture:
    """The 2-D test mixture: means (+-1, +-1), std 0.1, weights 0.1/0.2/0.3/0.4."""
    means = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    return GaussianMixture(means, torch.full((4, 2), std), [0.1, 0.2, 0.3, 0.4])


def mode_stats(mix: GaussianMixture, x: torch.Tensor):
    """(total variation of mode weights, max relative error of within-mode std) of samples x."""
    k = mix.assign(x)
    K = mix.weights.numel()
    w = torch.bincount(k, minlength=K).double() / len(k)
    tv = 0.5 * (w - mix.weights).abs().sum().item()
    err = 0.0
    for j in range(K):
        xs = x[k == j].double()
        if len(xs) > 10:
            err = max(err, (xs.std(0) / mix.stds[j] - 1).abs().max().item())
    return tv, err
