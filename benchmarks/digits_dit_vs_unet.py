"""DiT vs the DDPM U-Net on 8x8 digits at equal training time (Peebles & Xie 2023, arXiv:2212.09748;
Ho et al. 2020, arXiv:2006.11239).

The U-Net of configs/digits.toml trains for `--unet-steps`; the wall-clock time of its training
loop is the budget for the DiT of configs/digits_dit.toml, stopped (by a SIGTERM to itself, with a
checkpoint) when the budget is spent (both on 80 % of scikit-learn's digits, the first 20 %, 359
images, held out; same SDE, batch, seed, one CPU thread). Each model then draws `--n` samples with the same
sampler and seed; the metric is the Frechet distance to the held-out images in raw 64-pixel space
(as in benchmarks/samplers.py; lower is better), with its floor: as many training images against
the held-out ones.

    .venv/bin/python benchmarks/digits_dit_vs_unet.py                     # full budget: minutes
    .venv/bin/python benchmarks/digits_dit_vs_unet.py --unet-steps 300    # a short run

Writes benchmarks/results/digits_dit_vs_unet.{md,png} (the sample grids side by side).
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import scoresde as ss  # noqa: E402
from scoresde._common.toml import load_toml  # noqa: E402
from scoresde.nets import count_parameters  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import digits_fid  # noqa: E402


def train(config: str, steps: int | None, data: torch.Tensor, out: Path, progress: bool,
          budget: float | None = None) -> tuple[float, int, Path]:
    """Train `config` into `out` for `steps` steps, or until `budget` seconds have passed (a SIGTERM to
    this process, which ss.train answers by stopping at the next step with a checkpoint). Returns the
    seconds of the training loop (the log's clock at its last row), the steps done, and `out`."""
    cfg = load_toml(str(ROOT / "configs" / config))
    cfg.update(seed=0, device="cpu", threads=1)
    cfg["train"].update(steps=steps or 10**7, ckpt_every=steps or 10**7, log_every=10, progress=progress,
                        warmup=min(cfg["train"]["warmup"], steps or 10**7))
    cfg["sample"] = {"n": 4, "steps": 2, "sampler": "ddim"}        # end-of-run plot only; sampling is below
    timer = threading.Timer(budget, os.kill, (os.getpid(), signal.SIGTERM)) if budget else None
    if timer:
        timer.start()
    try:
        res = ss.train(cfg, data=data, out=str(out))
    finally:
        if timer:
            timer.cancel()
    with open(out / "log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return float(last["seconds"]), res.step, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unet-steps", type=int, default=1500, help="U-Net training steps (sets the time budget)")
    ap.add_argument("--n", type=int, default=359, help="samples per model (359 = the held-out set)")
    ap.add_argument("--sampler", default="euler_maruyama")
    ap.add_argument("--steps", type=int, default=200, help="sampler steps")
    ap.add_argument("--out", default="runs/digits_dit_vs_unet")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "digits_dit_vs_unet"))
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    if a.n < 64:
        ap.error(f"--n: expected >= 64 (the sample grids are 8 x 8), found {a.n}")
    torch.set_num_threads(1)
    x = ss.load_dataset("digits").x                                     # (1797, 1, 8, 8) in [-1, 1]
    n_test = len(x) // 5
    test, train_x = x[:n_test], x[n_test:]
    out = Path(a.out)
    t_unet, _, unet_dir = train("digits.toml", a.unet_steps, train_x, out / "unet", a.progress)
    t_dit, dit_steps, dit_dir = train("digits_dit.toml", None, train_x, out / "dit", a.progress, budget=t_unet)
    floor = digits_fid(train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:a.n]],
                             test)
    rows, grids = [], []
    for name, steps, secs, run in [("ddpm_unet", a.unet_steps, t_unet, unet_dir), ("dit", dit_steps, t_dit, dit_dir)]:
        model, sde = ss.load(run)
        start = time.perf_counter()
        s = sde.sample(model, a.n, sampler=a.sampler, steps=a.steps, generator=torch.Generator().manual_seed(1))
        t_s = time.perf_counter() - start
        fd = digits_fid(s, test)
        rows.append(f"| `{name}` | {count_parameters(model.net):,} | {steps} | {secs:.0f} | {fd:.2f} | {t_s:.1f} |")
        grids.append((name, s[:64]))
        print(rows[-1], flush=True)
    md = [f"# DiT vs U-Net on 8x8 digits at equal training time ({time.strftime('%Y-%m-%d')})", "",
          f"`python benchmarks/digits_dit_vs_unet.py --unet-steps {a.unet_steps}`: one CPU thread, batch 64, VP, "
          f"{a.n} samples ({a.sampler}, {a.steps} steps) vs the 359 held-out images; Frechet distance in "
          f"pixel space (lower is better; floor {floor:.2f} = {a.n} training images vs held-out).", "",
          "| model | params | train steps | train s | FD | sampling s |", "|---|---:|---:|---:|---:|---:|", *rows]
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".md").write_text("\n".join(md) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (name, s) in zip(axes, grids):
        cells = torch.nn.functional.pad(s.clamp(-1, 1)[:, 0], (0, 1, 0, 1), value=0.0)   # 9x9: a grey gap
        g = cells.reshape(8, 8, 9, 9).permute(0, 2, 1, 3).reshape(72, 72)             # 8 x 8 grid of images
        ax.imshow((g + 1) / 2, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(a.results + ".png", dpi=100)
    print("\n".join(md))


if __name__ == "__main__":
    main()
