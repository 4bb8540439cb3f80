"""Milliseconds per training step of the default job and per step of a 200-step sampling loop, this
checkout against another, side by side.

    python benchmarks/train_step.py --other /path/to/older/checkout --steps 1500 --rounds 3

Each round trains the embedded default (`scoresde train`: the four-mode mixture, MLP, VP SDE) for
`--steps` steps in a fresh process for each checkout, alternating, and reads the step times from
the run's log.csv (the first `--skip` steps, start-up and warm-up, are left out; no sampling).
Then, in the same process, the trained model samples `--n` points with `euler_maruyama` for 200 steps
(the default sampler and steps of the final draw), timed with `perf_counter` after one warm-up loop.
Printed: median ms/step of each checkout and their ratios. Machines here are shared: rely on the ratios.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = """
import sys, time, torch, scoresde as ss
ss.train({"train": {"steps": %d, "log_every": %d, "ckpt_every": 100000, "progress": False},
          "sample": {"n": 1, "steps": 1}, "device": "cpu"}, out=sys.argv[1])
model, sde = ss.load(sys.argv[1], **({"verify": False} if "verify" in ss.load.__code__.co_varnames else {}))
best = float("inf")
for _ in range(3):      # warm-up, then the best of two timed loops
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    sde.sample(model, %d, sampler="euler_maruyama", steps=200, generator=g)
    best = min(best, time.perf_counter() - t0) if _ else best
print(ss.__file__)
print(1000 * best / 200)
"""


def ms_per_step(src: str, steps: int, skip: int, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-c", _RUN % (steps, skip, n), os.path.join(d, "run")], env=env, cwd=d,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-2000:])
        path, sample_ms = p.stdout.strip().splitlines()[-2:]
        assert path.startswith(src), f"imported {path}, expected a file under {src}"
        with open(os.path.join(d, "run", "log.csv")) as f:
            t = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    return 1000 * (t[steps] - t[skip]) / (steps - skip), float(sample_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="another checkout of scoresde (e.g. a git worktree of main)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--skip", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=4000, help="samples drawn by the 200-step loop")
    a = ap.parse_args()
    here, other = [], []
    for r in range(a.rounds):
        other.append(ms_per_step(os.path.abspath(a.other), a.steps, a.skip, a.n))
        here.append(ms_per_step(ROOT, a.steps, a.skip, a.n))
        print(f"round {r + 1}: other {other[-1][0]:.3f} / {other[-1][1]:.3f} ms, "
              f"this checkout {here[-1][0]:.3f} / {here[-1][1]:.3f} ms (train step / sampling step)", flush=True)
    mo = [statistics.median(v[i] for v in other) for i in (0, 1)]
    mh = [statistics.median(v[i] for v in here) for i in (0, 1)]
    print(f"\n| checkout | ms per training step | ms per sampling step (n={a.n}, 200 steps) |\n|---|---:|---:|")
    print(f"| {a.other} | {mo[0]:.3f} | {mo[1]:.3f} |\n| {ROOT} | {mh[0]:.3f} | {mh[1]:.3f} |")
    print(f"\nratio this / other: training {mh[0] / mo[0]:.3f}, sampling {mh[1] / mo[1]:.3f} (median of {a.rounds})")


if __name__ == "__main__":
    main()
