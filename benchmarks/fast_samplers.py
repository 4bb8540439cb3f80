"""Fast samplers at equal score evaluations: scoresde vs diffusers vs k-diffusion, fixed vs optimised grids.

Every sampler is driven by the same exact score of an analytic 2-D Gaussian mixture (no network,
so only the integrator differs) from the same prior draw, and is scored for 4, 5, 6, 8, 10 and 20
score evaluations (NFE, counted by a wrapper around the score for every sampler, peers included) by

    metric = TV(mode weights) + sum_k w_k KL(N(fitted_k) || N(true_k)),

where each sample goes to its most likely data mode, N(fitted_k) is the Gaussian fitted (full
covariance) to the samples of mode k, and KL is in closed form. Two mixtures: the four-mode one
(std 0.1) and a sharp one (six modes, std 0.01-0.03, unequal weights).

Common ground (VP, as the peers are VP/EDM-native): VPSDE(0.1, 20); the grid runs from t = 1
(sigma~ = sigma/alpha ~ 152) down to sigma~_min = 0.002 (EDM's value), then one last step to noise 0
that lands on the data prediction, for everyone:
- scoresde: `sde.sample(..., eps=t(sigma~_min), denoise=True)` with each sampler's default grid;
- k-diffusion (`k_diffusion.sampling`): Karras sigmas from sigma~_max to sigma~_min (+ 0), denoiser
  D(x, sigma) = x + sigma^2 grad log p_sigma(x) of the VE-scaled mixture;
- diffusers: `trained_betas` of VPSDE(0.1, 20, N=25000), whose DDPM betas start at 0.1/N = 4e-6, i.e.
  sigma~_0 = 0.002; the eps-model is -sigma grad log p at exactly the (alpha, sigma) that the
  scheduler's own sigma~ (or alphas_cumprod) implies at that step.
Ours are also run on sub-VP and VE (VESDE(0.001, 50)) with the same sigma~ end points.

Optimised grids ("[opt]" rows): `scoresde.optimize_steps` fitted per sampler, budget and problem on a
calibration batch of 512 prior draws from another seed than the evaluation draws (held out), against a
DPM-Solver++ 3M 500-step reference; the CPU seconds of each fit are tabulated. The digits section does
the same on the trained digits U-Net of benchmarks/samplers.py (configs/digits.toml, 1500 steps, cached
in runs/bench_samplers/), scored by the digits FID of `--n-digits` samples against the 359 held-out
images, with 32 calibration draws and at most 80 sampler runs per fit.

"ours bns [opt]": the bespoke non-stationary solver (scoresde/samplers/bns.py): the unipc grid
fitted as above, then its times and all its step weights by Adam on the mean per-sample RMSE
(1500 steps on the mixtures, `--digits-iterations` 200 on digits); same calibration draws.

Flow ("--only flow"): the same two mixtures on the rectified-flow path (`ss.FlowSDE()`, x_t = (1 - t) x0 + t z),
ours from T = 0.999 to t(sigma~_min = 0.002) + the final data prediction, each sampler on the path's default grid
(`FlowSDE.default_schedule`; first a table of every schedule, which chose it), fitted grids and bns fitted on the
flow path; against diffusers' FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler and
DPMSolverMultistep / UniPCMultistep with `prediction_type="flow_prediction", use_flow_sigmas=True`, at shift 1 and
SD3's 3, given the exact velocity E[z - x0 | x_t] (noise - sample) at the sigma = t each evaluation is at (their
grids start at t = 1 (Euler, Heun) or 0.999 and end at t = 0). A trained flow model is benchmarks/recipes.py's.

Peers: `pip install -e .[bench]` (diffusers, k-diffusion). k-diffusion's package `__init__` pulls
torchvision, clip, wandb, kornia... (a CUDA torch of several GB), so here it is installed with
`pip install --no-deps k-diffusion torchdiffeq` and only `k_diffusion/sampling.py` is loaded, with
a stub `k_diffusion.utils` that provides the one helper it uses (`append_dims`); its samplers run
unmodified.

Run: `python benchmarks/fast_samplers.py [--n 40000] [--no-peers] [--only mixtures flow digits noise]` (about 25 min on 2
shared CPU cores); writes benchmarks/results/fast_samplers.{md,png}.
"""
from __future__ import annotations

