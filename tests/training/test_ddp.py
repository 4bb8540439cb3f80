"""Data-parallel training under torchrun (gloo, 2 CPU processes): ranks end with identical weights."""
import os
import signal
import subprocess
import sys

import pytest

from scoresde.runs.checkpoint import list_checkpoints

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed next to python")
def test_two_ranks_end_identical(tmp_path):
    out = str(tmp_path / "ddp")
    args = [TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "scoresde", "train", "--out", out,
            "--device", "cpu", "--no-progress", "--steps", "20", "--batch-size", "16", "--set", "data.size=300",
            "--set", "model.width=16", "--set", "model.depth=1", "--set", "model.embed_dim=8",
            "--set", "sample.n=16", "--set", "sample.steps=3", "--set", "train.ckpt_every=10",
            "--debug-dump-weights"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = p.communicate(timeout=240)
    finally:                              # never leave ranks behind (they would wait on each other)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, stderr[-3000:]
    h0, h1 = (open(os.path.join(out, f"weights_rank{i}.sha256")).read() for i in (0, 1))
    assert len(h0) == 64 and h0 == h1
    assert [s for s, _ in list_checkpoints(out)] == [10, 20]
    assert stdout.count("run directory") == 1          # only rank 0 reports (and writes)
    # each rank drew its own batches: a one-process run with the same seed ends elsewhere
    from scoresde.runs.checkpoint import read_checkpoint
    _, meta = read_checkpoint(list_checkpoints(out)[-1][1])
    assert meta["world_size"] == 2
