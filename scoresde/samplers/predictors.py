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

from scoresde._common.tensors import append_dims
from scoresde.samplers.core import SAMPLERS, check_options, progress_range, randn_like


__all__ = ["PREDICTORS", "euler_maruyama_step", "reverse_diffusion_step", "ancestral_step", "run_predictor",
           "check_discretization", "one_per_step"]


def check_discretization(sde, ts: torch.Tensor, sampler: str, *, discretize: bool = True,
                         langevin: bool = False) -> None:
    """Refuse a grid on which the SDE's own N-step discretisation (or its Langevin step size) is invalid.

    Reverse diffusion follows `sde.discretize` with N = steps; DDPM's beta_i run up to beta_max / N,
    so with few steps 1 - beta_i < 0 and the chain is undefined (NaN), as is the Langevin step
    size alpha_i = 1 - beta_i. Both index the SDE's N-step grid by time, so `ts` must be the uniform
    grid from T or its last intervals (`sample(..., t_start=...)`); an explicit `times` grid that is not
    is refused. Checked once, before the loop, on every grid time at once.
    """
    t = ts[:-1].to(torch.float64)
    bad_chain = bad_alpha = torch.zeros((), dtype=torch.bool, device=ts.device)
    n = max(int(sde.N), len(t))              # the tail of the uniform N-step grid from T (SDEdit starts below T)
    uniform = torch.linspace(sde.T, 0.0, n + 1, dtype=torch.float64, device=ts.device)[n + 1 - len(ts):]
    uniform = uniform * (1 - ts[-1].double() / sde.T) + ts[-1].double()       # T ... ts[-1], uniform
    tol = 1e-3 * (sde.T - ts[-1].double()) / n + 8 * torch.finfo(ts.dtype).eps * sde.T
    bad_grid = (ts.double() - uniform).abs().max() > tol
    if discretize:
        f, G = sde.discretize(torch.ones(len(t), 1, dtype=torch.float64, device=ts.device), t)
        bad_chain = ~(torch.isfinite(f).all() & torch.isfinite(G).all())
    if langevin:
        alpha = sde.langevin_alpha(t)
        bad_alpha = ~(torch.isfinite(alpha) & (alpha >= 0)).all()
    flags = torch.stack([bad_chain, bad_alpha, bad_grid]).tolist()    # one host sync per run, never in the loop
    bad_chain, bad_alpha, bad_grid = flags
    if bad_grid:
        raise ValueError(f"times: {sampler} follows {type(sde).__name__}'s own N-step discretisation, laid out on "
                         f"the uniform grid from T to eps; found another grid (use ancestral or euler_maruyama "
                         f"on an explicit grid)")
    if bad_chain or bad_alpha:
        what = " and ".join(part for part, bad in [("its reverse-diffusion step", bad_chain),
                                                   ("its Langevin step size alpha_i = 1 - beta_i", bad_alpha)] if bad)
        raise ValueError(f"steps: {sampler} follows {type(sde).__name__}'s own discretisation with N = {len(t)} steps, "
                         f"where {what} is undefined (for VP and sub-VP, DDPM's beta_i up to beta_max / N must "
                         f"stay below 1); use more steps, or a sampler that integrates the SDE/ODE "
                         f"(euler_maruyama, ancestral, dpm_solver, deis)")


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


def one_per_step(steps: int, denoise: bool = True, **options) -> int:
    """NFE of a sampler with one score evaluation per step, the noise-free last one included: steps."""
    return steps


def _predictor_sampler(name: str, step: Callable, summary: str, doc: str, check_grid: bool = False) -> Callable:
    """Register the sampler that runs predictor `step` over the whole grid (one score evaluation a step)."""
    def fn(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
        check_options(name, options, {})
        if check_grid:
            check_discretization(sde, ts, name)
        return run_predictor(step, sde, score_fn, x, ts, generator=generator, denoise=denoise, progress=progress,
                             desc=name)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return SAMPLERS.register(name, kind="sde", summary=summary, nfe=one_per_step, stochastic=True,
                             takes_grid=True, options={})(fn)


euler_maruyama = _predictor_sampler(
    "euler_maruyama", euler_maruyama_step, "reverse SDE, Euler-Maruyama (Song et al. 2021)",
    "Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Sec. 4.2); NFE = steps.")
reverse_diffusion = _predictor_sampler(
    "reverse_diffusion", reverse_diffusion_step,
    "reverse SDE via the SDE's own discretisation (the DDPM / SMLD step; uniform grids only)",
    "Reverse diffusion: the reverse of `sde.discretize` (Song et al. 2021, eq. 46); NFE = steps.", check_grid=True)
ancestral = _predictor_sampler(
    "ancestral", ancestral_step, "ancestral sampling: DDPM for VP, SMLD for VE",
    "Ancestral sampling: DDPM for VP, SMLD for VE, the Gaussian posterior for sub-VP; NFE = steps.")