import argparse
import os
import importlib
import importlib.util
import math
import sys
import time
import types
from pathlib import Path

import torch

import scoresde as ss
from scoresde.samplers.core import sampler_info
from scoresde.samplers.grids import schedule_for
from scoresde.sde.analytic import four_mode_mixture

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (OUT, SIGMA_MIN, digits_problem, metric, metric_noise, sharp_mixture,  # noqa: E402,F401
                    sigma_min_eps)

BUDGETS = (4, 5, 6, 8, 10, 20)
DTYPE = torch.float32


# --- problems and metric ---------------------------------------------------------------------


def noise_markdown(n: int, draws: int = 20) -> str:
    lines = ["**The metric's noise**: the metric of exact data samples (no sampler), over "
             f"{draws} independent sets of {n}; a sampler at least this good is exact within the noise.", "",
             "| mixture | mean | sd | min | max | mean + 2 sd |", "|---|---:|---:|---:|---:|---:|"]
    for name, mix in (("four-mode (std 0.1)", four_mode_mixture(0.1)), ("sharp (std 0.01-0.03)", sharp_mixture())):
        v = metric_noise(mix, n, draws)
        lines.append(f"| {name} | {v.mean():.4g} | {v.std():.4g} | {v.min():.4g} | {v.max():.4g} | "
                     f"{v.mean() + 2 * v.std():.4g} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


class _Coefs:
    """A stand-in SDE with fixed (alpha, sigma): GaussianMixture.score at any noise level."""

    def __init__(self, alpha: float, sigma: float):
        self.alpha, self.sigma = float(alpha), float(sigma)

    def marginal_coefs(self, t):
        return torch.full_like(t, self.alpha), torch.full_like(t, self.sigma)


class Counter:
    def __init__(self, fn):
        self.fn, self.nfe = fn, 0

    def __call__(self, *a):
        self.nfe += 1
        return self.fn(*a)


# --- peers -------------------------------------------------------------------------------------
def load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    pkg.utils = utils
    return importlib.import_module("k_diffusion.sampling")


def kdiff_runs(K, mix, z, sig_max):
    def denoiser(x, sigma):                                       # D(x; sigma), x = x0 + sigma z
        s = sigma.flatten()[0].item()
        return x + s * s * mix.score(x, torch.zeros(len(x)), _Coefs(1.0, s))

    def run(fn, heun_like):
        def go(budget):
            n = (budget + 1) // 2 if heun_like else budget
            sigmas = K.get_sigmas_karras(n, SIGMA_MIN, sig_max, rho=7.0).to(DTYPE)
            c = Counter(denoiser)
            x = fn(c, z * math.sqrt(1 + sig_max ** 2), sigmas, disable=True)
            return x, c.nfe
        return go

    return {"k-diff euler": run(K.sample_euler, False), "k-diff heun": run(K.sample_heun, True),
            "k-diff dpm_2": run(K.sample_dpm_2, True), "k-diff lms": run(K.sample_lms, False),
            "k-diff dpm++2m": run(K.sample_dpmpp_2m, False)}


def diffusers_runs(mix, z):
    import diffusers
    N = 25000
    betas = ss.VPSDE(0.1, 20.0, N).discrete_betas.tolist()

    def eps_fn(x, sig):                                           # eps at alpha = 1/sqrt(1+sig^2)
        a = 1.0 / math.sqrt(1.0 + sig * sig)
        return -(sig * a) * mix.score(x, torch.zeros(len(x)), _Coefs(a, sig * a))

    def run(cls, **cfg):
        def go(budget):
            sch = getattr(diffusers, cls)(num_train_timesteps=N, trained_betas=betas, **cfg)
            sch.set_timesteps(budget)
            c = Counter(eps_fn)
            x = z * sch.init_noise_sigma
            for i, t in enumerate(sch.timesteps):
                if hasattr(sch, "sigmas"):
                    sig = float(sch.sigmas[i])
                else:
                    ab = float(sch.alphas_cumprod[int(t)])
                    sig = math.sqrt((1 - ab) / ab)
                x = sch.step(c(sch.scale_model_input(x, t), sig), t, x).prev_sample
            return x, c.nfe
        return go

    return {
        "diffusers ddim (trailing)": run("DDIMScheduler", timestep_spacing="trailing"),
        "diffusers euler (karras)": run("EulerDiscreteScheduler", use_karras_sigmas=True),
        "diffusers dpm++2m": run("DPMSolverMultistepScheduler", solver_order=2),
        "diffusers dpm++2m (karras)": run("DPMSolverMultistepScheduler", solver_order=2, use_karras_sigmas=True),
        "diffusers dpm++2m (lu)": run("DPMSolverMultistepScheduler", solver_order=2, use_lu_lambdas=True),
        "diffusers dpm++3m (karras)": run("DPMSolverMultistepScheduler", solver_order=3, use_karras_sigmas=True),
        "diffusers dpm++3m (lu)": run("DPMSolverMultistepScheduler", solver_order=3, use_lu_lambdas=True),
        "diffusers unipc": run("UniPCMultistepScheduler"),
        "diffusers unipc (karras)": run("UniPCMultistepScheduler", use_karras_sigmas=True),
        "diffusers deis (karras)": run("DEISMultistepScheduler", use_karras_sigmas=True),
    }


# --- ours ------------------------------------------------------------------------------------------
OURS = {"ddim": ("ddim", {}), "heun": ("heun", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}),
        "dpm_solver 3": ("dpm_solver", {"order": 3}),
        "deis 2 (karras)": ("deis", {"order": 2}),                                  # deis' defaults
        "deis 2 (quadratic)": ("deis", {"order": 2, "schedule": "quadratic"}),
        "deis 3 + UniC (logsnr)": ("deis", {"order": 3, "schedule": "logsnr", "corrector": True}),
        "unipc (logsnr)": ("unipc", {}), "unipc bh1 (logsnr)": ("unipc", {"variant": "bh1"}),
        "unipc 3 (logsnr)": ("unipc", {"order": 3})}
