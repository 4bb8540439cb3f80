"""Preconditioners: what a network predicts and what it is fed, one small class per formulation.

Every formulation is a denoiser written as in Karras et al. (2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv:2206.00364, Table 1), over the kernel x_t = alpha x_0 + sigma z
of a linear SDE (alpha = alpha(t), sigma = sigma(t), per sample):

    D(x_t) = c_skip x_t + c_out F(c_in x_t; c_noise)          (D estimates E[x_0 | x_t])

A class gives `scalings(alpha, sigma) -> (c_skip, c_out, c_in)`; everything else follows from D
through Tweedie's formula, in one place (`Preconditioner`):

    score = (alpha D - x) / sigma^2      eps = (x - alpha D) / sigma      v = alpha eps - sigma D
    u = eps - D   (rectified flow's velocity z - x_0)

The classic parameterisations override those conversions with their own closed forms (the
same maths, the arithmetic of the original implementations, so results stay bit-identical):

| name    | F predicts           | c_skip          | c_out                        | c_in |
|---------|----------------------|-----------------|------------------------------|------|
| `eps`   | z (DDPM)             | 1 / alpha       | -sigma / alpha               | 1    |
| `score` | the score (NCSN)     | 1 / alpha       | sigma^2 / alpha (sigma / alpha when scaled by sigma) | 1 |
| `x0`    | x_0                  | 0               | 1                            | 1    |
| `v`     | alpha z - sigma x_0  | alpha / r       | -sigma / r, r = alpha^2 + sigma^2 | 1 |
| `flow`  | u = z - x_0 (rectified flow) | 1 / r       | -sigma / r, r = alpha + sigma | 1 / r |
| `edm`   | EDM's F              | s_d^2 / (s^2 + s_d^2) / alpha | s s_d / sqrt(s^2 + s_d^2) / alpha | 1 / (alpha sqrt(s^2 + s_d^2)) |
| `flow`  | u = z - x_0 (flow matching) | 1 / (alpha + sigma) | -sigma / (alpha + sigma)   | 1    |

(`flow`: x / r = (alpha x_0 + sigma z) / (alpha + sigma) is the rectified-flow path's point at t' = sigma / r,
so the network sees that path's input whatever the SDE, and r = 1 on the "flow" path, where D = x - t u.
`edm`: s = sigma / alpha, the noise level of x / alpha, and s_d = sigma_data.) The noise input c_noise is a
noise-input function of its own (`NOISE_INPUTS`) ("t": 999 t, "log_sigma", "sigma", "timestep"; EDM's is ln(s) / 4), chosen by
`ScoreModel(conditioning=...)`. Adding a formulation is one class registered in `PRECONDITIONERS`.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from scoresde._common.registry import Registry

__all__ = ["Preconditioner", "EpsPrediction", "ScorePrediction", "X0Prediction", "VPrediction", "FlowPrediction",
           "EDMPrediction", "PRECONDITIONERS", "NOISE_INPUTS", "T_SCALE"]

PRECONDITIONERS = Registry("parameterization")
NOISE_INPUTS = Registry("conditioning")
T_SCALE = 999.0   # "t" conditioning: c = 999 t, DDPM's integer timestep for N = 1000 (fixed, so
                  # a network does not depend on the number of sampling steps)


class Preconditioner:
    """D(x) = c_skip x + c_out F(c_in x; c_noise); score, eps, x0 and v of the network output F.

    Arguments of every method: `out` = F (shaped like x), `x`, and `alpha`, `sigma` broadcast against x.
    """

    name = "?"
    scales_input = True     # False: c_in = 1, the network sees x itself (no scalings computed per call)

    def scalings(self, alpha: torch.Tensor, sigma: torch.Tensor):
        """(c_skip, c_out, c_in), each broadcast against x; c_in None means the input is not scaled."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Settings that rebuild this preconditioner (beyond its name)."""
        return {}

    def input(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The network's input c_in x."""
        if not self.scales_input:
            return x
        c_in = self.scalings(alpha, sigma)[2]
        return x if c_in is None else c_in * x

    def x0(self, out, x, alpha, sigma):
        """The denoiser D(x) = c_skip x + c_out F."""
        c_skip, c_out, _ = self.scalings(alpha, sigma)
        return c_skip * x + c_out * out

    def eps(self, out, x, alpha, sigma):
        """eps = (x - alpha D) / sigma   (x = alpha x0 + sigma eps)."""
        return (x - alpha * self.x0(out, x, alpha, sigma)) / sigma

    def score(self, out, x, alpha, sigma):
        """score = (alpha D - x) / sigma^2   (Tweedie)."""
        return (alpha * self.x0(out, x, alpha, sigma) - x) / sigma.square()

    def v(self, out, x, alpha, sigma):
        """v = alpha eps - sigma x0 (Salimans & Ho 2022, arXiv:2202.00512)."""
        return alpha * self.eps(out, x, alpha, sigma) - sigma * self.x0(out, x, alpha, sigma)

    def u(self, out, x, alpha, sigma):
        """Rectified flow's velocity u = z - x0 = eps - D (Liu et al. 2022, arXiv:2209.03003); on the "flow"
        path (alpha = 1 - t, sigma = t) the probability-flow ODE's velocity dx/dt."""
        return self.eps(out, x, alpha, sigma) - self.x0(out, x, alpha, sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


@PRECONDITIONERS.register("eps")
class EpsPrediction(Preconditioner):
    """F predicts the noise z (Ho et al. 2020, arXiv:2006.11239)."""

    name = "eps"
    scales_input = False

    def scalings(self, alpha, sigma):
        return 1 / alpha, -sigma / alpha, None

    def score(self, out, x, alpha, sigma):
        return -out / sigma                                       # score = -eps / sigma

    def eps(self, out, x, alpha, sigma):
        return out

    def x0(self, out, x, alpha, sigma):
        return (x - sigma * out) / alpha


@PRECONDITIONERS.register("score")
class ScorePrediction(Preconditioner):
    """F predicts the score (Song & Ermon 2019); with `scale_by_sigma`, F / sigma does (NCSN++)."""

    name = "score"
    scales_input = False

    def __init__(self, scale_by_sigma: bool = False):
        self.scale_by_sigma = scale_by_sigma

    def config(self):
        return {"scale_by_sigma": self.scale_by_sigma}

    def scalings(self, alpha, sigma):
        return 1 / alpha, (sigma if self.scale_by_sigma else sigma.square()) / alpha, None

    def score(self, out, x, alpha, sigma):
        return out / sigma if self.scale_by_sigma else out

    def eps(self, out, x, alpha, sigma):
        return -out if self.scale_by_sigma else -sigma * out      # eps = -sigma * score

    def x0(self, out, x, alpha, sigma):
        return (x + sigma.square() * self.score(out, x, alpha, sigma)) / alpha   # x0 = (x + sigma^2 score) / alpha


@PRECONDITIONERS.register("x0")
class X0Prediction(Preconditioner):
    """F predicts the clean data x_0."""

    name = "x0"
    scales_input = False

    def scalings(self, alpha, sigma):
        return torch.zeros_like(alpha), torch.ones_like(alpha), None

    def score(self, out, x, alpha, sigma):
        return (alpha * out - x) / sigma.square()                 # score = (alpha x0 - x) / sigma^2

    def eps(self, out, x, alpha, sigma):
        return (x - alpha * out) / sigma                          # x = alpha x0 + sigma eps

    def x0(self, out, x, alpha, sigma):
        return out


@PRECONDITIONERS.register("v")
class VPrediction(Preconditioner):
    """F predicts the velocity v = alpha z - sigma x_0 (Salimans & Ho 2022, arXiv:2202.00512, App. D)."""

    name = "v"
    scales_input = False

    def scalings(self, alpha, sigma):
        r = alpha.square() + sigma.square()
        return alpha / r, -sigma / r, None

    def score(self, out, x, alpha, sigma):                        # score = -eps / sigma
        return -(sigma * x + alpha * out) / ((alpha.square() + sigma.square()) * sigma)

    def eps(self, out, x, alpha, sigma):
        return (sigma * x + alpha * out) / (alpha.square() + sigma.square())

    def x0(self, out, x, alpha, sigma):
        return (alpha * x - sigma * out) / (alpha.square() + sigma.square())


@PRECONDITIONERS.register("flow")
class FlowPrediction(Preconditioner):
    """F predicts rectified flow's velocity u = z - x_0 (Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022,
    arXiv:2210.02747; SD3). With r = alpha + sigma, x = r x_0 + sigma u, so
    D = (x - sigma u) / r, eps = (x + alpha u) / r; the input is x / r, the flow path's point at t' = sigma / r.
    No division by alpha: finite at alpha = 0 (t = 1 on the flow path), where D = x - u and eps = x."""

    name = "flow"

    def scalings(self, alpha, sigma):
        r = alpha + sigma
        return 1 / r, -sigma / r, 1 / r

    def x0(self, out, x, alpha, sigma):
        return (x - sigma * out) / (alpha + sigma)

    def eps(self, out, x, alpha, sigma):
        return (x + alpha * out) / (alpha + sigma)

    def score(self, out, x, alpha, sigma):                        # score = -eps / sigma
        return -(x + alpha * out) / ((alpha + sigma) * sigma)

    def v(self, out, x, alpha, sigma):                            # alpha eps - sigma x0
        return ((alpha - sigma) * x + (alpha.square() + sigma.square()) * out) / (alpha + sigma)

    def u(self, out, x, alpha, sigma):
        return out


@PRECONDITIONERS.register("edm")
class EDMPrediction(Preconditioner):
    """EDM's preconditioning (Karras et al. 2022, Table 1), on x / alpha whose noise level is s = sigma / alpha:
    c_skip = s_d^2 / (s^2 + s_d^2), c_out = s s_d / sqrt(s^2 + s_d^2), c_in = 1 / sqrt(s^2 + s_d^2)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not (
                math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data: expected a finite positive number, found {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def config(self):
        return {"sigma_data": self.sigma_data}

    def scalings(self, alpha, sigma):
        s, sd = sigma / alpha, self.sigma_data
        n = (s.square() + sd ** 2).sqrt()
        return sd ** 2 / n.square() / alpha, s * sd / n, 1 / (alpha * n)   # D(x) = alpha-free EDM on x / alpha


# --- noise inputs c_noise(sde, t, sigma) -> (B,) -------------------------------------------------------
@NOISE_INPUTS.register("t")
def scaled_time(sde, t, sigma):
    """c = 999 t: DDPM's timestep scale (suits sinusoidal embeddings)."""
    return T_SCALE * t


@NOISE_INPUTS.register("log_sigma")
def log_sigma(sde, t, sigma):
    """c = log sigma(t) (NCSN++ VE convention)."""
    return torch.log(sigma)


@NOISE_INPUTS.register("sigma")
def sigma_input(sde, t, sigma):
    """c = sigma(t)."""
    return sigma


@NOISE_INPUTS.register("timestep")
def timestep(sde, t, sigma):
    """c = sde.timestep(t): the discrete timestep scale of an SDE built from a discrete schedule."""
    return sde.timestep(t)


@NOISE_INPUTS.register("edm")
def edm_noise(sde, t, sigma):
    """c = ln(sigma / alpha) / 4 (EDM's c_noise, Karras et al. 2022, Table 1)."""
    alpha, _ = sde.marginal_coefs(t)
    return torch.log(sigma / alpha) / 4
