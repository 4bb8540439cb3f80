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

import json
import math
import os
import time
from typing import Any, Callable

import numpy as np
import torch

from scoresde.samplers.core import SAMPLERS, SamplerInfo, sample
from scoresde._common.validation import check_int
from scoresde._common.digests import tensor_digests
from scoresde._common.statefile import load_state, save_state
from scoresde.samplers.grids import schedule_for, time_grid
from scoresde.samplers.bns import fit_bns, unipc_weights


__all__ = ["optimize_steps", "grid_size", "min_budget", "budget_rule", "check_fitted", "FAST_SAMPLERS",
           "FITTED_SAMPLERS", "BNS_ITERATIONS"]


# the names, in registration order, of the samplers whose records declare a fit: their grid (the fast samplers),
# and for bns its step weights too (samplers/bns.py)
FAST_SAMPLERS = tuple(r.name for r in SAMPLERS.records() if r.fitted == "times")
FITTED_SAMPLERS = tuple(r.name for r in SAMPLERS.records() if r.fitted is not None)
LOSSES = ("rmse", "l2", "geometric")
INIT_SCHEDULES = ("logsnr", "karras", "quadratic", "uniform")
_SLACK = 1e-3                          # initial share of the lambda range left between the last time and eps
# Adam steps of a bns fit (`iterations`): 500 (1500 before issue 33), so a digits U-Net fit at 5 NFE with 64
# calibration draws takes minutes on 2 CPU cores instead of tens of minutes. The cost on the 2-D mixtures of
# benchmarks/fast_samplers.py (benchmarks/results/bns_iterations.md; its metric, lower is better, 4/5/6/8/10/20 NFE):
#   four-mode, 1500 steps: 0.0078 0.0044 0.0045 0.0027 0.0022 0.0020   500: 0.053 0.0057 0.018 0.0035 0.0023 0.0020
#   sharp,     1500 steps: 0.139  0.026  0.024  0.011  0.013  0.0047   500: 0.099 0.157  0.046 0.031  0.014  0.0047
# i.e. 0.7x-7x the error at 4-8 NFE, the same at 10-20, still 7-180x below the best fixed grid at 4-6 NFE;
# iterations=1500 (--iterations 1500) gives the longer fits back.
BNS_ITERATIONS = 500


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
                   loss: str | None = None, iterations: int = BNS_ITERATIONS, return_info: bool = False,
                   checkpoint: str | os.PathLike | None = None, save_every: int = 25, **options: Any):
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
        progress: progress bars with totals and time estimates: the reference solve (score evaluations),
            the grid search (sampler runs) and, for bns, the fit (Adam steps).
        loss: "geometric", "l2" or "rmse": how the per-sample errors are pooled (module docstring);
            default "geometric", for bns "l2" (its gradient fit does better with it).
        iterations: bns only: Adam steps of the fit of its times and weights (after the unipc grid); the
            default `BNS_ITERATIONS` (see there for its cost and what it gives up).
        return_info: also return a dict with the errors of the default, best fixed and optimised
            grids on the calibration batch, the grid tried first, sizes and CPU seconds (and for
            bns its `weights`; bns needs return_info).
        checkpoint: a file for the partial fit (safetensors): the calibration batch's reference solve, the
            search's best grid and its count, and bns's whole fit state are saved there as they are made
            (every `save_every` sampler runs or Adam steps); a call with the same arguments and calibration
            batch continues from it (the bns fit to the same result as an uninterrupted one; a search
            interrupted half-way restarts Nelder-Mead from its best grid with the runs left), and the file is
            removed when the fit ends. A file made for other arguments is ignored and overwritten
            (`info["resumed"]` says which).
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
    save_every = check_int("save_every", save_every, minimum=1)
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
    part = _Partial(checkpoint, {
        "sampler": sampler, "budget": int(budget), "loss": loss, "eps": float(eps), "denoise": bool(denoise),
        "reference_steps": reference_steps, "maxfev": maxfev, "iterations": iterations if sampler == "bns" else None,
        "options": options, "calibration": tensor_digests({"x": x_T})["x"], "sde": repr(sde)})

    def run(times=None, sampler_=grid_sampler, **kw):
        x = sample(sde, score_fn, x_init=x_T, sampler=sampler_, times=times, denoise=denoise, **options, **kw)
        return x.double()

    x_ref = part.state.get("x_ref")
    if x_ref is None:
        x_ref = _reference(sde, score_fn, x_T, reference_steps, eps, denoise, progress)
        part.save(x_ref=x_ref)
    x_ref = x_ref.to(x_T.device)

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

    lam0, lam_end = (float(v) for v in sde.half_log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))

    def to_times(w):
        lam = _grid_from_logits(np.asarray(w, dtype=np.float64), lam0, lam_end)
        t = sde.t_from_half_log_snr(torch.from_numpy(lam))
        t[0] = sde.T
        return t

    search = part.state.get("search")
    bar = _bar(progress, maxfev + 1 + len(INIT_SCHEDULES), f"grid search ({grid_sampler}, {budget} NFE)",
               search["fev"] + 1 + len(INIT_SCHEDULES) if search else 0)
    if search is None:
        # the default grid, exactly as `sample(..., steps=L)` lays it out, then the other fixed grids
        err_default = distance(run(steps=L, eps=eps))
        cands = {name: time_grid(sde, L - 1, eps, name, dtype=torch.float64) for name in INIT_SCHEDULES}
        errs = {name: error(g) for name, g in cands.items()}
        start = min(errs, key=errs.get)
        search = {"done": False, "fev": 0, "err_default": err_default, "errs": errs, "start": start,
                  "best_err": errs[start], "best_grid": cands[start]}
        if bar is not None:
            bar.update(1 + len(INIT_SCHEDULES))
    best = {"err": search["best_err"], "grid": search["best_grid"].double(), "fev": search["fev"]}

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
        if best["fev"] % save_every == 0:
            part.save(search={**search, "fev": best["fev"], "best_err": best["err"], "best_grid": best["grid"]})
        return e

    if L >= 2 and not search["done"]:
        from scipy.optimize import minimize
        w = _logits_from_grid(sde.half_log_snr(best["grid"]).numpy(), lam0, lam_end)
        for _ in range(3):                                     # Nelder-Mead, restarted from its best point
            left = maxfev - best["fev"]
            if left <= len(w) + 1:
                break
            simplex = np.vstack([w] + [w + 0.5 * np.eye(len(w))[k] for k in range(len(w))])
            res = minimize(objective, w, method="Nelder-Mead",
                           options={"maxfev": left, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 0.0,
                                    "adaptive": True})
            w = res.x
    _close(bar)
    err_default = search["err_default"]
    grid = best["grid"].double()
    if err_default <= best["err"]:                             # never worse than the default grid
        grid = time_grid(sde, L - 1, eps, schedule_for(sde, sampler, SAMPLERS[sampler].schedule), dtype=torch.float64)
        best["err"] = err_default
    if not search["done"]:
        search = {**search, "done": True, "fev": best["fev"], "best_err": best["err"], "best_grid": grid}
        part.save(search=search)
    extra: dict[str, Any] = {}
    if sampler == "bns":
        extra = {"error_unipc": best["err"], "iterations": iterations}
        fit = part.state.get("bns")
        done = 0 if fit is None else _adam_steps_done(fit, iterations)
        bar = _bar(progress, iterations + 2, f"bns fit ({budget} NFE, Adam steps)", done)
        g, weights, _ = fit_bns(sde, score_fn, x_T, x_ref, grid, pooled, iterations=iterations, bar=bar, state=fit,
                                save=lambda st: part.save(bns=st), save_every=save_every)
        _close(bar)
        e = error(g, "bns", weights=weights)                   # as `sample` runs it
        if e < best["err"]:
            grid, best["err"] = g, e
        else:                                                  # keep unipc's weights on its grid
            weights = unipc_weights(sde, grid, True)
        extra["weights"] = weights
    resumed = part.resumed
    part.remove()                                              # the fit is complete
    if not return_info:
        return grid
    info = {"sampler": sampler, "budget": int(budget), "options": dict(options), "denoise": bool(denoise),
            "eps": float(eps), "calibration": len(x_T), "reference_steps": reference_steps, "loss": loss,
            "error_default": err_default, "default_schedule": schedule_for(sde, sampler, SAMPLERS[sampler].schedule),
            "error_fixed": search["errs"], "start": search["start"], "error": best["err"], "fevals": best["fev"],
            **extra, "cpu_seconds": time.process_time() - cpu0, "resumed": resumed}
    return grid, info