# the samplers given optimised grids (the grid replaces the schedule)
OPTIMISED = {"unipc": ("unipc", {}), "unipc 3": ("unipc", {"order": 3}), "dpm_solver 2": ("dpm_solver", {"order": 2}),
             "deis 3 + UniC": ("deis", {"order": 3, "corrector": True}), "ddim": ("ddim", {}), "heun": ("heun", {}),
             "bns": ("bns", {})}


def _budget_for(sampler: str, budget: int, **opts) -> int:
    """The most NFE up to `budget` the sampler can spend, as it declares it (heun, 2 steps - 1: an even budget
    is run at one evaluation less)."""
    info = sampler_info(sampler)
    return info.nfe(info.steps_for(budget, **opts), **opts)


def ours_runs(sde, mix, z, names=OURS):
    eps = sigma_min_eps(sde)
    x_T = z * sde.prior_std

    def run(name, opts):
        def go(budget):
            steps = sampler_info(name).steps_for(budget, **opts)          # heun: (budget + 1) // 2
            x, info = sde.sample(mix.score_fn(sde), None, sampler=name, steps=steps, x_init=x_T, eps=eps,
                                 denoise=True, return_info=True, **opts)
            return x, info["nfe"]
        return go

    return {f"ours {k}": run(*v) for k, v in names.items()}


def optimised_runs(sde, score_fn, x_T, x_cal, eps, costs: dict, label: str, names=OPTIMISED, **fit):
    """'ours <name> [opt]' runs: a grid fitted on the calibration draws x_cal, sampled from x_T."""
    def run(key, sampler, opts):
        def go(budget):
            b = _budget_for(sampler, budget, **opts)
            grid, info = ss.optimize_steps(sde, score_fn, b, sampler=sampler, calibration=x_cal, eps=eps,
                                           return_info=True, **fit, **opts)
            costs[(label, key, budget)] = (info["cpu_seconds"], info["fevals"], info["error_default"], info["error"])
            run_opts = {**opts, "weights": info["weights"]} if sampler == "bns" else opts   # bns: its fitted weights
            x, out = sde.sample(score_fn, None, sampler=sampler, times=grid, x_init=x_T, return_info=True, **run_opts)
            if out["nfe"] != b:
                raise RuntimeError(f"{key} [opt] used {out['nfe']} score evaluations on a {b}-NFE grid")
            return x, out["nfe"]
        return go

    return {f"ours {k} [opt]": run(k, *v) for k, v in names.items()}


