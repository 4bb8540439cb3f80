"""Post-hoc EMA in training runs: train.phema_std / phema_every, the snapshots in RUN/phema, exact resume,
`scoresde.runs.phema.reconstruct_run` and the `scoresde ema` command."""
import os

import pytest
import torch

import scoresde as ss
from helpers import one_line_error, run
from scoresde.models.phema import Snapshot, reconstruct
from scoresde.runs.checkpoint import read_checkpoint, unflatten_state
from scoresde.runs.phema import list_snapshots, load_snapshots, reconstruct_run, save_snapshot
from scoresde.training.config import resolve

TINY = {"data": {"size": 400}, "model": {"width": 16, "depth": 1, "embed_dim": 8},
        "train": {"steps": 40, "batch_size": 32, "warmup": 5, "log_every": 5, "ckpt_every": 20, "progress": False,
                  "keep": 2, "phema_std": [0.05, 0.1], "phema_every": 10},
        "sample": {"n": 16, "steps": 3}, "device": "cpu"}


def _cfg(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def _snaps(run_dir):
    return {(s.step, s.sigma_rel): s.shadow for s in load_snapshots(run_dir)}


def test_snapshots_are_written_and_resume_exactly(tmp_path):
    full = ss.train(_cfg(), out=str(tmp_path / "full"))
    steps = [s for s, _ in list_snapshots(full.run_dir)]
    assert steps == [10, 10, 20, 20, 30, 30, 40, 40]
    # the checkpoint holds the trackers: their last state is the last snapshot
    tensors, meta = read_checkpoint(full.checkpoint)
    states = unflatten_state(meta["state"]["phema"], tensors)
    snaps = _snaps(full.run_dir)
    assert [s["sigma_rel"] for s in states] == [0.05, 0.1] and all(s["num_updates"] == 40 for s in states)
    for s in states:
        assert all(torch.equal(v, snaps[(40, s["sigma_rel"])][k]) for k, v in s["shadow"].items())
    # half, then resume: the same snapshots bit for bit; one newer than the checkpoint (a lost future) is replaced
    half = ss.train(_cfg(steps=20), out=str(tmp_path / "half"))
    bogus = {k: torch.zeros_like(v) for k, v in snaps[(30, 0.1)].items()}
    save_snapshot(half.run_dir, Snapshot(30, 0.1, bogus))
    ss.train(_cfg(), out=half.run_dir, resume=True)
    resumed = _snaps(half.run_dir)
    assert resumed.keys() == snaps.keys()
    assert all(torch.equal(resumed[key][k], v[k]) for key, v in snaps.items() for k in v)


def test_resume_with_other_phema_std_is_refused(tmp_path):
    ss.train(_cfg(steps=20), out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"config train.phema_std: the checkpoint of step 20 tracked power-function "
                                         r"EMAs \[0.05, 0.1\], the config asks for \[0.05, 0.2\]"):
        ss.train(_cfg(steps=30, phema_std=[0.05, 0.2]), out=str(tmp_path / "a"), resume=True)
    ss.train(_cfg(steps=20, phema_std=[]), out=str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "b" / "phema")
    with pytest.raises(ValueError, match="tracked power-function EMAs none"):
        ss.train(_cfg(steps=30), out=str(tmp_path / "b"), resume=True)


@pytest.mark.parametrize("value, match", [
    ([0.5], r"config train.phema_std: expected a relative EMA length in \(0, 0.2887\]"),
    (["a"], "config train.phema_std: expected a number"),
    ([0.1, 0.1001], "config train.phema_std: expected distinct values"),
    (0.1, "config train.phema_std: expected a list"),
])
def test_bad_phema_config_is_refused(value, match):
    with pytest.raises(ValueError, match=match):
        resolve({"train": {"phema_std": value}})
    with pytest.raises(ValueError, match="config train.phema_every: expected >= 0"):
        resolve({"train": {"phema_every": -1}})


def test_reconstruction_checkpoint_loads_and_cli(tmp_path):
    out = ss.train(_cfg(), out=str(tmp_path / "r"))
    (path, info), = reconstruct_run(out.run_dir, [0.1])
    assert path == os.path.join(out.run_dir, "phema", "ema-0.100-00000040.safetensors")
    assert info["step"] == 40 and info["profile_error"] < 1e-6        # a stored profile: exact
    model, _ = ss.load(path)
    stored = _snaps(out.run_dir)[(40, 0.1)]
    named = dict(model.named_parameters())
    assert all(torch.allclose(named[k], v, rtol=0, atol=1e-6) for k, v in stored.items())
    # another length, at an earlier step: the weights are sum_i x_i theta_i of the snapshots up to it
    (path, info), = reconstruct_run(out.run_dir, [0.08], step=30, out=str(tmp_path / "x.safetensors"))
    expect, _ = reconstruct(load_snapshots(out.run_dir), 0.08, 30)
    named = dict(ss.load(path)[0].named_parameters())
    assert path.endswith("x.safetensors") and len(info["snapshots"]) == 6
    assert all(torch.equal(named[k].detach(), v) for k, v in expect.items())

    r = run("ema", out.run_dir, "--sigma-rel", "0.08", "--sigma-rel", "0.15", "--out", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("sigma_rel 0.080 at step 40: ") and "from 8 snapshots" in lines[0]
    assert sorted(os.listdir(tmp_path / "d")) == ["ema-0.080-00000040.safetensors", "ema-0.150-00000040.safetensors"]
    r = run("sample", "--checkpoint", str(tmp_path / "d" / "ema-0.080-00000040.safetensors"), "--n", "8",
            "--steps", "3", "--sampler", "edm", "--set", "sample.S_churn=5", "--out", str(tmp_path / "s.npy"),
            "--device", "cpu")
    assert r.exit_code == 0 and os.path.isfile(tmp_path / "s.npy"), r.output


def test_ema_command_errors_are_one_line(tmp_path):
    plain = ss.train(_cfg(steps=10, phema_std=[]), out=str(tmp_path / "plain"))
    one_line_error(run("ema", plain.run_dir, "--sigma-rel", "0.1"), "no power-function EMA snapshots")
    out = ss.train(_cfg(steps=10), out=str(tmp_path / "p"))
    one_line_error(run("ema", out.run_dir, "--sigma-rel", "0.4"), "--sigma-rel: expected a relative EMA length")
    one_line_error(run("ema", out.run_dir, "--sigma-rel", "0"), "--sigma-rel: expected")
    one_line_error(run("ema", out.run_dir, "--sigma-rel", "0.1", "--step", "50"),
                   "--step: expected a training step in [1, 10]")
    one_line_error(run("ema", out.run_dir, "--sigma-rel", "0.1", "--sigma-rel", "0.2", "--out",
                       str(tmp_path / "one.safetensors")), "--out: one file")
    one_line_error(run("ema", str(tmp_path / "nope"), "--sigma-rel", "0.1"), "no such directory")
    one_line_error(run("ema", out.run_dir), "Missing option '--sigma-rel'")
