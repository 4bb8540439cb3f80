"""Time steps optimised for a model, a sampler and a budget of score evaluations (NFE).

`optimize_steps` returns the decreasing time grid that a fast sampler (ddim, heun, dpm_solver,
deis, unipc) should step through, `sample(..., times=grid)`, so that B evaluations land as close
as possible to the exact probability-flow ODE. It follows the recipe shared by Align Your Steps
(Sabour et al. 2024, arXiv:2404.14507) and optimal stepsize distillation (Pei et al. 2025,
arXiv:2503.21774): fix a small calibration batch of prior draws x_T, solve the ODE from them very
accurately once (DPM-Solver++ 3M with `reference_steps` steps), and choose the grid whose few-step
samples are closest to those reference samples:

    minimise  E(grid) = (prod_b e_b)^(1/n),  e_b = sqrt(|x_B(x_T^b; grid) - x_ref(x_T^b)|^2 / d)

the geometric mean over the n calibration samples of their RMS error per value (`loss="geometric"`;
`"l2"` takes the arithmetic mean of the e_b, as OSS does, and `"rmse"` the root of the mean square,
AYS's squared-error view). The geometric mean lets the search sharpen most samples instead of
chasing the few that sit on a boundary between modes. None of the three wins every problem and
budget on held-out distribution metrics; the geometric mean is the default because with unipc on
the sharp 2-D mixture at 10 NFE it scored 0.013 against 0.074 (l2) and 0.43 (rmse).

The grid is parametrised in the half log-SNR lambda = log(alpha / sigma) between lambda(T) and
lambda(eps): its n increments, plus one slack that lets the last time sit above eps, are a softmax
of n + 1 free logits times lambda(eps) - lambda(T), so every grid is strictly decreasing and
inside [eps, T]. The samplers run without gradients, so the search is derivative-free
(Nelder-Mead with adaptive parameters, restarted from its best point), started from the best of
the fixed grids (log-SNR, Karras rho = 7, quadratic, uniform). The result is never worse than the
sampler's default grid on the calibration batch: every fixed grid tried stays a candidate.

`sampler="bns"` goes one step further (scoresde/samplers/bns.py): after the unipc grid it fits
the times and every step weight of a bespoke non-stationary solver by gradient descent (Adam, through
the score's derivatives), with the mean RMSE ("l2") as its default loss; its weights are returned in
the info dict (so bns needs `return_info=True`) and stored with the grid.

NFE rules are the samplers' own declared facts (`SamplerInfo.nfe` / `grid_nfe`, scoresde/samplers/core.py);
with `denoise`, the samplers' default: ddim, dpm_solver, deis and unipc spend one evaluation per grid
time, so a budget B is a grid of B times (B >= 2); heun spends 2 per interval plus the final data
prediction, 2 L - 1 for L times, so B must be odd and >= 3; bns follows unipc. `grid_size` inverts
them. `save_steps` / `load_steps` (scoresde/runs/steps.py) keep a grid in a run directory
(RUN/steps/<sampler>-<budget>.json).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from scoresde.samplers.core import SAMPLERS, SamplerInfo, sample
from scoresde._common.validation import check_int
from scoresde.samplers.grids import time_grid
from scoresde.samplers.bns import fit_bns, unipc_weights


__all__ = ["optimize_steps", "grid_size", "min_budget", "budget_rule", "check_fitted", "FAST_SAMPLERS",
           "FITTED_SAMPLERS"]


# the names, in registration order, of the samplers whose records declare a fit: their grid (the fast samplers),
# and for bns its step weights too (samplers/bns.py)
FAST_SAMPLERS = tuple(r.name for r in SAMPLERS.records() if r.fitted == "times")
FITTED_SAMPLERS = tuple(r.name for r in SAMPLERS.records() if r.fitted is not None)
LOSSES = ("rmse", "l2", "geometric")
INIT_SCHEDULES = ("logsnr", "karras", "quadratic", "uniform")
_SLACK = 1e-3                          # initial share of the lambda range left between the last time and eps


def _fitted(sampler: Any) -> SamplerInfo:
    """The record of a sampler that `optimize_steps` can fit; KeyError naming `sampler` otherwise."""
    if sampler not in FITTED_SAMPLERS:
        raise KeyError(f"sampler: expected one of the fast samplers {', '.join(FITTED_SAMPLERS)} (they step "
                       f"through a given grid), found {sampler!r}")
    return SAMPLERS[sampler]


def check_fitted(sampler: Any) -> str:
    """`sampler` when `optimize_steps` can fit a grid for it (`SamplerInfo.fitted`); a KeyError naming it otherwise."""
    return _fitted(sampler).name


def _budgets(sampler: str, denoise: bool) -> tuple[int, int]:
    """(low, stride): the budgets `sampler` can spend exactly on a given grid are low, low + stride, ...
    (its declared NFE on grids of 1, 2, ... intervals)."""
    info = _fitted(sampler)
    low = info.grid_nfe(1, denoise)
    return low, info.grid_nfe(2, denoise) - low


def min_budget(sampler: str, denoise: bool = True) -> int:
    """The fewest score evaluations that `sampler` can spend on a given grid (at least 2 times)."""
    return _budgets(sampler, denoise)[0]


def budget_rule(sampler: str, denoise: bool = True) -> str:
    """The budgets `sampler` accepts, in words: ">= 2", "odd, >= 3", ..."""
    low, stride = _budgets(sampler, denoise)
    if stride == 1:
        return f">= {low}"
    return f"{'odd' if low % 2 else 'even'}, >= {low}" if stride == 2 else f"{low} + {stride} k"


def grid_size(sampler: str, budget: int, denoise: bool = True) -> int:
    """Number of grid times L whose NFE is exactly `budget`; ValueError naming `budget` otherwise."""
    budget = check_int("budget", budget)
    low, stride = _budgets(sampler, denoise)
    intervals = 1 + max(budget - low, 0) // stride
    if budget >= low and SAMPLERS[sampler].grid_nfe(intervals, denoise) == budget:
        return intervals + 1
    if stride == 1:
        raise ValueError(f"budget: {sampler} needs at least {low} score evaluations, found {budget}")
    offset = low - stride                                    # NFE = stride * intervals + offset
    plus = {1: "plus one", -1: "minus one"}.get(offset, f"plus {offset}")
    needs = f"an {'odd' if low % 2 else 'even'} budget >= {low}" if stride == 2 else f"a budget {low} + {stride} k"
    raise ValueError(f"budget: {sampler} spends {stride} evaluations per step {plus}, so it needs {needs}; "
                     f"found {budget}")


def _grid_from_logits(w: np.ndarray, lam0: float, lam_end: float) -> np.ndarray:
    """lambda_0 < lambda_1 < ... < lambda_n <= lambda_end from n + 1 logits (the last one the slack)."""
    p = np.exp(w - w.max())
    p /= p.sum()
    return lam0 + (lam_end - lam0) * np.concatenate([[0.0], np.cumsum(p[:-1])])


def _logits_from_grid(lam: np.ndarray, lam0: float, lam_end: float) -> np.ndarray:
    d = np.diff(lam) / (lam_end - lam0)
    d = np.concatenate([d * (1 - _SLACK), [_SLACK]])
    return np.log(np.maximum(d, 1e-12))


def optimize_steps(sde, score_fn: Callable, budget: int, *, sampler: str = "unipc",
                   calibration: int | torch.Tensor = 256, eps: float | None = None, denoise: bool = True,
                   reference_steps: int = 500, maxfev: int | None = None, generator: torch.Generator | None = None,
                   device: Any = None, dtype: torch.dtype | None = None, progress: bool = False,
                   loss: str | None = None, iterations: int = 1500, return_info: bool = False, **options: Any):
    """A time grid for `sampler` with exactly `budget` score evaluations, fitted to `score_fn`.

    Args:
        sde, score_fn: the model (score_fn(x, t) -> grad log p_t(x)), as for `sde.sample`.
        budget: score evaluations per sample (NFE); see `min_budget` / `grid_size`.
        sampler: a fast sampler (ddim, heun, dpm_solver, deis, unipc); `**options` are its options
            (e.g. order=3), except `schedule`, which the grid replaces.
        calibration: the calibration batch: a tensor of prior draws x_T (B, *D), or their number
            (drawn from `generator`; needs `score_fn.data_shape`, as a trained model has).
        eps: the smallest time allowed (default `sde.default_eps`); the grid runs from T to >= eps.
        reference_steps: DPM-Solver++ 3M steps of the reference solve (to eps, with `denoise`).
        maxfev: sampler runs the search may spend (default 40 per grid time, at least 100).
        progress: progress bar over the search.
        loss: "geometric", "l2" or "rmse": how the per-sample errors are pooled (module docstring);
            default "geometric", for bns "l2" (its gradient fit does better with it).
        iterations: bns only: Adam steps of the fit of its times and weights (after the unipc grid).
        return_info: also return a dict with the errors of the default, best fixed and optimised
            grids on the calibration batch, the grid tried first, sizes and CPU seconds (and for
            bns its `weights`; bns needs return_info).
    Returns:
        a strictly decreasing float64 tensor of `grid_size(sampler, budget)` times in [eps, T],
        to pass as `sample(..., sampler=sampler, times=grid, **options)`; with `return_info`,
        `(grid, info)`. For bns: `sample(..., sampler="bns", times=grid, weights=info["weights"])`.
    """
    cpu0 = time.process_time()
    _fitted(sampler)
    L = grid_size(sampler, budget, bool(denoise))
    if "schedule" in options:
        raise ValueError(f"schedule: the optimised grid replaces the schedule; found schedule={options['schedule']!r}")
    reference_steps = check_int("reference_steps", reference_steps, minimum=2)
    grid_sampler = sampler
    if sampler == "bns":                     # the unipc grid first, then its weights and times by gradient
        if not return_info:
            raise ValueError("return_info: sampler='bns' fits step weights as well as times; pass return_info=True "
                             "and give info['weights'] to sample(..., sampler='bns', times=grid, weights=...)")
        if denoise is not True:
            raise ValueError(f"denoise: the bns fit ends on the data (denoise=True), found denoise={denoise!r}")
        if options:
            raise TypeError(f"sampler 'bns': optimize_steps takes no sampler options for it, found "
                            f"{', '.join(sorted(options))}")
        iterations = check_int("iterations", iterations, minimum=0)
        grid_sampler = "unipc"
    loss = ("l2" if sampler == "bns" else "geometric") if loss is None else loss
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, found {loss!r}")
    maxfev = max(100, 40 * L) if maxfev is None else check_int("maxfev", maxfev, minimum=1)
    eps = sde.default_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected a final time in (0, T={sde.T}), found {eps!r}")
    x_T = _calibration_batch(sde, score_fn, calibration, generator, device, dtype)

    def run(times=None, sampler_=grid_sampler, **kw):
        x = sample(sde, score_fn, x_init=x_T, sampler=sampler_, times=times, denoise=denoise, **options, **kw)
        return x.double()

    with torch.no_grad():
        x_ref = sample(sde, score_fn, x_init=x_T, sampler="dpm_solver", order=3, steps=reference_steps, eps=eps,
                       denoise=denoise).double()

    def pooled(x) -> torch.Tensor:
        e2 = (x - x_ref.to(x.dtype)).square().reshape(len(x), -1).mean(1)     # (B,) mean square per sample
        if loss == "rmse":
            return e2.mean().sqrt()
        if loss == "l2":
            return e2.add(1e-30).sqrt().mean()
        return e2.add(1e-20).log().mean().mul(0.5).exp()                     # geometric mean of the RMSEs

    def distance(x) -> float:
        return float(pooled(x.double()))

    def error(times, sampler_=grid_sampler, **kw) -> float:
        try:
            x = run(times=torch.as_tensor(times, dtype=torch.float64), sampler_=sampler_, **kw)
        except ValueError:                                     # a non-finite run (NonFiniteError)
            return math.inf
        return distance(x)

    # the default grid, exactly as `sample(..., steps=L)` lays it out, then the other fixed grids
    x_def = run(steps=L, eps=eps)
    err_default = distance(x_def)
    cands = {name: time_grid(sde, L - 1, eps, name, dtype=torch.float64) for name in INIT_SCHEDULES}
    errs = {name: error(g) for name, g in cands.items()}
    start = min(errs, key=errs.get)
    lam0, lam_end = (float(v) for v in sde.half_log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))

    def to_times(w):
        lam = _grid_from_logits(np.asarray(w, dtype=np.float64), lam0, lam_end)
        t = sde.t_from_half_log_snr(torch.from_numpy(lam))
        t[0] = sde.T
        return t

    best = {"err": errs[start], "grid": cands[start], "fev": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc=f"optimize-steps {sampler} {budget} NFE", leave=False, dynamic_ncols=True)

    def objective(w):
        t = to_times(w)
        ok = bool((t[1:] < t[:-1]).all()) and float(t[-1]) >= eps * (1 - 1e-9)
        e = error(t) if ok else math.inf
        best["fev"] += 1
        if e < best["err"]:
            best.update(err=e, grid=t)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(err=f"{best['err']:.3g}")
        return e

    if L >= 2:
        from scipy.optimize import minimize
        w = _logits_from_grid(sde.half_log_snr(cands[start]).numpy(), lam0, lam_end)
        for _ in range(3):                                     # Nelder-Mead, restarted from its best point
            left = maxfev - best["fev"]
            if left <= len(w) + 1:
                break
            simplex = np.vstack([w] + [w + 0.5 * np.eye(len(w))[k] for k in range(len(w))])
            res = minimize(objective, w, method="Nelder-Mead",
                           options={"maxfev": left, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 0.0,
                                    "adaptive": True})
            w = res.x
    grid = best["grid"].double()
    if err_default <= best["err"]:                             # never worse than the default grid
        grid = time_grid(sde, L - 1, eps, SAMPLERS[sampler].schedule, dtype=torch.float64)
        best["err"] = err_default
    extra: dict[str, Any] = {}
    if sampler == "bns":
        extra = {"error_unipc": best["err"], "iterations": iterations}
        g, weights, _ = fit_bns(sde, score_fn, x_T, x_ref, grid, pooled, iterations=iterations, bar=bar)
        e = error(g, "bns", weights=weights)                   # as `sample` runs it
        if e < best["err"]:
            grid, best["err"] = g, e
        else:                                                  # keep unipc's weights on its grid
            weights = unipc_weights(sde, grid, True)
        extra["weights"] = weights
    if bar is not None:
        bar.close()
    if not return_info:
        return grid
    info = {"sampler": sampler, "budget": int(budget), "options": dict(options), "denoise": bool(denoise),
            "eps": float(eps), "calibration": len(x_T), "reference_steps": reference_steps, "loss": loss,
            "error_default": err_default, "default_schedule": SAMPLERS[sampler].schedule,
            "error_fixed": errs, "start": start, "error": best["err"], "fevals": best["fev"], **extra,
            "cpu_seconds": time.process_time() - cpu0}
    return grid, info


def _calibration_batch(sde, score_fn, calibration, generator, device, dtype) -> torch.Tensor:
    if isinstance(calibration, torch.Tensor):
        if not calibration.is_floating_point() or calibration.ndim < 1 or len(calibration) < 1:
            raise ValueError(f"calibration: expected prior draws (B, *D) as a floating-point tensor, found "
                             f"{calibration.dtype} of shape {tuple(calibration.shape)}")
        return calibration.to(device=device or calibration.device, dtype=dtype or calibration.dtype)
    n = check_int("calibration", calibration, minimum=1)
    shape = getattr(score_fn, "data_shape", None)
    if shape is None:
        raise ValueError(f"calibration: a number of draws ({n}) needs a score_fn with a `data_shape` attribute "
                         "(a trained model); pass the prior draws x_T as a tensor instead")
    return sde.prior_sampling((n, *shape), generator=generator, device=device, dtype=dtype)