def evaluate(runs, score, budgets=BUDGETS):
    table = {}
    for name, go in runs.items():
        row = []
        for b in budgets:
            x, nfe = go(b)
            if nfe > b:
                raise RuntimeError(f"{name} used {nfe} > {b} score evaluations")
            row.append((score(x), nfe))
        table[name] = row
        print(f"  {name:32s}" + "".join(f" {m:9.4f}({n:3d})" for m, n in row), flush=True)
    return table


def _is_fixed(k: str) -> bool:
    return not k.startswith("exact") and not k.startswith("floor") and "[opt]" not in k


def goals(table, budgets=BUDGETS) -> str:
    """The issue's goals on one table: 5 NFE vs 2 x the best fixed grid at 20 NFE; 10 NFE vs the flow."""
    col = {b: j for j, b in enumerate(budgets)}
    if 5 not in col or 20 not in col:
        return ""
    best20 = min(row[col[20]][0] for k, row in table.items() if _is_fixed(k))
    best5 = min((row[col[5]][0], k) for k, row in table.items()
                if not _is_fixed(k) and not k.startswith(("exact", "floor")))
    best5f = min((row[col[5]][0], k) for k, row in table.items() if _is_fixed(k))
    out = (f"Goal 1 (5 NFE within 2x of the best fixed grid at 20 NFE = {best20:.4g}): best at 5 NFE "
           f"{best5[0]:.4g} ({best5[1]}; best fixed grid {best5f[0]:.4g}, {best5f[1]}), "
           f"{best5[0] / best20:.1f}x: {'reached' if best5[0] <= 2 * best20 else 'NOT reached'}.")
    ref = [row[0][0] for k, row in table.items() if k.startswith("exact")]
    if 10 in col and ref:
        best10 = min((row[col[10]][0], k) for k, row in table.items() if not k.startswith(("exact", "floor")))
        out += (f" Goal 2 (10 NFE = converged flow {ref[0]:.4g}): best at 10 NFE {best10[0]:.4g} ({best10[1]}), "
                f"{best10[0] / ref[0]:.1f}x the flow.")
    return out


