"""Helpers shared by tests in several folders: the CLI runner and its one-line-error check, a tiny
training config for CLI runs, and a wall-clock guard for tests of hangs (tests/ is on sys.path:
conftest.py)."""
import contextlib
import os
import signal

import numpy as np
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.cli.main import cli

TINY = ["--device", "cpu", "--no-progress", "--steps", "6", "--batch-size", "16", "--set", "data.size=200",
        "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8", "--set", "sample.n=16",
        "--set", "sample.steps=3", "--set", "train.ckpt_every=3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    """`scoresde ARGS` through click's CliRunner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, list(args))


def one_line_error(r, match):
    """A CLI result that failed with exactly one `Error: ...` line containing `match`, and no traceback."""
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], r.stderr


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail with TimeoutError when the block runs longer than `seconds` (main thread, Unix): a guard against
    hangs (a NaN in an adaptive solver), never a speed assertion."""
    def handler(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def tiny_digits16_autoencoder(tmp_path):
    """(path of 64 16x16 digits as .npy, run directory of a 1-step tiny autoencoder trained on them) for latent tests."""
    x = torch.nn.functional.avg_pool2d(ss.load_dataset("digits32").x[:64], 2)          # (64, 1, 16, 16)
    np.save(tmp_path / "d16.npy", x.numpy())
    ss.train({"task": "autoencoder", "vae": {"ch": 4, "ch_mult": [1, 2], "num_groups": 2, "mid_attn": False},
              "train": {"steps": 1, "batch_size": 4, "progress": False}, "sample": {"n": 4}, "eval": {"n": 4},
              "device": "cpu"}, data=x, out=str(tmp_path / "ae"))
    return tmp_path / "d16.npy", tmp_path / "ae"
