"""Reverse-SDE predictors: Euler-Maruyama, reverse diffusion and ancestral sampling.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456, Sec. 4.2 and Appendix E; ancestral sampling is DDPM's (Ho et al. 2020,
arXiv:2006.11239, Alg. 2) for VP and SMLD's (Song & Ermon 2019, arXiv:1907.05600) for VE.

Each predictor is a small step function moving x from time t to the next grid time s < t with one
score evaluation; `noise=False` returns the step's mean (the final "noise removal" step). The
registered samplers run one predictor over the whole grid; `pc` reuses the same steps.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..utils import append_dims
from . import SAMPLERS, check_options, progress_range, randn_like

__all__ = ["PREDICTORS", "euler_maruyama_step", "reverse_diffusion_step", "ancestral_step", "run_predictor"]


def euler_maruyama_step(sde, score_fn, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
                        generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from t to s < t; t, s: (B,)."""
    drift, g = sde.reverse(score_fn).sde(x, t)      # f - g^2 score, g
    dt = s - t                                      # negative: time runs backwards
    # x_s = x_t + [f - g^2 score] dt + g sqrt(-dt) z   (Song et al. 2021, eq. 6 discretised)
    x_mean = x + append_dims(dt, x.ndim) * drift
    if not noise:
        return x_mean
    return x_mean + append_dims(g * (-dt).sqrt(), x.ndim) * randn_like(x, generator)


def reverse_diffusion_step(sde, score_fn, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
                           generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
    """One step of the reverse of the SDE's own discretisation (DDPM for VP, SMLD for VE).

    The step size is the SDE's: `s` only marks the grid (its N steps match the sampling grid).
    """
    f, G = sde.reverse(score_fn).discretize(x, t)   # f_i - G_i^2 score, G_i
    # x_{i-1} = x_i - f_i + G_i^2 score + G_i z   (Song et al. 2021, eq. 46)
    x_mean = x - f
    if not noise:
        return x_mean
    return x_mean + append_dims(G, x.ndim) * randn_like(x, generator)


def ancestral_step(sde, score_fn, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
                   generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
    """One ancestral step x_t -> x_s: a draw from the SDE's `ancestral_step` Gaussian."""
    # x_s ~ N(mean(x_t, score), std^2 I)   (Ho et al. 2020, Alg. 2; Song et al. 2021, eq. 47)
    mean, std = sde.ancestral_step(x, t, s, score_fn(x, t))
    if not noise:
        return mean
    return mean + append_dims(std, x.ndim) * randn_like(x, generator)


PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}


def run_predictor(step: Callable, sde, score_fn, x: torch.Tensor, ts: torch.Tensor, *,
                  generator, denoise: bool, progress: bool, desc: str = "sampling") -> torch.Tensor:
    """Apply `step` from ts[0] down to ts[-1]; with `denoise` the last step adds no noise."""
    n = len(ts) - 1
    B = x.shape[0]
    for i in progress_range(n, progress, desc):
        t, s = ts[i].expand(B), ts[i + 1].expand(B)   # (B,), still on the device: no host sync
        x = step(sde, score_fn, x, t, s, generator=generator, noise=not (denoise and i == n - 1))
    return x


@SAMPLERS.register("euler_maruyama")
def euler_maruyama(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Sec. 4.2); NFE = steps."""
    check_options("euler_maruyama", options, {})
    return run_predictor(euler_maruyama_step, sde, score_fn, x, ts, generator=generator, denoise=denoise,
                         progress=progress, desc="euler_maruyama")


@SAMPLERS.register("reverse_diffusion")
def reverse_diffusion(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Reverse diffusion: the reverse of `sde.discretize` (Song et al. 2021, eq. 46); NFE = steps."""
    check_options("reverse_diffusion", options, {})
    return run_predictor(reverse_diffusion_step, sde, score_fn, x, ts, generator=generator, denoise=denoise,
                         progress=progress, desc="reverse_diffusion")


@SAMPLERS.register("ancestral")
def ancestral(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Ancestral sampling: DDPM for VP, SMLD for VE, the Gaussian posterior for sub-VP; NFE = steps."""
    check_options("ancestral", options, {})
    return run_predictor(ancestral_step, sde, score_fn, x, ts, generator=generator, denoise=denoise,
                         progress=progress, desc="ancestral")