def to_markdown(title, table, budgets=BUDGETS):
    lines = [f"**{title}**", "", "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    peers = [k for k in table if not k.startswith(("ours", "exact", "floor"))]
    best = [min((table[k][j][0] for k in peers), default=float("inf")) for j in range(len(budgets))]
    for k, row in table.items():
        cells = []
        for j, (m, n) in enumerate(row):
            mark = " ✓" if k.startswith("ours") and peers and m <= best[j] else ""
            cells.append(f"{m:.4g}{mark}" + ("" if n == budgets[j] else f" ({n})"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for label, keys in [("best of ours, fixed grids", [k for k in table if k.startswith("ours") and "[opt]" not in k]),
                        ("best of ours, optimised grids", [k for k in table if "[opt]" in k]),
                        ("best peer", peers)]:
        if keys:
            lines.append(f"| *{label}* | " + " | ".join(
                f"{min(table[k][j][0] for k in keys):.4g}" for j in range(len(budgets))) + " |")
    g = goals(table, budgets)
    return "\n".join(lines) + (f"\n\n{g}" if g else "")


def costs_markdown(costs: dict, budgets=BUDGETS) -> str:
    """CPU seconds (sampler runs) of each fit, and the calibration error default -> optimised."""
    problems = list(dict.fromkeys(p for p, _, _ in costs))
    lines = ["| problem | sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    for p in problems:
        for k in dict.fromkeys(k for q, k, _ in costs if q == p):
            cells = []
            for b in budgets:
                c = costs.get((p, k, b))
                cells.append("–" if c is None else f"{c[0]:.1f} s ({c[1]}), {c[2]:.3g} → {c[3]:.3g}")
            lines.append(f"| {p} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the flow path (rectified flow / flow matching) -------------------------------------------------
FLOW_FIXED = {"ddim": ("ddim", {}), "heun": ("heun", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}),
              "dpm_solver 3": ("dpm_solver", {"order": 3}), "deis 2": ("deis", {"order": 2}),
              "deis 3 + UniC": ("deis", {"order": 3, "corrector": True}), "unipc": ("unipc", {}),
              "unipc 3": ("unipc", {"order": 3}),
              "ddim (uniform)": ("ddim", {"schedule": "uniform"})}        # = diffusers' FlowMatchEuler, shift 1
FLOW_OPT = {"unipc": ("unipc", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}), "deis 2": ("deis", {"order": 2}),
            "ddim": ("ddim", {}), "bns": ("bns", {})}
FLOW_SCHEDULES = ("logsnr", "uniform", "karras", "quadratic", "shifted 3", "shifted 0.25")
FLOW_GRID_BUDGETS = (5, 10, 20)


def flow_velocity(mix, x, sigma: float) -> torch.Tensor:
    """The exact velocity E[z - x0 | x_t = x] of the mixture on the flow path at t = sigma (diffusers'
    `flow_prediction`: noise - sample): x0 = (x + t^2 score) / (1 - t), z = -t score; at t = 1, x - E[x0]."""
    if sigma >= 1.0:
        return x - (mix.weights[:, None] * mix.means).sum(0).to(x.dtype)
    s = mix.score(x, torch.zeros(len(x)), _Coefs(1.0 - sigma, sigma))
    return -sigma * s - (x + sigma * sigma * s) / (1.0 - sigma)


def diffusers_flow_runs(mix, z):
    """diffusers' flow schedulers driven by the exact velocity, each at the sigma it states for the call."""
    import diffusers

    def run(cls, **cfg):
        def go(budget):
            sch = getattr(diffusers, cls)(**cfg)
            heun = "Heun" in cls
            sch.set_timesteps((budget + 1) // 2 if heun else budget)        # Heun: 2 evaluations a step but the last
            c = Counter(lambda x, sig: flow_velocity(mix, x, sig))
            x = z * getattr(sch, "init_noise_sigma", 1.0)
            for t in sch.timesteps:
                sig = float(sch.sigmas[sch.step_index or 0])             # the sigma this evaluation is at
                x = sch.step(c(x, sig), t, x).prev_sample
            return x, c.nfe
        return go

    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True)
    runs = {}
    for shift in (1.0, 3.0):
        runs[f"diffusers FlowMatchEuler (shift {shift:g})"] = run("FlowMatchEulerDiscreteScheduler", shift=shift)
        runs[f"diffusers FlowMatchHeun (shift {shift:g})"] = run("FlowMatchHeunDiscreteScheduler", shift=shift)
        runs[f"diffusers dpm++2m flow (shift {shift:g})"] = run("DPMSolverMultistepScheduler", solver_order=2,
                                                               flow_shift=shift, **flow)
        runs[f"diffusers unipc flow (shift {shift:g})"] = run("UniPCMultistepScheduler", flow_shift=shift, **flow)
    return runs


def flow_grid_markdown(mname, mix, z) -> str:
    """Which grid suits the flow path: each fast sampler on each schedule (shifted s: SD3's shift s on a uniform
    grid; s < 1 moves the steps towards the data) at 5 / 10 / 20 evaluations; * = the path's default."""
    budgets = FLOW_GRID_BUDGETS
    head = " | ".join(f"{s} @{b}" for b in budgets for s in FLOW_SCHEDULES)
    lines = [f"**{mname}, flow: the grid choice** (metric at NFE {', '.join(map(str, budgets))}; * = default)", "",
             f"| sampler | {head} |", "|---|" + "---:|" * (len(budgets) * len(FLOW_SCHEDULES))]
    for key, (name, opts) in FLOW_FIXED.items():
        if "schedule" in opts:
            continue
        default = schedule_for(ss.FlowSDE(), name, sampler_info(name).schedule)
        cells = []
        for b in budgets:
            steps = sampler_info(name).steps_for(b, **opts)
            for sched in FLOW_SCHEDULES:
                word, _, shift = sched.partition(" ")
                sde = ss.FlowSDE(shift=float(shift or 1))
                x = sde.sample(mix.score_fn(sde), None, sampler=name, steps=steps, x_init=z, eps=sigma_min_eps(sde),
                               schedule=word, **opts)
                cells.append(f"{metric(mix, x):.3g}" + (" *" if word == default else ""))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def flow_tables(args, z, z_cal, costs: dict):
    """The flow section: the grid choice, then ours (fixed, fitted, bns) against diffusers' flow schedulers."""
    md, curves = [], {}
    sde = ss.FlowSDE()
    eps = sigma_min_eps(sde)
    for mname, mix in (("four-mode (std 0.1)", four_mode_mixture(0.1)), ("sharp (std 0.01-0.03)", sharp_mixture())):
        print(f"\n== {mname}, flow: grid choice", flush=True)
        md.append(flow_grid_markdown(mname, mix, z[: args.n_grid]))
        print(f"\n== {mname}, flow: metric (NFE) at budgets {BUDGETS}", flush=True)
        runs = dict(ours_runs(sde, mix, z, FLOW_FIXED))
        runs.update(optimised_runs(sde, mix.score_fn(sde), z, z_cal, eps, costs, f"{mname}, flow", FLOW_OPT))
        x_ref = ours_runs(sde, mix, z, {"x": ("dpm_solver", {"order": 3, "schedule": "logsnr"})})["ours x"](1000)[0]
        runs["exact flow (dpm_solver 3, 1000 NFE)"] = lambda b, x_ref=x_ref: (x_ref, b)
        if not args.no_peers:
            runs.update(diffusers_flow_runs(mix, z))
        table = evaluate(runs, lambda x, mix=mix: metric(mix, x))
        curves[f"{mname}, flow"] = table
        md.append(to_markdown(f"{mname}, flow (exact velocity)", table) + flow_goals(table))
    return md, curves


def flow_goals(table, budgets=BUDGETS) -> str:
    """The issue's flow goals: at 10 NFE our best fixed grid <= half diffusers' best; bns at 5 <= diffusers' best at 20."""
    col = {b: j for j, b in enumerate(budgets)}
    peers = [k for k in table if k.startswith("diffusers")]
    if not peers:
        return ""
    fixed = [k for k in table if k.startswith("ours") and "[opt]" not in k]
    p10 = min((table[k][col[10]][0], k) for k in peers)
    o10 = min((table[k][col[10]][0], k) for k in fixed)
    p20 = min((table[k][col[20]][0], k) for k in peers)
    b5 = table["ours bns [opt]"][col[5]][0]
    return (f"\n\nFlow goal 1 (10 NFE, best fixed grid <= 1/2 diffusers' best = {p10[0]:.4g}, {p10[1]}): "
            f"{o10[0]:.4g} ({o10[1]}), {o10[0] / p10[0]:.2f}x: {'reached' if o10[0] <= 0.5 * p10[0] else 'NOT reached'}. "
            f"Flow goal 2 (bns at 5 NFE <= diffusers' best at 20 = {p20[0]:.4g}, {p20[1]}): {b5:.4g}: "
            f"{'reached' if b5 <= p20[0] else 'NOT reached'}.")


# --- the trained digits U-Net -----------------------------------------------------------------------
DIGITS_FIXED = {"ddim": ("ddim", {}), "heun": ("heun", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}),
                "deis 2 (karras)": ("deis", {"order": 2}),
                "deis 3 + UniC (logsnr)": ("deis", {"order": 3, "schedule": "logsnr", "corrector": True}),
                "unipc (logsnr)": ("unipc", {})}
DIGITS_OPT = {"unipc": ("unipc", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}), "bns": ("bns", {})}


def digits_table(args, costs: dict, budgets=BUDGETS):
    ns = argparse.Namespace(cache=args.cache, digits_steps=1500, retrain=False, progress=False, seed=args.seed,
                            n_digits=args.n_digits)
    p = digits_problem(ns, budgets, ())
    sde, model = p.sde, p.score_fn
    x_T = sde.prior_sampling(p.shape, generator=torch.Generator().manual_seed(args.seed))
    x_cal = sde.prior_sampling((args.digits_calib, *p.shape[1:]),
                               generator=torch.Generator().manual_seed(args.seed + 1))
    eps = sde.default_eps

    def fixed(sampler, opts):
        def go(budget):
            steps = sampler_info(sampler).steps_for(budget, **opts)       # heun: (budget + 1) // 2
            x, info = sde.sample(model, None, sampler=sampler, steps=steps, x_init=x_T, return_info=True, **opts)
            return x, info["nfe"]
        return go

    runs = {f"ours {k}": fixed(*v) for k, v in DIGITS_FIXED.items()}
    runs.update(optimised_runs(sde, model, x_T, x_cal, eps, costs, "digits U-Net", DIGITS_OPT,
                               reference_steps=200, maxfev=80, iterations=args.digits_iterations))
    x_ref = sde.sample(model, None, sampler="dpm_solver", order=3, steps=200, x_init=x_T)
    runs["exact flow (dpm_solver 3, 200 NFE)"] = lambda b: (x_ref, b)
    table = evaluate(runs, p.score, budgets)
    table[f"floor: {p.floor_label}"] = [(p.floor, b) for b in budgets]
    return p, table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40000, help="samples per run")
    ap.add_argument("--n-calib", type=int, default=512, help="calibration draws of the optimised grids (2-D)")
    ap.add_argument("--n-digits", type=int, default=256, help="digits samples per run (FID)")
    ap.add_argument("--digits-calib", type=int, default=32, help="calibration draws (digits)")
    ap.add_argument("--digits-iterations", type=int, default=200, help="Adam steps of each bns fit (digits)")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parent.parent / "runs" / "bench_samplers"))
    ap.add_argument("--only", nargs="+", choices=["mixtures", "flow", "digits", "noise"],
                    default=["mixtures", "flow", "digits", "noise"])
    ap.add_argument("--n-grid", type=int, default=10000, help="samples per run of the flow grid-choice table")
    ap.add_argument("--combine", action="store_true",
                    help="only join results/fast_samplers_{mixtures,flow,digits,noise}.md (four parallel runs of "
                         "--only X) into results/fast_samplers.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    if args.combine:
        return combine()
    torch.set_num_threads(1)
    vp = ss.VPSDE(0.1, 20.0)
    sig_max = (lambda a, s: (s / a).item())(*vp.marginal_coefs(torch.tensor(1.0, dtype=torch.float64)))
    z = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=DTYPE)
    z_cal = torch.randn(args.n_calib, 2, generator=torch.Generator().manual_seed(args.seed + 1), dtype=DTYPE)
    K = None if args.no_peers else load_k_diffusion()
    md, curves, costs = [], {}, {}
    start, cpu0 = time.time(), time.process_time()
    for mname, mix in ([("four-mode (std 0.1)", four_mode_mixture(0.1)), ("sharp (std 0.01-0.03)", sharp_mixture())]
                       if "mixtures" in args.only else []):
        print(f"\n== {mname}, VP: metric (NFE) at budgets {BUDGETS}", flush=True)
        score = lambda x, mix=mix: metric(mix, x)                                 # noqa: E731
        runs = dict(ours_runs(vp, mix, z))
        runs.update(optimised_runs(vp, mix.score_fn(vp), z * vp.prior_std, z_cal * vp.prior_std, sigma_min_eps(vp),
                                   costs, f"{mname}, VP"))
        x_ref = ours_runs(vp, mix, z, {"x": ("dpm_solver", {"order": 3})})["ours x"](1000)[0]
        runs["exact flow (dpm_solver 3, 1000 NFE)"] = lambda b: (x_ref, b)     # the metric's floor
        if K is not None:
            runs.update(kdiff_runs(K, mix, z, sig_max))
        if not args.no_peers:
            runs.update(diffusers_runs(mix, z))
        table = evaluate(runs, score)
        curves[f"{mname}, VP"] = table
        md.append(to_markdown(f"{mname}, VP", table))
        for sname, sde in [("sub-VP", ss.SubVPSDE(0.1, 20.0)), ("VE", ss.VESDE(0.001, 50.0))]:
            print(f"-- {mname}, {sname} (ours)", flush=True)
            runs = dict(ours_runs(sde, mix, z))
            runs.update(optimised_runs(sde, mix.score_fn(sde), z * sde.prior_std, z_cal * sde.prior_std,
                                       sigma_min_eps(sde), costs, f"{mname}, {sname}",
                                       {"unipc": ("unipc", {}), "bns": ("bns", {})}))
            md.append(to_markdown(f"{mname}, {sname} (ours only)", evaluate(runs, score)))
    if "flow" in args.only:
        flow_md, flow_curves = flow_tables(args, z, z_cal, costs)
        md += flow_md
        curves.update(flow_curves)
    if "digits" in args.only:
        print("\n== digits U-Net: digits FID (NFE)", flush=True)
        p, table = digits_table(args, costs)
        curves[p.name] = table
        md.append(to_markdown(f"{p.name}, digits FID of {args.n_digits} samples", table))
    if "noise" in args.only:
        print("\n== the metric's noise", flush=True)
        md.append(noise_markdown(args.n))
    load = os.getloadavg()
    text = ("\n\n".join(md) + ("\n\n**CPU seconds of each fit** (sampler runs in brackets), calibration error "
                                "of the default grid → the optimised one (the fit's loss against the reference: "
                                "geometric-mean RMSE; for bns the mean RMSE):\n\n" + costs_markdown(costs)
                                if costs else "")
            + f"\n\n({args.n} samples, seed {args.seed}, calibration seed {args.seed + 1}; "
            f"{time.time() - start:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU; load average "
            f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores)")
    print("\n" + text)
    OUT.mkdir(exist_ok=True)
    name = "fast_samplers" if len(args.only) == 4 else f"fast_samplers_{'_'.join(args.only)}"
    (OUT / f"{name}.md").write_text(
        "# Fast samplers at equal NFE: fixed and optimised time grids\n\nMixtures (exact scores): TV of mode weights "
        "+ weight-averaged KL(fitted Gaussian || true mode); digits: digits FID; lower is better; ✓ = at least as "
        "good as the best peer; (n) = NFE actually used when below the budget; [opt] = a grid from "
        "`scoresde.optimize_steps` fitted on held-out calibration draws.\n\n" + text + "\n")
    if curves:
        plot(curves, OUT / f"{name}.png")


