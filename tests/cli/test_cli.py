"""The scoresde command line: CliRunner for options and every bad input, real subprocesses end to end."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from scoresde.runs.checkpoint import list_checkpoints
from helpers import ENV, TINY, one_line_error, run  # noqa: F401  (ENV, run: used below and by other files)

def test_dry_run_resolves_file_and_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsteps = 77\nlr = 0.5\n[model]\nwidth = 32\n')
    r = run("train", "--config", str(cfg), "--lr", "0.25", "--set", "sample.n=9", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "steps = 77" in r.output and "lr = 0.25" in r.output and "width = 32" in r.output and "n = 9" in r.output
    assert "--dry-run" in run("train", "--help").output and "[default: (mlp)]" in run("train", "--help").output


def test_bad_inputs_give_one_line(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((4, 2), np.nan))
    np.save(tmp_path / "rank1.npy", np.zeros(4))
    (tmp_path / "bad.toml").write_text("[train\nsteps = ")
    (tmp_path / "keys.toml").write_text("[train]\nlrr = 1\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "corrupt" / "checkpoints").mkdir(parents=True)
    (tmp_path / "corrupt" / "checkpoints" / "ckpt_00000001.safetensors").write_bytes(b"junk")
    out = str(tmp_path / "o")
    one_line_error(run("train", "--data", str(tmp_path / "missing.npy"), "--out", out), "no such file")
    one_line_error(run("train", "--data", str(tmp_path / "nan.npy"), "--out", out, *TINY), "NaN or infinite")
    one_line_error(run("train", "--data", str(tmp_path / "rank1.npy"), "--out", out, *TINY), "at least 2 dims")
    one_line_error(run("train", "--config", str(tmp_path / "bad.toml")), "not valid TOML")
    one_line_error(run("train", "--config", str(tmp_path / "keys.toml")), "unknown key 'train.lrr'")
    one_line_error(run("train", "--config", str(tmp_path / "none.toml")), "does not exist")
    one_line_error(run("train", "--lr", "-1"), "--lr")
    one_line_error(run("train", "--set", "train.lr=-0.1", "--dry-run"), "train.lr: expected > 0")
    one_line_error(run("train", "--sde", "foo"), "'foo' is not one of")
    one_line_error(run("train", "--set", "model.name=foo", "--dry-run"), "unknown model 'foo'")
    one_line_error(run("train", "--set", "sample.sampler=foo", "--dry-run"), "unknown sampler 'foo'")
    one_line_error(run("train", "--resume", "--out", str(tmp_path / "ckpt")), "holds no checkpoints")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "ckpt"), "--out", out + ".npy"), "holds no checkpoints")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "corrupt"), "--out", out + ".png"), "corrupt")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "ckpt"), "--out", out + ".txt"), ".npy or .png")
    assert not os.path.exists(out)


def test_train_sample_likelihood_and_no_overwrite(tmp_path):
    out = str(tmp_path / "run")
    r = run("train", "--out", out, "--data", "moons", *TINY)
    assert r.exit_code == 0, r.output
    assert "run directory" in r.output and os.path.exists(os.path.join(out, "samples.png"))
    assert os.path.exists(os.path.join(out, "config.toml")) and os.path.exists(os.path.join(out, "log.csv"))
    ckpts = list_checkpoints(out)
    before = [open(p, "rb").read() for _, p in ckpts]
    one_line_error(run("train", "--out", out, *TINY), "already holds checkpoints")
    assert [open(p, "rb").read() for _, p in list_checkpoints(out)] == before
    r = run("train", "--out", out, "--resume", "--steps", "9", "--no-progress")
    assert r.exit_code == 0 and list_checkpoints(out)[-1][0] == 9, r.output
    r = run("sample", "--checkpoint", out, "--sampler", "ddim", "--steps", "4", "--n", "11", "--out",
            str(tmp_path / "s.npy"))
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npy").shape == (11, 2)
    r = run("likelihood", "--checkpoint", out, "--data", "moons", "--n", "8")
    assert r.exit_code == 0 and "bits/dim" in r.output, r.output


def test_real_subprocess_and_sigterm(tmp_path):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "scoresde", "train", "--out", out, *TINY, "--steps", "100000",
            "--set", "train.ckpt_every=50", "--set", "train.log_every=10"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 60
        while not list_checkpoints(out) and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert list_checkpoints(out), "no checkpoint appeared"
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    last = list_checkpoints(out)[-1][0]
    assert f"at step {last}" in stderr
    r = subprocess.run([sys.executable, "-m", "scoresde", "train", "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Error: data" in r.stderr
