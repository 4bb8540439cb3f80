"""Reference outputs of class-conditional scoresde at commit 362a524 (before the `Cond` conditioning
object), pinned so that old label checkpoints and the label API are shown to load, sample and train
bit for bit as they did (tests/models/test_conditioning.py recomputes them with the same functions below).

Everything here goes through the public API with class labels only (`ss.train`, `ss.load`,
`ss.classifier_free_score(model, y, w)`, `model(x, t, y=labels)`, `model.net(x, c, labels)`,
`ss.conditional_dsm_loss`, `ss.label_dropout`, `scoresde sample --label --guidance`), on the CPU with
one thread and seeded `torch.Generator`s:

  cond_run   a class-conditional run (2-D four-mode mixture, MLP with num_classes = "auto" = 4, VP,
             label dropout 0.2), 20 steps: tests/data/cond_run (config.toml, checkpoints)
  outputs    guided samples of that run's EMA model (3 samplers x 3 weights, labels per row and one
             int label), ScoreModel forwards with and without labels, raw network calls, the
             conditional loss and the label dropout, and the CLI's guided samples

Regenerate (only with the code the pins were made from, commit 362a524 plus its scoresde/runs):

    git worktree add /tmp/scoresde-362a524 362a524    # and scoresde/runs as of that tree
    PYTHONPATH=/tmp/scoresde-362a524 python tests/data/cond_pinned/make_cond_pinned.py --run

Run it as a script: `python -m` / `python -c` would import the checkout's scoresde instead of PYTHONPATH's.
"""
from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

import scoresde as ss

# checkpoints of format 1 (this fixture) load only with the opt-in where the installed scoresde has it
UNVERIFIED = {"verify": False} if "verify" in inspect.signature(ss.load).parameters else {}

HERE = os.path.dirname(os.path.abspath(__file__))
COND_RUN = os.path.join(HERE, "..", "cond_run")
OUTPUTS = os.path.join(HERE, "outputs.safetensors")
COND_RUN_CONFIG = {
    "data": {"size": 2000},
    "model": {"num_classes": "auto", "width": 32, "depth": 2, "embed_dim": 16},
    "train": {"steps": 20, "batch_size": 64, "warmup": 5, "log_every": 5, "ckpt_every": 20, "keep": 1,
              "p_uncond": 0.2, "progress": False},
    "sample": {"n": 16, "steps": 10},
    "device": "cpu",
}
COND_RUN_OUT = "/tmp/scoresde_cond_run"
KEEP = ("config.toml", "checkpoints")
K, B = 4, 16


def train_cond_run(out: str) -> None:
    torch.set_num_threads(1)
    ss.train(COND_RUN_CONFIG, out=out)


def guided_samples(run_dir: str) -> dict[str, torch.Tensor]:
    """CFG samples of the run's model with labels per row (and one int label), every sampler x weight."""
    torch.set_num_threads(1)
    model, sde = ss.load(run_dir, **UNVERIFIED)
    y = torch.arange(B) % K
    out = {}
    for sampler in ("euler_maruyama", "ddim", "dpm_solver"):
        for w in (0.0, 1.0, 3.0):
            g = torch.Generator().manual_seed(11)
            out[f"cfg/{sampler}/{w:g}"] = sde.sample(ss.classifier_free_score(model, y, w), B, sampler=sampler,
                                                     steps=8, generator=g)
    out["cfg/int_label"] = sde.sample(ss.classifier_free_score(model, 2, 2.0), B, sampler="ddim", steps=8,
                                      generator=torch.Generator().manual_seed(12))
    return out


def forwards(run_dir: str) -> dict[str, torch.Tensor]:
    """ScoreModel and raw network calls with labels, the null label and none; loss and dropout."""
    torch.set_num_threads(1)
    model, sde = ss.load(run_dir, **UNVERIFIED)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(B, 2, generator=g), 0.05 + 0.9 * torch.rand(B, generator=g)
    y = torch.arange(B) % (K + 1)                                     # includes the null label K
    c = 999 * t
    out = {"forward/score_y": model(x, t, y=y), "forward/score_none": model(x, t), "forward/score_pos": model(x, t, y),
           "forward/eps_y": model.eps(x, t, y=y), "forward/x0_y": model.x0(x, t, y=y),
           "forward/net_y": model.net(x, c, y), "forward/net_none": model.net(x, c)}
    x0 = torch.randn(B, 2, generator=g)
    labels = torch.arange(B) % K
    out["loss/conditional_dsm"] = ss.conditional_dsm_loss(model, sde, x0, labels, p_uncond=0.3,
                                                          generator=torch.Generator().manual_seed(4), per_sample=True)
    out["loss/label_dropout"] = ss.label_dropout(labels, 0.3, K, torch.Generator().manual_seed(5))
    return {k: v.detach() for k, v in out.items()}


def cli_samples(run_dir: str, tmp: str) -> dict[str, torch.Tensor]:
    """`scoresde sample --label 1 --guidance 2.5` of the run (and --label 3 at the default w = 1)."""
    from click.testing import CliRunner
    from scoresde.cli.main import cli
    torch.set_num_threads(1)
    out = {}
    for label, w in (("1", "2.5"), ("3", None)):
        path = os.path.join(tmp, f"l{label}.npy")
        args = ["sample", "--checkpoint", run_dir, "--n", "8", "--steps", "5", "--device", "cpu", "--label", label,
                *(["--guidance", w] if w else []), "--out", path, *(["--allow-unverified"] if UNVERIFIED else [])]
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        out[f"cli/label_{label}"] = torch.from_numpy(np.load(path))
    return out


def compute_all(run_dir: str, tmp: str) -> dict[str, torch.Tensor]:
    return {**guided_samples(run_dir), **forwards(run_dir), **cli_samples(run_dir, tmp)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="store_true", help="also rewrite tests/data/cond_run")
    a = p.parse_args()
    print(f"scoresde from {os.path.dirname(ss.__file__)}", file=sys.stderr)
    if a.run:
        shutil.rmtree(COND_RUN_OUT, ignore_errors=True)
        train_cond_run(COND_RUN_OUT)
        shutil.rmtree(COND_RUN, ignore_errors=True)
        shutil.copytree(COND_RUN_OUT, COND_RUN,      # only KEEP from the top of the run directory
                        ignore=lambda d, names: [n for n in names if n not in KEEP] if d == COND_RUN_OUT else [])
    with tempfile.TemporaryDirectory() as tmp:
        tensors = compute_all(COND_RUN, tmp)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUTPUTS,
              metadata={"scoresde": os.path.dirname(ss.__file__)})
    print(f"wrote {len(tensors)} tensors to {OUTPUTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
