"""`scoresde train --resume` says where it resumed from, what changed versus the checkpoint's config, and refuses
to redo a finished run (exit 0, nothing trained, sampled or written)."""
import logging
import os

from scoresde.runs.checkpoint import list_checkpoints
from helpers import TINY, run


def test_resume_reports_its_start_its_steps_and_changed_values(tmp_path, caplog):
    out = str(tmp_path / "run")
    assert run("train", "--out", out, *TINY).exit_code == 0
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        r = run("train", "--out", out, "--resume", "--steps", "9", "--no-progress", "--batch-size", "8",
                "--set", "train.lr=0.001")
    assert r.exit_code == 0, r.output
    assert "resumed at step 6 from " in r.output and "ckpt_00000006.safetensors" in r.output
    assert "trained 3 more steps (to step 9) in" in r.output and list_checkpoints(out)[-1][0] == 9
    changed = [rec.getMessage() for rec in caplog.records if "changed versus the checkpoint" in rec.getMessage()]
    assert changed == ["resume: changed versus the checkpoint's config: train.batch_size 16 -> 8, "
                       "train.lr 0.002 -> 0.001"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scoresde"):      # the same values again: nothing to report
        assert run("train", "--out", out, "--resume", "--steps", "12", "--no-progress").exit_code == 0
    assert not [rec for rec in caplog.records if "changed" in rec.getMessage()]


def test_resume_past_the_steps_is_a_no_op_that_says_so(tmp_path):
    out = str(tmp_path / "run")
    assert run("train", "--out", out, *TINY).exit_code == 0
    files = ("metrics.json", "log.csv", "config.toml", "samples.npy", "samples.png")
    before = {f: open(os.path.join(out, f), "rb").read() for f in files}
    ckpts = list_checkpoints(out)
    for args in (["--steps", "3"], ["--steps", "6"], []):
        r = run("train", "--out", out, "--resume", "--no-progress", "--batch-size", "8", *args)
        assert r.exit_code == 0, r.output
        assert r.output.startswith(f"nothing to do: {os.path.abspath(out)} is at step 6 (")
        assert ("--steps " + args[1] if args else "its train.steps") in r.output and "trained 0" not in r.output
        assert r.output.count("\n") == 1
    assert {f: open(os.path.join(out, f), "rb").read() for f in files} == before
    assert list_checkpoints(out) == ckpts
