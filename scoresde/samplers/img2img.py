"""Image-to-image: SDEdit and exact inversion through the probability-flow ODE.

- `sdedit`: SDEdit (Meng et al. 2021, arXiv:2108.01073). A guide x_init is perturbed to t0 with the
  forward kernel, x_t0 = alpha(t0) x_init + sigma(t0) z, and any sampler runs the reverse process from
  t0 down (`sample(..., x_init=x_t0, t_start=t0)`): t0 near 0 keeps the guide (faithful), t0 near T
  forgets it (realistic). t0 = eps + strength (T - eps).
- `invert`: an image (the state at eps) to its prior latent at T by the probability-flow ODE run forward
  in time, and back (`inverse=True`): "ode" integrates dx/dt = f - g^2 s / 2 (Song et al. 2021,
  arXiv:2011.13456, eq. 13) adaptively (RK45) from eps to T; "ddim" runs the DDIM update with t
  increasing on the grid `ddim` samples on (DDIM inversion: Song et al. 2021, arXiv:2010.02502, Sec. 4.3;
  Dhariwal & Nichol 2021, App. F), the data prediction read at the step's lower end, so it inverts the
  sampler's step to first order (round-trip error O(1/steps)); `fixed_point=k` then solves each step's
  implicit equation x_j = ddim_step(x_{j-1}) for x_{j-1} by k fixed-point iterations (backward Euler, Hong
  et al. 2024, "On Exact Inversion of DPM-Solvers"), which inverts the `ddim` sampler's step exactly in
  the limit. The last data prediction of a step starts the next one, so NFE = 1 + k steps: k = 1 costs what
  plain DDIM inversion costs and makes its round trip second order.

Latent models: with `autoencoder=` (anything with `encode(images)` and `decode(latents)`, e.g. a latent
model's `model.autoencoder`) both take and return images and work on the latents in between.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scoresde._common.odeint import odeint_rk45
from scoresde._common.tensors import append_dims
from scoresde._common.threads import thread_policy
from scoresde._common.finite import CheckedScore, check_finite
from scoresde._common.validation import check_choice, check_fn, check_int, check_positive
from scoresde.sde.base import check_sde
from scoresde.samplers.core import SAMPLERS, check_samples, progress_range, randn_like, sample, start_grid
from scoresde.samplers.grids import schedule_for
from scoresde.samplers.logsnr import LogSNRGrid, denoised
from scoresde.samplers.ode import TimeBar


__all__ = ["sdedit", "invert", "sdedit_start", "INVERSION_METHODS"]

INVERSION_METHODS = ("ddim", "ode")


def _check_images(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a floating-point tensor of shape (B, *D), found {found}")
    return check_finite(name, x)


def _check_autoencoder(ae: Any) -> Any:
    if ae is not None and not (callable(getattr(ae, "encode", None)) and callable(getattr(ae, "decode", None))):
        raise TypeError(f"autoencoder: expected an object with encode(images) and decode(latents) (a latent model's "
                        f"`model.autoencoder`), found {type(ae).__name__}")
    return ae


def _check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength: expected a number in [0, 1] (0 keeps the guide, 1 samples afresh), "
                         f"found {strength!r}")
    return float(strength)


def sdedit_start(sde, strength: float, *, sampler: str = "pc", steps: int | None = None,
                 eps: float | None = None) -> tuple[float, int]:
    """(t0, steps) of `sdedit(sde, ..., strength, sampler=sampler, steps=steps, eps=eps)`: the time the guide is
    perturbed to, t0 = eps + strength (T - eps) (on the uniform-grid samplers the nearest time of the
    uniform grid from T, `core.start_grid`), and the steps run from there (default round(strength N), at
    least 1: the step size of plain sampling)."""
    strength = _check_strength(strength)
    if strength == 0:
        raise ValueError("strength: 0 keeps the guide and runs no sampler; expected a strength in (0, 1]")
    eps = sde.default_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected a final time in (0, T={sde.T}), found {eps!r}")
    steps = max(1, round(strength * sde.N)) if steps is None else check_int("steps", steps)
    if strength == 1:
        return float(sde.T), steps
    return start_grid(sde, sampler, steps, float(eps), float(eps) + strength * (sde.T - float(eps)))[1], steps


def sdedit(sde, score_fn: Callable, x_init: torch.Tensor, strength: float = 0.5, *, sampler: str = "pc",
           steps: int | None = None, generator: torch.Generator | None = None, eps: float | None = None,
           denoise: bool = True, progress: bool = False, autoencoder: Any = None, return_info: bool = False,
           **options: Any):
    """SDEdit (Meng et al. 2021): perturb the guide `x_init` to t0 with the forward SDE, then run `sampler` down.

    Args:
        x_init: the guides (B, *D) in the model's data range (images with `autoencoder`).
        strength: in [0, 1]; t0 = eps + strength (T - eps). 0 returns x_init unchanged (no score evaluation);
            1 is plain sampling, `sample(sde, score_fn, x_init.shape, ...)` with the same generator (the prior
            draw replaces the guide, as in sampling).
        sampler, generator, eps, denoise, progress, **options: as in `sample` (any sampler, its options).
        steps: intervals run from t0 (NFE as the sampler declares for `steps`); default round(strength sde.N).
            The uniform-grid samplers start at the uniform grid's time nearest t0 (`sdedit_start`).
        autoencoder: a latent model's autoencoder: x_init are images, encoded; the result is decoded.
        return_info: also return sample()'s info dict with "t0" added.
    Returns:
        (B, *D) edited samples (or (samples, info)). `score_fn` may be guided (`classifier_free_score`).
    """
    check_sde(sde)
    check_fn(score_fn, "score_fn")
    x_init = _check_images(x_init, "x_init")
    strength = _check_strength(strength)
    ae = _check_autoencoder(autoencoder)
    SAMPLERS[sampler]                                   # an unknown name: KeyError listing the known ones
    if strength == 0:
        out = x_init.clone()
        return (out, {"nfe": 0, "sampler": sampler, "steps": 0, "seconds": 0.0, "t0": 0.0}) if return_info else out
    x = ae.encode(x_init) if ae is not None else x_init
    t0, steps = sdedit_start(sde, strength, sampler=sampler, steps=steps, eps=eps)
    common = dict(sampler=sampler, steps=steps, generator=generator, eps=eps, denoise=denoise, progress=progress,
                  return_info=True, **options)
    if strength == 1:
        out, info = sample(sde, score_fn, tuple(x.shape), device=x.device, dtype=x.dtype, **common)
    else:
        tb = torch.full((x.shape[0],), t0, device=x.device, dtype=torch.float64)
        alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coefs(tb))
        # x_t0 = alpha(t0) x_init + sigma(t0) z   (the forward kernel; Meng et al. 2021, Alg. 1)
        x_t0 = alpha * x + sigma * randn_like(x, generator)
        out, info = sample(sde, score_fn, x_init=x_t0, t_start=t0, **common)
    out = ae.decode(out) if ae is not None else out
    return (out, {**info, "t0": t0}) if return_info else out


# --- inversion ---------------------------------------------------------------------------------------
def invert(sde, score_fn: Callable, x: torch.Tensor, *, method: str = "ddim", steps: int = 100,
           eps: float | None = None, rtol: float = 1e-5, atol: float = 1e-5, schedule: str | None = None,
           rho: float = 7.0, fixed_point: int = 0, inverse: bool = False, autoencoder: Any = None, progress: bool = False,
           return_info: bool = False):
    """The prior latent z at T of data x (the state at eps) through the probability-flow ODE, or with
    `inverse=True` the data of a latent z, with the same grid and method (a round trip is the identity up
    to the solver's error).

    Args:
        method: "ddim" (DDIM inversion on the `ddim` sampler's grid of `steps` intervals: its `schedule`,
            default the sampler's, and `rho`; NFE = steps, or 1 + steps fixed_point) or "ode" (adaptive RK45 with
            `rtol`, `atol` between eps and T; `steps` does not apply).
        fixed_point: ddim only: fixed-point iterations per step that make it the exact inverse of the ddim
            sampler's step (0: plain DDIM inversion, first-order accurate).
        eps: the data's time (default sde.default_eps).
        inverse: map a latent at T to data at eps: `sample(sde, score_fn, x_init=z, sampler=method,
            denoise=False, ...)` with these settings.
        autoencoder: a latent model's autoencoder: x are images (encoded first); with `inverse` the result is
            decoded.
        return_info: also return {"nfe", "method", "steps"}.
    """
    check_sde(sde)
    check_fn(score_fn, "score_fn")
    x = _check_images(x, "x")
    method = check_choice("method", method, INVERSION_METHODS)
    steps = check_int("steps", steps)
    fixed_point = check_int("fixed_point", fixed_point, minimum=0)
    if fixed_point and method != "ddim":
        raise ValueError(f"fixed_point: iterations refine the ddim method only; found method={method!r} with "
                         f"fixed_point={fixed_point}")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol, allow_zero=True)
    ae = _check_autoencoder(autoencoder)
    eps = sde.default_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected the data's time in (0, T={sde.T}), found {eps!r}")
    schedule = schedule_for(sde, "ddim", "logsnr") if schedule is None else schedule
    opts = {"rtol": rtol, "atol": atol} if method == "ode" else {"schedule": schedule, "rho": rho}
    if inverse:
        out, info = sample(sde, score_fn, x_init=x, sampler=method, steps=None if method == "ode" else steps,
                           eps=eps, denoise=False, progress=progress, return_info=True, **opts)
        out = ae.decode(out) if ae is not None else out
        return (out, {"nfe": info["nfe"], "method": method, "steps": steps}) if return_info else out
    if ae is not None:
        x = ae.encode(x)
    counted = CheckedScore(score_fn, where=f"invert(method={method!r})")
    with torch.no_grad(), thread_policy(x.shape[1:], x.device):
        if method == "ode":
            z = _invert_ode(sde, counted, x, float(eps), rtol, atol, progress)
        else:
            z = _invert_ddim(sde, counted, x, float(eps), steps, schedule, rho, fixed_point, progress)
        counted.flush()
        check_samples(z, f"invert(method={method!r})")
    return (z, {"nfe": counted.nfe, "method": method, "steps": steps}) if return_info else z


def _invert_ode(sde, score_fn, x, eps: float, rtol: float, atol: float, progress: bool) -> torch.Tensor:
    """Probability-flow ODE from eps up to T, adaptive RK45 (the `ode` sampler's solver, run forward in time)."""
    flow = sde.reverse(score_fn, probability_flow=True)
    bar = TimeBar(eps, float(sde.T), progress, desc="invert")

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        bar.update(t)
        # dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)   (Song et al. 2021, eq. 13), integrated with t increasing
        return flow.sde(y, float(t))[0]

    try:
        z, _ = odeint_rk45(f, x, eps, float(sde.T), rtol=rtol, atol=atol)
    finally:
        bar.close()
    return z


def _invert_ddim(sde, score_fn, x, eps: float, steps: int, schedule: str, rho: float, fixed_point: int,
                 progress: bool) -> torch.Tensor:
    """DDIM inversion on the grid `ddim` samples on with `steps` intervals and denoise=False, walked upward."""
    ts = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)         # ends and count: ddim rebuilds its grid
    g = LogSNRGrid(sde, x, ts.to(x.dtype), False, schedule, rho)
    D = None
    for i in progress_range(g.n, progress, "invert"):
        j = g.n - i                                                          # from t_j (lower) up to t_{j-1}
        if D is None or not fixed_point:
            D = denoised(score_fn, x, g, j)
        # x_{j-1} = sigma_{j-1}/sigma_j x_j + (alpha_{j-1} - alpha_j sigma_{j-1}/sigma_j) D(x_j, t_j)
        # (DDIM's update, Song et al. 2021 eq. 12, with t increasing and D read at the lower end)
        r = g.sigma[j - 1] / g.sigma[j]
        x_j, x = x, r * x + (g.alpha[j - 1] - g.alpha[j] * r) * D
        # the sampler's step x_j = r' x_{j-1} + c' D(x_{j-1}, t_{j-1}) (r' = 1 / r) solved for x_{j-1}:
        # x_{j-1} <- (x_j - c' D(x_{j-1}, t_{j-1})) / r'   (fixed-point iteration; Hong et al. 2024)
        c = g.alpha[j] - g.alpha[j - 1] / r
        for _ in range(fixed_point):
            D = denoised(score_fn, x, g, j - 1)
            x = r * (x_j - c * D)
        # with fixed_point, the last D (at t_{j-1}, one iteration before x converged) starts the next step
    return x
