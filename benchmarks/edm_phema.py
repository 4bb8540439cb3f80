"""EDM's stochastic sampler and post-hoc EMA (EDM2): two measured tables.

1. Post-hoc EMA reconstruction (`scoresde.models.phema`): a tiny MLP (8-16-3) whose weights take `--steps`
   random updates (noise plus a drift), with power-function EMAs of sigma_rel 0.05 and 0.10 snapshotted every
   `every` steps (EDM2's setting) and, alongside, EMAs of other lengths tracked directly. For each target length
   the table gives the largest relative error over the weight tensors, max_k ||w_rec - w_direct|| / ||w_direct||,
   the same relative to how far the target is from the nearest stored EMA (||w_rec - w_direct|| /
   ||w_stored - w_direct||, total over tensors), and the fitted profile's relative L2 error.
2. `edm` on the exact score of the four-mode 2-D mixture (VP(0.1, 20), denoise): the mixture metric
   (TV of mode weights + fitted-Gaussian KL, benchmarks/common.py) of `--n` samples by S_churn and steps, with the
   NFE counted; S_churn = 0 is `heun`. S_tmin = 0.05, S_tmax = 50, S_noise = 1 (the defaults).

Run: `python benchmarks/edm_phema.py [--n 20000] [--out benchmarks/results/edm_phema.md]` (about a minute on 2
CPU cores; `--quick` for a smoke run).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, metric  # noqa: E402

import scoresde as ss  # noqa: E402
from scoresde.models.phema import PowerFunctionEMA, reconstruct  # noqa: E402
from scoresde.samplers.core import sample  # noqa: E402
from scoresde.sde.analytic import four_mode_mixture  # noqa: E402

STORED = (0.05, 0.10)
TARGETS = (0.02, 0.03, 0.05, 0.08, 0.12, 0.15, 0.2, 0.25)


def phema_table(steps: int, intervals: tuple[int, ...]) -> str:
    rows = ["| every | snapshots | sigma_rel | max rel. weight error | rel. to stored-EMA distance | profile error |",
            "|---:|---:|---:|---:|---:|---:|"]
    for every in intervals:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        stored = [PowerFunctionEMA(net, s) for s in STORED]
        direct = {s: PowerFunctionEMA(net, s) for s in TARGETS}
        g = torch.Generator().manual_seed(1)
        drift = {k: torch.randn(p.shape, generator=g) for k, p in net.named_parameters()}
        snaps = []
        for step in range(1, steps + 1):
            with torch.no_grad():
                for k, p in net.named_parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=g) + 0.002 * drift[k])
            for e in stored + list(direct.values()):
                e.update(net)
            if step % every == 0 or step == steps:
                snaps += [e.snapshot() for e in stored]
        for s, e in direct.items():
            w, info = reconstruct(snaps, s)
            rel = max(float((w[k] - e.shadow[k]).norm() / e.shadow[k].norm()) for k in w)
            near = min(stored, key=lambda x: abs(x.sigma_rel - s)).shadow
            err = math.sqrt(sum(float((w[k] - e.shadow[k]).square().sum()) for k in w))
            dist = math.sqrt(sum(float((near[k] - e.shadow[k]).square().sum()) for k in w))
            ratio = f"{err / dist:.2e}" if dist > 0 else "(stored)"
            rows.append(f"| {every} | {len(snaps)} | {s:.3f} | {rel:.2e} | {ratio} | {info['profile_error']:.2e} |")
    return "\n".join(rows)


def edm_table(n: int, steps_list: tuple[int, ...], churns: tuple[float, ...]) -> str:
    mix, sde = four_mode_mixture(), ss.VPSDE(0.1, 20.0)
    head = "| S_churn | " + " | ".join(f"{s} steps" for s in steps_list) + " |"
    rows = [head, "|---:|" + "---:|" * len(steps_list)]
    nfes = []
    for churn in churns:
        cells = []
        for steps in steps_list:
            calls = [0]

            def score(x, t):
                calls[0] += 1
                return mix.score(x, t, sde)
            x = sample(sde, score, (n, 2), sampler="edm", steps=steps, dtype=torch.float64, S_churn=churn,
                       generator=torch.Generator().manual_seed(3))
            cells.append(f"{metric(mix, x):.4f}")
            if churn == churns[0]:
                nfes.append(calls[0])
        rows.append(f"| {churn:g} | " + " | ".join(cells) + " |")
    rows.append("| NFE | " + " | ".join(str(v) for v in nfes) + " |")
    return "\n".join(rows)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="samples per cell of the edm table")
    ap.add_argument("--steps", type=int, default=400, help="training steps of the post-hoc EMA problem")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small n, few cells")
    ap.add_argument("--out", default=str(OUT / "edm_phema.md"), help="markdown file to write ('' for none)")
    args = ap.parse_args(argv)
    start = time.process_time()
    intervals = (50,) if args.quick else (5, 10, 25, 50)
    ph = phema_table(100 if args.quick else args.steps, intervals)
    steps_list, churns = ((5, 10), (0.0, 10.0)) if args.quick else ((10, 20, 40, 80, 160), (0.0, 5.0, 10.0, 20.0, 40.0))
    edm = edm_table(500 if args.quick else args.n, steps_list, churns)
    text = (f"## Post-hoc EMA: reconstructed vs directly tracked ({args.steps if not args.quick else 100} random "
            f"updates, stored sigma_rel {STORED})\n\n{ph}\n\n## edm on the four-mode mixture (metric, lower is "
            f"better; n = {args.n if not args.quick else 500})\n\n{edm}\n\n"
            f"CPU seconds: {time.process_time() - start:.1f}\n")
    print(text)
    if args.out and not args.quick:
        Path(args.out).write_text("# EDM's stochastic sampler and post-hoc EMA\n\n" + text)
    return text


if __name__ == "__main__":
    main()
