"""The training engine: a minimal task through it, legacy run directories, locks, digests, full disks,
hostile metadata and evaluation hooks."""
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch

import scoresde as ss
from scoresde.runs.checkpoint import CheckpointError, list_checkpoints, read_checkpoint, save_checkpoint
from scoresde._common.files import StorageError
from scoresde.training.engine import Engine
from scoresde.training.resolve import resolve_run
from scoresde.training.tasks.base import TASKS, Task
from problems import TESTS

HERE = str(TESTS)
LEGACY = os.path.join(HERE, "fixtures", "legacy_run")
TINY = {"data": {"size": 400}, "model": {"width": 16, "depth": 1, "embed_dim": 8},
        "train": {"steps": 20, "batch_size": 32, "warmup": 5, "log_every": 5, "ckpt_every": 10, "progress": False,
                  "keep": 1},
        "sample": {"n": 32, "steps": 5}, "device": "cpu"}


def tiny(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def assert_same_tensors(a_path, b_path):
    a, _ = read_checkpoint(a_path, verify=False)         # b may be legacy_run's (format version 1)
    b, _ = read_checkpoint(b_path, verify=False)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# --- the interface is enough: a task of a few lines ---------------------------------------------------------
class MeanTask(Task):
    """Fit the mean of a 3-D Gaussian by noisy least squares."""
    name = "test_mean"
    example_numel = 3

    def prepare(self):
        self.x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0)) + 2.0

    def build(self, device):
        self.net = torch.nn.Module()
        self.net.mu = torch.nn.Parameter(torch.randn(3))
        return self.net.to(device)

    def loss(self, model, data_gen, noise_gen):
        if getattr(self, "kill_at", None) == len(self.calls):      # a SIGTERM arrives during this step
            os.kill(os.getpid(), signal.SIGTERM)
        self.calls.append(1)
        idx = torch.randint(len(self.x), (16,), generator=data_gen)
        z = torch.randn(16, 3, generator=noise_gen)
        return ((self.x[idx] + 0.1 * z - model.mu) ** 2).mean()

    def meta(self):
        return {"model": {}, "sde": {}, "data_shape": [3]}


if "test_mean" not in TASKS:
    TASKS.register("test_mean")(MeanTask)


def run_mean(out, steps, resume=False, kill_at=None):
    cfg, cls, state = resolve_run({"train": {"steps": steps, "ckpt_every": 25, "warmup": 0, "progress": False,
                                             "lr": 0.05, "ema_decay": 0.9},
                                   "device": "cpu"}, out=str(out), resume=resume, task="test_mean")
    task = cls(cfg)
    task.calls, task.kill_at = [], kill_at
    return Engine(task, cfg, state).run()


def test_a_minimal_task_trains_checkpoints_resumes_and_stops(tmp_path):
    full = run_mean(tmp_path / "full", 100)
    assert full.step == 100 and torch.allclose(full.model.mu, torch.full((3,), 2.0), atol=0.3)
    run_mean(tmp_path / "half", 50)
    resumed = run_mean(tmp_path / "half", 100, resume=True)
    assert resumed.resumed_from.endswith("ckpt_00000050.safetensors")
    assert_same_tensors(full.checkpoint, resumed.checkpoint)
    stopped = run_mean(tmp_path / "stop", 100, kill_at=30)        # SIGTERM during step 31
    assert stopped.interrupted == "SIGTERM" and stopped.step == 31
    assert [s for s, _ in list_checkpoints(tmp_path / "stop")] == [25, 31]
    _, meta = read_checkpoint(stopped.checkpoint)
    assert meta["task"] == "test_mean" and meta["step"] == 31
    resumed = run_mean(tmp_path / "stop", 100, resume=True)
    assert_same_tensors(full.checkpoint, resumed.checkpoint)


