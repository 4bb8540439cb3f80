"""Discrete vs continuous samplers: quality against score evaluations (NFE) and wall time.

Discrete samplers: DDPM/SMLD ancestral sampling (Ho et al. 2020, arXiv:2006.11239; Song & Ermon
2019, arXiv:1907.05600), DDIM (Song et al. 2021, arXiv:2010.02502), SMLD annealed Langevin
dynamics. Continuous ones (Song et al. 2021, arXiv:2011.13456): Euler-Maruyama and reverse
diffusion on the reverse SDE, predictor-corrector (reverse diffusion + Langevin, 2 NFE per step),
the probability-flow ODE with adaptive RK45 (its NFE set by sweeping rtol = atol), Heun (Karras et
al. 2022, arXiv:2206.00364), DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095) and DEIS (Zhang &
Chen 2022, arXiv:2204.13902). Every sampler runs through `scoresde.samplers.sample` with its
defaults (final time eps = 1e-3 for VP, 1e-5 for VE, `denoise=True`) and the most steps whose NFE,
as the sampler declares it (`SamplerInfo.nfe`), fits the budget (pc: budget / 2 steps, heun:
(budget + 1) / 2); all runs of a problem start from the same seed. The table's kind is the
sampler's declared kind; the discrete-time models' own samplers are marked and drawn dashed. Problems:

1. exact score, four-mode 2-D mixture (means (+-1, +-1), std 0.1, weights 0.1-0.4), VP(0.1, 20)
   and VE(0.01, 50): no network, so only the integrator differs;
2. trained 2-D model: the default MLP (3 x 128, eps-parameterised, VP) trained on `mixture`
   (samples of that same mixture), so the same metric applies against the true mixture;
3. trained `digits` model: the small DDPM U-Net of configs/digits.toml (VP), trained on 80% of
   scikit-learn's 8x8 digits, the first 20% (359 images) held out (`scoresde.metrics.digits_split`).

Metrics, lower is better. Mixtures: `benchmarks/common.metric`, the total variation of the
mode weights + sum_k w_k KL(N(fitted_k) || N(true_k)) (each sample goes to its most likely mode,
a full-covariance Gaussian is fitted per mode, KL in closed form). Digits: digits FID, the Frechet
distance |mu_s - mu_t|^2 + tr(C_s + C_t - 2 (C_s C_t)^1/2) of Gaussians fitted to the 64 penultimate
features of the shipped digits classifier (`scoresde.metrics`, the part Inception-v3 plays for FID
on natural images), samples against the held-out images. With a few hundred samples in 64 dims
the covariance estimates are noisy and FID is biased upwards, so each table has a floor row: the
metric of exact mixture draws, or the FID of as many training images against the held-out ones
(FID needs more samples than its 64 feature dimensions). Wall time is one
`sample` call on one CPU thread (exact score: the mixture's score costs little, so the time shows
the sampler's own work; trained models: the network dominates).

    .venv/bin/python benchmarks/samplers.py            # about 15 min on one core
    .venv/bin/python benchmarks/samplers.py --quick    # seconds (tests)
    .venv/bin/python benchmarks/samplers.py --only exact --n 20000

Trained models are cached in `--cache` (default runs/bench_samplers/, git-ignored) and reused when
they have the requested number of steps; `--retrain` trains them afresh. Writes
benchmarks/results/samplers.{md,png}. The default budgets are cut for the trained models (their
forward passes dominate the run time): 10-200 NFE for the 2-D model, 10-100 for digits.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import scoresde as ss
from scoresde.sde.analytic import four_mode_mixture
from scoresde.samplers.core import sample, sampler_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OUT, ROOT, Problem, cached_run, digits_problem, metric  # noqa: E402


# label -> (sampler, options); the steps that spend a budget are in `steps_for`, the kind in `kind`
SAMPLERS = {
    "ancestral": ("ancestral", {}),
    "ddim": ("ddim", {}),
    "annealed_langevin": ("annealed_langevin", {}),
    "euler_maruyama": ("euler_maruyama", {}),
    "reverse_diffusion": ("reverse_diffusion", {}),
    "pc (rd + langevin)": ("pc", {}),
    "ode (RK45)": ("ode", {}),
    "heun": ("heun", {}),
    "dpm_solver (2M)": ("dpm_solver", {}),
    "deis": ("deis", {}),
}
# the samplers of the discrete-time models this benchmark sets against the continuous ones
DISCRETE = {"ancestral": "DDPM / SMLD", "ddim": "DDIM", "annealed_langevin": "SMLD"}
ODE_TOLS = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)


def steps_for(sampler: str, budget: int, **options) -> int:
    """The most steps whose declared NFE is at most `budget` (at least 1): pc spends 2 per step, heun 2 steps - 1."""
    return sampler_info(sampler).steps_for(budget, **options)


def kind(label: str) -> str:
    """The kind column: the sampler's declared kind, "adaptive" when the solver sets its NFE, the discrete origin."""
    sampler, opts = SAMPLERS[label]
    info = sampler_info(sampler)
    return (info.kind + (", adaptive" if info.nfe(1, **opts) is None else "")
            + (f", discrete ({DISCRETE[sampler]})" if sampler in DISCRETE else ""))