def _adam_steps_done(fit: dict[str, Any], iterations: int) -> int:
    """Adam steps (bar positions) a saved bns fit state has behind it."""
    explore = (iterations * 2) // 3
    phase, k = int(fit["phase"]), int(fit["k"])
    return [k, explore + 1 + k, iterations + 2][min(phase, 2)]


def _reference(sde, score_fn, x_T, steps: int, eps: float, denoise: bool, progress: bool) -> torch.Tensor:
    """The accurate solve from the calibration batch (DPM-Solver++ 3M, `steps` steps), with its own bar."""
    nfe = SAMPLERS["dpm_solver"].nfe(steps, denoise, order=3)
    bar = _bar(progress, nfe, f"reference solve (dpm_solver 3, {steps} steps)")
    fn = score_fn
    if bar is not None:
        def fn(x, t):
            bar.update(1)
            return score_fn(x, t)
    try:
        with torch.no_grad():
            return sample(sde, fn, x_init=x_T, sampler="dpm_solver", order=3, steps=steps, eps=eps,
                          denoise=denoise).double()
    finally:
        _close(bar)


def _bar(progress: bool, total: int, desc: str, initial: int = 0):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _close(bar) -> None:
    if bar is not None:
        if bar.n < bar.total:                    # the search stopped early (converged): the bar ends full
            bar.total = bar.n
            bar.refresh()
        bar.close()


class _Partial:
    """The partial-fit file of `optimize_steps(checkpoint=...)`: its state when it was made for the same
    arguments (`key`), saved piecewise as the fit goes, removed at the end."""

    def __init__(self, path, key: dict[str, Any]):
        self.path = None if path is None else os.fspath(path)
        self.key = json.loads(json.dumps(key, default=repr, sort_keys=True))
        self.state: dict[str, Any] = {}
        self.resumed: str | None = None
        if self.path is None:
            return
        found = load_state(self.path)
        if found is None:
            return
        if found.get("key") != self.key:
            diff = sorted(k for k in self.key if found.get("key", {}).get(k) != self.key[k])
            self.resumed = f"ignored {self.path}: made for other {', '.join(diff) or 'arguments'}"
            return
        self.state = found
        stage = ("the bns fit" if "bns" in found else "the search" if "search" in found else "the reference solve")
        self.resumed = f"resumed from {self.path} ({stage})"

    def save(self, **parts: Any) -> None:
        if self.path is not None:
            self.state.update(parts)
            save_state(self.path, {**self.state, "key": self.key})

    def remove(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


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