# --- run directories written before the engine -------------------------------------------------------------
def test_engine_reproduces_and_resumes_a_run_written_before_it(tmp_path):
    new = ss.train(tiny(), out=str(tmp_path / "new"))
    assert_same_tensors(new.checkpoint, os.path.join(LEGACY, "checkpoints", "ckpt_00000020.safetensors"))
    old = tmp_path / "old"
    shutil.copytree(LEGACY, old)
    model, sde = ss.load(old, verify=False)
    assert isinstance(sde, ss.VPSDE) and model(torch.zeros(2, 2), 0.5).shape == (2, 2)
    resumed = ss.train({"train": {"steps": 40}}, out=str(old), resume=True, verify=False)
    fresh = ss.train(tiny(steps=40), out=str(tmp_path / "fresh"))
    assert_same_tensors(fresh.checkpoint, resumed.checkpoint)


# --- one run per directory ------------------------------------------------------------------------------------
def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "scoresde", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


TINY_ARGS = ["--device", "cpu", "--no-progress", "--set", "data.size=300", "--set", "model.width=16",
             "--set", "model.depth=1", "--set", "sample.n=16", "--set", "sample.steps=3"]


def test_second_run_into_a_live_directory_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    out = str(tmp_path / "run")
    first = _cli("train", "--out", out, *TINY_ARGS, "--steps", "1000000", "--set", "train.ckpt_every=50")
    try:
        deadline = time.time() + 60
        while not list_checkpoints(out) and time.time() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(out), first.stderr.read() if first.poll() is not None else "no checkpoint in 60 s"
        for args in (["--resume"], ["--steps", "5"]):
            second = _cli("train", "--out", out, *TINY_ARGS, *args)
            _, err = second.communicate(timeout=120)
            assert second.returncode == 1 and "Traceback" not in err, err
            assert err.strip().count("\n") == 0 and f"is in use by pid {first.pid}" in err, err
        rows = open(os.path.join(out, "log.csv")).read().split()[1:]
        steps = [int(r.split(",")[0]) for r in rows]
        assert steps == sorted(set(steps))                           # one writer: no duplicated rows
    finally:
        first.kill()                                                  # kill -9: the lock file stays behind
        first.wait()
    assert os.path.exists(os.path.join(out, ".lock"))
    third = _cli("train", "--out", out, *TINY_ARGS, "--resume", "--steps", str(list_checkpoints(out)[-1][0] + 5))
    stdout, err = third.communicate(timeout=120)
    assert third.returncode == 0, err


# --- checkpoints prove their integrity -----------------------------------------------------------------------
def flip_bytes(path, group, n):
    """Flip `n` bytes in the middle of the first tensor of `group` (e.g. "model", "ema")."""
    data = bytearray(open(path, "rb").read())
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    key = sorted(k for k in header if k.startswith(group + "/") and header[k]["data_offsets"][1]
                 - header[k]["data_offsets"][0] >= n)[0]
    lo, hi = header[key]["data_offsets"]
    start = 8 + hlen + (lo + hi) // 2 - n // 2
    for i in range(start, start + n):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("group,n", [("model", 64), ("ema", 128)])
def test_flipped_bytes_are_refused_and_resume_falls_back(tmp_path, group, n, capsys):
    from click.testing import CliRunner
    from scoresde.cli.main import cli
    ss.train(tiny(steps=20, keep=2), out=str(tmp_path))
    (_, older), (_, newest) = list_checkpoints(tmp_path)
    flip_bytes(newest, group, n)
    with pytest.raises(CheckpointError, match=f"ckpt_00000020.*damaged.*{group}"):
        ss.load(tmp_path)
    r = CliRunner().invoke(cli, ["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.npy"),
                                 "--steps", "3", "--n", "4"], standalone_mode=False)
    assert r.exit_code != 0 or r.exception is not None
    assert not (tmp_path / "x.npy").exists()
    resumed = ss.train({"train": {"steps": 30}}, out=str(tmp_path), resume=True)
    assert resumed.resumed_from == older
    fresh = ss.train(tiny(steps=30, keep=2), out=str(tmp_path / "fresh"))
    assert_same_tensors(fresh.checkpoint, resumed.checkpoint)