# --- metrics ------------------------------------------------------------------------------------


# --- problems -----------------------------------------------------------------------------------


def exact_problems(n: int, budgets, tols, seed: int) -> list[Problem]:
    mix = four_mode_mixture()
    floor = metric(mix, mix.sample(n, torch.Generator().manual_seed(seed + 1)))
    return [Problem(f"exact score, {label}", sde, mix.score_fn(sde), (n, 2), lambda x: metric(mix, x),
                    budgets, tols, floor, f"{n} exact draws")
            for label, sde in [("VP", ss.VPSDE(0.1, 20.0)), ("VE", ss.VESDE(0.01, 50.0))]]


def mixture_problem(args, budgets, tols) -> Problem:
    mix = four_mode_mixture()
    cfg = {"seed": 0, "device": "cpu", "data": {"name": "mixture"}, "train": {"warmup": 500},
           "sample": {"n": 16, "steps": 20}}
    run = cached_run(Path(args.cache) / "mixture", args.mixture_steps, cfg, None, args.retrain, args.progress)
    model, sde = ss.load(run)
    floor = metric(mix, mix.sample(args.n_trained, torch.Generator().manual_seed(args.seed + 1)))
    return Problem(f"trained MLP on mixture ({args.mixture_steps} steps), VP", sde, model, (args.n_trained, 2),
                   lambda x: metric(mix, x), budgets, tols, floor, f"{args.n_trained} exact draws")


# --- runs ---------------------------------------------------------------------------------------
def run_one(p: Problem, sampler: str, opts: dict, steps: int, seed: int) -> tuple[float, int, float]:
    """(metric, NFE, wall seconds) of one `sample` call."""
    g = torch.Generator().manual_seed(seed)
    try:
        x, info = sample(p.sde, p.score_fn, p.shape, sampler=sampler, steps=steps, generator=g, return_info=True,
                         **opts)
    except RuntimeError:                                   # e.g. a diverging ODE at a loose tolerance
        return float("inf"), 0, float("nan")
    except ValueError as e:                                # a discrete chain undefined with so few steps
        if not str(e).startswith("steps:"):
            raise
        return float("nan"), 0, float("nan")
    return p.score(x), info["nfe"], info["seconds"]


def evaluate(p: Problem, labels, seed: int, bar) -> dict[str, list]:
    """label -> [(metric, NFE, seconds) per budget]; the ODE's tolerance runs go to the nearest budget."""
    table = {}
    for label in labels:
        sampler, opts = SAMPLERS[label]
        if sampler == "ode":
            runs = []
            for tol in p.tols:
                bar.set_postfix_str(f"{p.name[:24]} | {label} tol={tol:g}")
                runs.append(run_one(p, sampler, {**opts, "rtol": tol, "atol": tol}, 1, seed) + (tol,))
                bar.update()
            table[label] = place_by_nfe(runs, p.budgets)
            continue
        row = []
        for b in p.budgets:
            bar.set_postfix_str(f"{p.name[:24]} | {label} NFE={b}")
            m, nfe, sec = run_one(p, sampler, opts, steps_for(sampler, b, **opts), seed)
            if nfe > b:
                raise RuntimeError(f"{label} used {nfe} > {b} score evaluations")
            row.append((m, nfe, sec))
            bar.update()
        table[label] = row
    return table


def place_by_nfe(runs, budgets) -> list:
    """Put each (metric, NFE, seconds, tol) run in the budget column nearest in log NFE (closest wins)."""
    row: list = [None] * len(budgets)
    best = [math.inf] * len(budgets)
    for m, nfe, sec, tol in runs:
        if nfe <= 0:
            continue
        j = min(range(len(budgets)), key=lambda k: abs(math.log(nfe / budgets[k])))
        d = abs(math.log(nfe / budgets[j]))
        if d < best[j] and d < math.log(2.5):
            row[j], best[j] = (m, nfe, sec), d
    return row


# --- output -------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    if math.isnan(v):
        return "undef."
    if not math.isfinite(v):
        return "inf"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}"


