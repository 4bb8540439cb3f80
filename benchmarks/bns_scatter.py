"""Five score evaluations on the two exact 2-D mixtures, seen: the best fixed grid, unipc on its fitted
grid and the fitted bespoke solver (bns), beside the converged probability flow.

Same problems, prior draws, calibration draws and metric as benchmarks/fast_samplers.py (VP, sigma~
from 152 to 0.002, 512 calibration draws of another seed). Writes benchmarks/results/bns_scatter.png
and prints the metric of each panel.

Run: `python benchmarks/bns_scatter.py [--n 40000] [--budget 5]` (about 2 CPU minutes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoresde as ss  # noqa: E402
from common import OUT, metric, sharp_mixture, sigma_min_eps  # noqa: E402
from scoresde.sde.analytic import four_mode_mixture


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--budget", type=int, default=5)
    ap.add_argument("--show", type=int, default=6000, help="points drawn per panel")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vp = ss.VPSDE(0.1, 20.0)
    eps = sigma_min_eps(vp)
    z = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(0)) * vp.prior_std
    z_cal = torch.randn(512, 2, generator=torch.Generator().manual_seed(1)) * vp.prior_std
    panels = {}
    for name, mix in [("four modes, std 0.1", four_mode_mixture(0.1)), ("six sharp modes, std 0.01-0.03",
                                                                        sharp_mixture())]:
        sf = mix.score_fn(vp)
        row = {"exact flow (1000 NFE)": vp.sample(sf, None, sampler="dpm_solver", order=3, steps=1000, x_init=z,
                                                  eps=eps)}
        row[f"deis 2, quadratic grid ({args.budget} NFE)"] = vp.sample(sf, None, sampler="deis", order=2,
                                                                      schedule="quadratic", steps=args.budget,
                                                                      x_init=z, eps=eps)
        c0 = time.process_time()
        grid = ss.optimize_steps(vp, sf, args.budget, sampler="unipc", calibration=z_cal, eps=eps)
        t_unipc = time.process_time() - c0
        row[f"unipc, fitted grid ({args.budget} NFE)"] = vp.sample(sf, None, sampler="unipc", times=grid, x_init=z)
        c0 = time.process_time()
        grid, info = ss.optimize_steps(vp, sf, args.budget, sampler="bns", calibration=z_cal, eps=eps,
                                       return_info=True)
        t_bns = time.process_time() - c0
        row[f"bns, fitted ({args.budget} NFE)"] = vp.sample(sf, None, sampler="bns", times=grid, x_init=z,
                                                           weights=info["weights"])
        print(f"{name}: fit CPU s unipc grid {t_unipc:.1f}, bns {t_bns:.1f}")
        panels[name] = {k: (x, metric(mix, x)) for k, x in row.items()}
        for k, (x, m) in panels[name].items():
            print(f"  {k:40s} {m:.4g}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = len(next(iter(panels.values())))
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.6 * cols, 3.7 * len(panels)), squeeze=False)
    for axrow, (name, row) in zip(axes, panels.items()):
        for ax, (k, (x, m)) in zip(axrow, row.items()):
            x = x[: args.show].double()
            ax.scatter(x[:, 0], x[:, 1], s=0.3, alpha=0.4, color="C0" if "exact" in k else "C3", rasterized=True)
            ax.set_title(f"{k}\nTV + KL {m:.3g}", fontsize=8)
            ax.set_xlim(-1.6, 1.6)
            ax.set_ylim(-1.6, 1.6)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
        axrow[0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / "bns_scatter.png", dpi=130)
    print(f"wrote {OUT / 'bns_scatter.png'}")


if __name__ == "__main__":
    main()
