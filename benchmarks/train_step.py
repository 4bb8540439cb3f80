"""Milliseconds per training step of the default job, this checkout against another, side by side.

    python benchmarks/train_step.py --other /path/to/older/checkout --steps 1500 --rounds 3

Each round trains the embedded default (`scoresde train`: the four-mode mixture, MLP, VP SDE) for
`--steps` steps in a fresh process for each checkout, alternating, and reads the step times from
the run's log.csv (the first `--skip` steps, start-up and warm-up, are left out; no sampling).
Printed: median ms/step of each checkout and their ratio. Machines here are shared: rely on the ratio.
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
import sys, scoresde as ss
ss.train({"train": {"steps": %d, "log_every": %d, "ckpt_every": 100000, "progress": False},
          "sample": {"n": 1, "steps": 1}, "device": "cpu"}, out=sys.argv[1])
print(ss.__file__)
"""


def ms_per_step(src: str, steps: int, skip: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-c", _RUN % (steps, skip), os.path.join(d, "run")], env=env, cwd=d,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-2000:])
        assert p.stdout.strip().startswith(src), f"imported {p.stdout.strip()}, expected a file under {src}"
        with open(os.path.join(d, "run", "log.csv")) as f:
            t = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    return 1000 * (t[steps] - t[skip]) / (steps - skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="another checkout of scoresde (e.g. a git worktree of main)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--skip", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    here, other = [], []
    for r in range(a.rounds):
        other.append(ms_per_step(os.path.abspath(a.other), a.steps, a.skip))
        here.append(ms_per_step(ROOT, a.steps, a.skip))
        print(f"round {r + 1}: other {other[-1]:.3f} ms/step, this checkout {here[-1]:.3f} ms/step", flush=True)
    mo, mh = statistics.median(other), statistics.median(here)
    print(f"\n| checkout | ms/step (median of {a.rounds}) |\n|---|---:|\n| {a.other} | {mo:.3f} |\n| {ROOT} | {mh:.3f} |")
    print(f"\nratio this / other: {mh / mo:.3f}")


if __name__ == "__main__":
    main()