def to_markdown(p: Problem, table: dict) -> str:
    lines = [f"**{p.name}** (metric / wall seconds; (n) = NFE used when not the budget)", "",
             "| sampler | kind | " + " | ".join(f"NFE {b}" for b in p.budgets) + " |",
             "|---|---|" + "---:|" * len(p.budgets)]
    for label, row in table.items():
        cells = []
        for b, cell in zip(p.budgets, row):
            if cell is None:
                cells.append("–")
                continue
            m, nfe, sec = cell
            if math.isnan(m):                              # refused: the discrete chain needs more steps
                cells.append("undef.")
                continue
            cells.append(f"{_fmt(m)} / {sec:.2f}s" + ("" if nfe == b else f" ({nfe})"))
        lines.append(f"| {label} | {kind(label)} | " + " | ".join(cells) + " |")
    lines.append(f"| *floor: {p.floor_label}* | | " + " | ".join(_fmt(p.floor) for _ in p.budgets) + " |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 9), squeeze=False)
    colors = dict(zip(SAMPLERS, plt.get_cmap("tab10").colors))
    for col, (p, table) in enumerate(results):
        for row, (xlabel, xi) in enumerate([("score evaluations (NFE)", 1), ("wall seconds (1 CPU thread)", 2)]):
            ax = axes[row, col]
            for label, cells in table.items():
                pts = [(c[xi], c[0]) for c in cells if c is not None and math.isfinite(c[0]) and c[xi] > 0]
                if pts:
                    style = "--" if SAMPLERS[label][0] in DISCRETE else "-"
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=colors[label], label=label)
            ax.axhline(p.floor, color="k", lw=0.8, ls=":", label="floor")
            ax.set(xscale="log", yscale="log", xlabel=xlabel, title=p.name if row == 0 else "",
                   ylabel="digits FID" if "digits" in p.name else "TV + KL")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=["exact", "mixture", "digits"], default=["exact", "mixture", "digits"])
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    ap.add_argument("--n", type=int, default=10000, help="samples per run on the exact problems")
    ap.add_argument("--n-trained", type=int, default=4000, help="samples per run of the trained 2-D model")
    ap.add_argument("--n-digits", type=int, default=256, help="samples per run of the digits model")
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500, 1000])
    ap.add_argument("--trained-budgets", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    ap.add_argument("--digits-budgets", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--mixture-steps", type=int, default=4000, help="training steps of the 2-D MLP")
    ap.add_argument("--digits-steps", type=int, default=1500, help="training steps of the digits U-Net")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench_samplers"), help="run directories of the models")
    ap.add_argument("--retrain", action="store_true", help="train the models afresh")
    ap.add_argument("--out-dir", default=str(OUT), help="where samplers.{md,png} go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.n_trained, args.n_digits = 2000, 1000, 80        # digits FID needs N > 64
        args.budgets, args.trained_budgets, args.digits_budgets = [10, 20], [10], [10]
        args.mixture_steps, args.digits_steps = 50, 2
    torch.set_num_threads(1)
    start = time.time()
    tols = ODE_TOLS if not args.quick else (1e-1,)
    problems = []
    if "exact" in args.only:
        problems += exact_problems(args.n, args.budgets, tols, args.seed)
    if "mixture" in args.only:
        problems.append(mixture_problem(args, args.trained_budgets, tols[:6]))
    if "digits" in args.only:
        problems.append(digits_problem(args, args.digits_budgets, tuple(t for t in tols if t >= 1e-2)))
    total = sum(len(p.tols) if SAMPLERS[s][0] == "ode" else len(p.budgets) for p in problems for s in args.samplers)
    results = []
    with tqdm(total=total, desc="samplers", dynamic_ncols=True, disable=not args.progress) as bar:
        for p in problems:
            results.append((p, evaluate(p, args.samplers, args.seed, bar)))
    head = (f"torch {torch.__version__}, {platform.machine()}, 1 CPU thread; exact problems {args.n} samples, "
            f"trained 2-D {args.n_trained}, digits {args.n_digits}; seed {args.seed}; "
            f"{time.time() - start:.0f} s in all.")
    text = head + "\n\n" + "\n\n".join(to_markdown(p, t) for p, t in results)
    print("\n" + text, flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samplers.md").write_text(
        "# Discrete vs continuous samplers: quality vs NFE and wall time\n\n"
        "Lower is better. Mixtures: TV of mode weights + weight-averaged KL(fitted Gaussian || true mode). "
        "Digits: digits FID (64 features of the shipped digits classifier) against the 359 held-out images. "
        "ode (RK45) is swept over "
        "rtol = atol; each run sits in the column nearest its NFE. See the docstring of "
        "benchmarks/samplers.py for the set-up.\n\n" + text + "\n")
    plot(results, out / "samplers.png")
    return text


if __name__ == "__main__":
    main()
