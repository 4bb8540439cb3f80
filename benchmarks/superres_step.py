"""Process CPU seconds per training step of a cascade's stages and of the single-stage model they replace, with
the default networks `scoresde train` picks for them (batch 64, one thread).

    OMP_NUM_THREADS=1 python benchmarks/superres_step.py --steps 20

Rows: the 8x8 `digits` base; the 8 -> 32 `digits32` super-resolution stage (`model.image_shape = [1, 8, 8]`,
noise augmentation, and with blur); the same network without an image condition on digits32 (what the
condition adds: the 8x8 view, its augmentation and one more input channel); and the single-stage 32x32 model at
its default size (the network's own CIFAR-10 size, a few steps only). Each row builds the run's task as
`scoresde train` does and times `--steps` steps (loss, backward, Adam) after two warm-up steps, with
`time.process_time` (one thread: the process CPU seconds are the step's cost on one core).
"""
from __future__ import annotations

import argparse
import time

import torch

from scoresde.models.nets import count_parameters
from scoresde.training.config import resolve
from scoresde.training.tasks import TASKS

ROWS = [  # (name, config, steps factor)
    ("digits 8x8 base (default net)", {"data": {"name": "digits"}}, 1.0),
    ("digits32 SR 8->32 (default net, aug noise)", {"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8]}},
     1.0),
    ("digits32 SR 8->32, blur 1.0", {"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8]},
                                     "train": {"blur": 1.0}}, 1.0),
    ("digits32 same net, no condition", {"data": {"name": "digits32"}, "model": {
        "name": "ddpm_unet", "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8}}, 1.0),
    ("digits32 single stage (default net: CIFAR size)", {"data": {"name": "digits32"}, "model": {"name": "ddpm_unet"}},
     0.1),
]


def seconds_per_step(cfg: dict, steps: int) -> tuple[int, float]:
    cfg = resolve({**cfg, "device": "cpu", "train": {**cfg.get("train", {}), "batch_size": 64, "progress": False}})
    task = TASKS[cfg["task"]](cfg)
    task.prepare()
    torch.manual_seed(0)
    model = task.build(torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.process_time()
        loss = task.loss(model, data, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return count_parameters(model), (time.process_time() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | parameters | CPU s per step (batch 64) |\n|---|---:|---:|")
    for name, cfg, factor in ROWS:
        n, s = seconds_per_step(cfg, max(1, round(a.steps * factor)))
        print(f"| {name} | {n / 1e6:.2f}M | {s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