def test_full_disk_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ss.train(tiny(steps=10), out=str(tmp_path))
    (_, path), = list_checkpoints(tmp_path)
    before = open(path, "rb").read()
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 1000:                # the checkpoint, not a small file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"^no space left on device while writing .*ckpt_00000020"):
        ss.train({"train": {"steps": 20}}, out=str(tmp_path), resume=True)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [(10, path)] and open(path, "rb").read() == before
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".tmp")]
    # a temporary left by a write that was killed is removed at the next start
    stale = tmp_path / "checkpoints" / ".ckpt_00000015.safetensors.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    ss.train({"train": {"steps": 20}}, out=str(tmp_path), resume=True)
    assert not stale.exists()


def test_full_disk_in_the_cli_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from scoresde.cli.main import cli
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "r"), "--steps", "5", *TINY_ARGS],
                           standalone_mode=False)
    assert isinstance(r.exception, SystemExit) and r.exception.code == 1
    assert "no space left on device while writing" in r.output and "Traceback" not in r.output


# --- metadata is checked before it is trusted ----------------------------------------------------------------
def rewrite_meta(path, edit):
    tensors, meta = read_checkpoint(path)
    edit(meta)
    save_checkpoint(path, tensors, meta)


_PEAK = """
import resource, sys, scoresde as ss
try:
    ss.load(sys.argv[1])
except ss.CheckpointError as e:
    print("ERR", str(e))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:    # this process image's own peak (VmHWM): ru_maxrss also carries the parent's peak across fork + exec
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print("PEAK_MB", peak / 1024)
"""


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["model"]["config"].update(width=60000), "shape"),
    (lambda m: m["model"]["config"].update(data_shape=[1000000]), "shape"),
    (lambda m: m.update(step="12x"), "'step' must be an integer"),
    (lambda m: m.update(data_shape=[2, -1]), "'data_shape' must be a list of positive integers"),
])
def test_hostile_metadata_is_refused_before_allocating(tmp_path, edit, match):
    r = ss.train(tiny(steps=5), out=str(tmp_path))
    rewrite_meta(r.checkpoint, edit)
    p = subprocess.run([sys.executable, "-c", _PEAK, r.checkpoint], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "ERR" in p.stdout and match in p.stdout and "ckpt_00000005" in p.stdout, p.stdout + p.stderr
    peak = float(p.stdout.split("PEAK_MB")[1])
    assert peak < 1500, f"peak RSS {peak:.0f} MB: the metadata sized an allocation"


# --- evaluation during training -------------------------------------------------------------------------------
def test_eval_every_logs_metrics_and_keeps_the_best_checkpoint(tmp_path):
    r = ss.train({**tiny(steps=20, eval_every=10), "eval": {"n": 200}}, out=str(tmp_path))
    lines = open(tmp_path / "log.csv").read().split()
    assert lines[0].endswith("mode_weight_tv,within_mode_std_error")
    evals = [row.split(",") for row in lines[1:] if row.split(",")[-1]]
    assert [int(e[0]) for e in evals] == [10, 20] and all(float(e[-2]) >= 0 for e in evals)
    best = json.loads(open(tmp_path / "metrics.json").read())["best"]
    assert best["step"] in (10, 20) and best["mode_weight_tv"] == min(float(e[-2]) for e in evals)
    _, meta = read_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert meta["step"] == best["step"]
    model, _ = ss.load(tmp_path / "checkpoints" / "best.safetensors")
    assert r.step == 20 and model(torch.zeros(1, 2), 0.5).shape == (1, 2)


def test_digits_runs_evaluate_digits_fid(tmp_path):
    cfg = {"data": {"name": "digits"}, "device": "cpu", "eval": {"n": 70},
           "model": {"name": "ddpm_unet", "ch": 8, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [],
                     "num_groups": 4},
           "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "log_every": 2, "progress": False},
           "sample": {"n": 8, "steps": 3}}
    ss.train(cfg, out=str(tmp_path))
    lines = open(tmp_path / "log.csv").read().split()
    assert lines[0].endswith(",fid,kid")
    fid = float(lines[-1].split(",")[-2])
    assert fid > 5                              # an untrained model is far from the data (floor ~2)
    assert json.loads(open(tmp_path / "metrics.json").read())["best"]["fid"] == pytest.approx(fid, rel=1e-5)
