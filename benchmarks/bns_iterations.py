"""The quality cost of fewer Adam steps in a bns fit (`optimize_steps(..., sampler="bns", iterations=...)`).

On the two 2-D mixtures of benchmarks/fast_samplers.py (VP, exact scores; its metric: TV of mode weights +
weighted KL of the fitted modes, 40000 samples, lower is better), "ours bns [opt]" is fitted with each
`--iterations` count (and optionally a fixed exploring learning rate, `--explore-lr`; default: the fit's own
rule) on the same 512 calibration draws, at 4, 5, 6, 8, 10 and 20 NFE; the CPU seconds of each fit beside.

    OMP_NUM_THREADS=1 python benchmarks/bns_iterations.py --iterations 1500 500 [--explore-lr 0.02]
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fast_samplers as fs  # noqa: E402
import scoresde as ss  # noqa: E402
import scoresde.samplers.optimize as optimize  # noqa: E402
from scoresde.sde.analytic import four_mode_mixture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, nargs="+", default=[1500, 500])
    ap.add_argument("--explore-lr", type=float, default=None)
    ap.add_argument("--n", type=int, default=40000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    vp = ss.VPSDE(0.1, 20.0)
    z = torch.randn(a.n, 2, generator=torch.Generator().manual_seed(0), dtype=fs.DTYPE)
    z_cal = torch.randn(512, 2, generator=torch.Generator().manual_seed(1), dtype=fs.DTYPE)
    if a.explore_lr is not None:
        optimize.fit_bns = functools.partial(optimize.fit_bns, explore_lr=a.explore_lr)
    print("| mixture | iterations | " + " | ".join(f"NFE {b}" for b in fs.BUDGETS) + " |")
    print("|---|---:|" + "---:|" * len(fs.BUDGETS))
    for its in a.iterations:
        for name, mix in [("four-mode", four_mode_mixture(0.1)), ("sharp", fs.sharp_mixture())]:
            costs: dict = {}
            runs = fs.optimised_runs(vp, mix.score_fn(vp), z * vp.prior_std, z_cal * vp.prior_std,
                                     fs.sigma_min_eps(vp), costs, name, {"bns": ("bns", {})}, iterations=its)
            cells = []
            for b in fs.BUDGETS:
                x, _ = runs["ours bns [opt]"](b)
                cells.append(f"{fs.metric(mix, x):.3g} ({costs[(name, 'bns', b)][0]:.0f} s)")
            print(f"| {name} | {its} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
