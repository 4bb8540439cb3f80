"""BNS: a bespoke non-stationary solver, its time grid and step weights fitted to one model.

Every fast sampler here (ddim, dpm_solver, deis, unipc) is linear in what it has seen: the point
where it evaluates the model at step i, and its output, are fixed linear combinations of the
prior draw x_T and the data predictions D_k = D(y_k; t_k) made so far,

    y_i = c_{i,0} x_T + sum_{k<i} c_{i,k+1} D_k          (i = 0 .. n-1, one score evaluation each)
    out = c_{n,0} x_T + sum_{k<n} c_{n,k+1} D_k,

with weights that depend on the grid only (UniPC's corrector included: the corrected state is a
combination too). A bespoke non-stationary solver (Shaul et al. 2024, "Bespoke Non-Stationary
Solvers for Fast Sampling of Diffusion and Flow Models", arXiv:2403.01329) lets every weight
c_{i,k} and every time t_i be free, and fits them to the model by gradient descent on the error
against an accurate reference solve from a calibration batch, the way Align Your Steps / OSS fit
only the times (`optimize_steps`). For n evaluations it has (n + 1) (n + 2) / 2 weights and n - 1
free times: 21 + 4 at 5 NFE. It cannot do worse than the solver it starts from on the calibration batch:
the fit starts from UniPC's own weights on UniPC's fitted grid (read off by running `unipc` on
unit inputs, `unipc_weights`) and keeps the best point it visits.

`bns` is the sampler (`sample(..., sampler="bns", times=grid, weights=W)`); without `weights` it
runs UniPC's weights on its grid, i.e. it equals `unipc`. The fit is `optimize_steps(...,
sampler="bns", return_info=True)`, whose info holds the weights. NFE rules are unipc's.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from scoresde.samplers.core import SAMPLERS, progress_range
from scoresde.samplers.logsnr import LogSNRGrid, one_per_time
from scoresde.samplers.unipc import unipc


__all__ = ["bns", "unipc_weights", "check_weights", "fit_bns"]


def _evaluations(n: int, denoise: bool) -> int:
    """Score evaluations of a grid with n intervals: n + 1 with the final data prediction, else n."""
    return n + 1 if denoise else n


def unipc_weights(sde, ts: torch.Tensor, denoise: bool = True, **unipc_options: Any) -> list[list[float]]:
    """The weights (rows y_0 .. y_{m-1}, output) of `unipc` on the given grid `ts`, read off exactly:
    unipc runs on m + 1 one-dimensional samples, sample 0 starting at 1 (x_T) and the score made so
    that D_k = 1 on sample k + 1 and 0 elsewhere; every evaluation point and the output are then
    the columns of weights."""
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    m = _evaluations(len(ts) - 1, denoise)
    rows: list[torch.Tensor] = []
    alpha, sigma = sde.marginal_coefs(ts)

    def probe(y, t):
        k = len(rows)
        rows.append(y[:, 0].clone())
        v = torch.zeros_like(y)
        v[k + 1] = 1.0
        return (alpha[k] * v - y) / sigma[k] ** 2               # D(y; t_k) = (y + sigma^2 s) / alpha = v

    x = torch.zeros(m + 1, 1, dtype=torch.float64)
    x[0] = 1.0
    out = unipc(sde, probe, x, ts, denoise=denoise, schedule="given", **unipc_options)
    rows.append(out[:, 0])
    return [[float(v) for v in r[: i + 1]] for i, r in enumerate(rows)]


def check_weights(weights: Any, evaluations: int) -> list[list[float]]:
    """`weights` as rows of lengths 1, 2, .., m + 1 (m = score evaluations), all finite; a clear error else."""
    try:
        rows = [[float(v) for v in r] for r in weights]
    except (TypeError, ValueError):
        raise TypeError(f"weights: expected rows of numbers (a list of lists), found {type(weights).__name__}") \
            from None
    want = list(range(1, evaluations + 2))
    if [len(r) for r in rows] != want:
        raise ValueError(f"weights: expected {evaluations + 1} rows of lengths {want} for {evaluations} score "
                         f"evaluations, found lengths {[len(r) for r in rows]}")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise ValueError("weights: expected finite numbers, found NaN or inf")
    return rows


def _combine(row: Sequence, x: torch.Tensor, D: list[torch.Tensor]) -> torch.Tensor:
    out = row[0] * x
    for c, d in zip(row[1:], D):
        out = out + c * d
    return out


def _solve(score_fn: Callable, x: torch.Tensor, times: torch.Tensor, alpha, sigma, rows, progress=False,
           seen: list | None = None):
    """Run the weights `rows` with evaluations at `times` (floats or tensors alike, so it is differentiable);
    `seen`, when given, receives the evaluation points y_i and the data predictions D_i."""
    D: list[torch.Tensor] = []
    for i in progress_range(len(rows) - 1, progress, "bns"):
        y = _combine(rows[i], x, D)
        s = score_fn(y, times[i].expand(y.shape[0]))
        D.append((y + sigma[i] ** 2 * s) / alpha[i])               # Tweedie's data prediction D(y; t_i)
        if seen is not None:
            seen.append((y, D[-1]))
    return _combine(rows[-1], x, D)


@SAMPLERS.register("bns", kind="fast ode", summary="bespoke non-stationary solver: weights fitted by "
                   "optimize-steps (unipc's own without them)", nfe=one_per_time, stochastic=False, takes_grid=True,
                   schedule="logsnr", fitted="times and weights")
def bns(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
        schedule: str = "logsnr", rho: float = 7.0, weights=None) -> torch.Tensor:
    """Bespoke non-stationary solver: fitted weights over x_T and all data predictions; NFE = steps.

    `weights` (from `optimize_steps(..., sampler="bns", return_info=True)[1]["weights"]`) must be
    given with the grid they were fitted on (`times=`); without them bns runs unipc's weights.
    """
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    m = _evaluations(g.n, denoise)
    t64 = g.t.double().cpu()
    rows = unipc_weights(sde, t64, denoise) if weights is None else check_weights(weights, m)
    return _solve(score_fn, x, g.t, g.alpha, g.sigma, rows, progress)


# --- fitting ------------------------------------------------------------------------------------------
def fit_bns(sde, score_fn: Callable, x_T: torch.Tensor, x_ref: torch.Tensor, grid: torch.Tensor,
            distance: Callable[[torch.Tensor], torch.Tensor], *, iterations: int, bar=None,
            state: dict[str, Any] | None = None, save: Callable[[dict[str, Any]], None] | None = None,
            save_every: int = 25, explore_lr: float | None = None) -> tuple[torch.Tensor, list[list[float]], float]:
    """Adam on the times (their half log-SNR) and the weights, from unipc's weights on `grid`, in two phases.

    `distance(x)` is the pooled per-sample error against `x_ref` (a differentiable scalar).
    1. Explore (2/3 of `iterations`): every weight and log-SNR moves by Adam steps of `explore_lr`, cosine-
       decayed; large for the small weights, which lets a poor few-step start jump to another basin. The
       default is 0.01 for 1000 or more exploring steps and 0.01 sqrt(1000 / steps) for fewer, so a short fit
       still travels about as far (a random walk's distance): at 500 iterations it scores better than 0.01 on
       both 2-D mixtures of benchmarks/bns_iterations.py (benchmarks/results/bns_iterations.md).
    2. Refine (the rest), from the best point of phase 1: each weight moves in units of the change it
       makes to its row's output relative to that output's RMS (RMS(y_i) / RMS(input)), with steps of
       0.3 times the error reached relative to RMS(x_ref), warmed up and cosine-decayed, so that a
       good start (many NFE, where phase 1 finds nothing better) is still improved.
    Returns the best (grid, weights, error) seen, the start among them. Gradients flow through
    `score_fn` into x and t only (a network's own parameters are not touched); the backward pass
    holds the activations of all the solver's evaluations of the calibration batch, so a large
    network wants a small batch.

    Resuming: `save(state)` is called every `save_every` Adam steps and at the end of each phase with the
    whole state of the fit (the phase, its step, the parameters, Adam's moments, the schedule and the best
    point, as tensors and plain values); `fit_bns(..., state=that)` continues from it and ends exactly where
    an uninterrupted fit ends (the fit draws no random numbers). `bar` advances once per Adam step."""
    on = dict(device=x_T.device, dtype=x_T.dtype)                     # the model's device and dtype
    T, eps = float(grid[0]), float(grid[-1])
    lam0, lam_end = (float(v) for v in sde.half_log_snr(torch.tensor([T, eps], dtype=torch.float64)))
    gap = 1e-6 * (lam_end - lam0)
    rows0 = unipc_weights(sde, grid, True)
    sizes = [len(r) for r in rows0]
    best = (math.inf, grid.double(), rows0)
    if state is not None:
        best = (float(state["best_err"]), state["best_times"].double(), [list(r) for r in state["best_rows"]])

    def flat(rows) -> torch.Tensor:
        return torch.tensor([v for r in rows for v in r], dtype=torch.float64)

    def run(lam, w, seen=None):
        t = torch.cat([torch.tensor([T], dtype=torch.float64), sde.t_from_half_log_snr(lam)])
        alpha, sigma = sde.marginal_coefs(t)
        rows = list(torch.split(w, sizes))
        x = _solve(score_fn, x_T, t.to(**on), alpha.to(**on), sigma.to(**on), [r.to(**on) for r in rows], seen=seen)
        return t, rows, distance(x), x

    def adam(phase, start_times, flat0, steps, lr, scale, warm):
        nonlocal best
        lam = sde.half_log_snr(start_times.double()[1:]).clone().requires_grad_(True)    # t_1 .. t_{m-1}
        delta = torch.zeros_like(flat0, requires_grad=True)
        opt = torch.optim.Adam([lam, delta], lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) * (
            0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / max(steps, 1)))))
        k0 = 0
        if state is not None and state["phase"] == phase and state["k"] > 0:    # resume inside this phase
            with torch.no_grad():
                lam.copy_(state["lam"])
                delta.copy_(state["delta"])
            opt.load_state_dict({"state": dict(enumerate(state["adam"])), "param_groups": state["groups"]})
            sched.load_state_dict(state["sched"])
            k0 = int(state["k"])

        def snapshot(k):
            opt_state = opt.state_dict()
            return {"phase": phase, "k": k, "lam": lam.detach().clone(), "delta": delta.detach().clone(),
                    "adam": [opt_state["state"][i] for i in sorted(opt_state["state"])],
                    "groups": opt_state["param_groups"], "sched": sched.state_dict(),
                    "start_times": start_times, "flat0": flat0, "steps": steps, "lr": lr, "scale": scale, "warm": warm,
                    "best_err": best[0], "best_times": best[1], "best_rows": best[2]}

        for k in range(k0, steps + 1):                             # the last pass only evaluates
            with torch.enable_grad():
                t, rows, err, _ = run(lam, flat0 + scale * delta)
            e = float(err.detach())
            if math.isfinite(e) and e < best[0] and bool((t[1:] < t[:-1]).all()):
                best = (e, t.detach().clone(), [r.detach().tolist() for r in rows])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(err=f"{best[0]:.3g}")
            if not math.isfinite(e):
                break
            if k == steps:
                break
            opt.zero_grad()
            lam.grad, delta.grad = torch.autograd.grad(err, [lam, delta])
            opt.step()
            sched.step()
            with torch.no_grad():                                  # back into (lambda(T), lambda(eps)]
                lam.clamp_(lam0 + gap, lam_end)
            if save is not None and (k + 1) % save_every == 0:
                save(snapshot(k + 1))
        if save is not None:
            save({**snapshot(0), "phase": phase + 1})               # the phase is done

    explore = (iterations * 2) // 3
    if explore_lr is None:
        explore_lr = 0.01 * math.sqrt(1000 / explore) if 0 < explore < 1000 else 0.01
    phase = 0 if state is None else int(state["phase"])
    if phase == 0:
        adam(0, grid.double(), flat(rows0), explore, explore_lr, 1.0, 1)
    if phase <= 1:
        if phase == 1 and state is not None and state["k"] > 0:    # resume inside the refining phase
            start_times, flat0, lr, scale, warm = (state["start_times"], state["flat0"], state["lr"], state["scale"],
                                                   state["warm"])
        else:
            start_times, flat0 = best[1], flat(best[2])
            scale, lr = _refine_units(sde, run, x_T, x_ref, best, flat)
            warm = max(1, (iterations - explore) // 20)
        if lr is not None:
            adam(1, start_times, flat0, iterations - explore, lr, scale, warm)
    return best[1], best[2], best[0]


def _refine_units(sde, run, x_T, x_ref, best, flat) -> tuple[Any, float | None]:
    """(scale of each weight, learning rate) of the refining phase, at its start (None: the start diverges)."""
    def rms(v: torch.Tensor) -> float:
        return max(float(v.detach().double().square().mean().sqrt()), 1e-12)

    with torch.no_grad():
        seen: list = []
        _, _, err1, out = run(sde.half_log_snr(best[1][1:]), flat(best[2]), seen)
    if not math.isfinite(float(err1)):
        return 1.0, None
    sizes = [len(r) for r in best[2]]
    inputs = [rms(x_T)] + [rms(d) for _, d in seen]
    outputs = [rms(y) for y, _ in seen] + [rms(out)]
    scale = torch.tensor([outputs[i] / inputs[k] for i, n in enumerate(sizes) for k in range(n)], dtype=torch.float64)
    return scale, 0.3 * float(err1) / rms(x_ref)