def combine() -> None:
    """results/fast_samplers.md from the parts' files (their headers dropped but the first)."""
    parts = [OUT / f"fast_samplers_{p}.md" for p in ("mixtures", "flow", "digits", "noise")]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise SystemExit(f"--combine: missing {', '.join(missing)}; run --only mixtures / flow / digits / noise first")
    texts = [p.read_text() for p in parts]
    body = [texts[0]] + [t.split("\n\n", 2)[2] for t in texts[1:]]                 # drop title + legend
    (OUT / "fast_samplers.md").write_text("\n".join(body))
    print(f"wrote {OUT / 'fast_samplers.md'}")


def plot(curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 5.5), squeeze=False)
    for ax, (mname, table) in zip(axes[0], curves.items()):
        for k, row in table.items():
            if k.startswith(("exact", "floor")):
                ax.axhline(row[0][0], color="k", lw=0.8, ls=":", label=k)
                continue
            if "[opt]" in k:
                style = dict(lw=2.4, marker="o")
            elif k.startswith("ours"):
                style = dict(lw=1.0, marker=".", alpha=0.7)
            else:
                style = dict(lw=0.8, ls="--", marker=".", alpha=0.6)
            ax.plot([n for _, n in row], [max(m, 1e-4) for m, _ in row], label=k, **style)
        ax.set(xscale="log", yscale="log", xlabel="score evaluations (NFE)", title=mname,
               ylabel="digits FID" if "digits" in mname else "TV + KL (lower is better)")
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
