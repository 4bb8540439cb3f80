"""Issue 27, the file-system and integrity half: each test reproduces an attack of the second reliability round
and asserts its outcome (one `Error:` line and a non-zero exit, nothing already written lost).

Read-only file systems and full disks are simulated by monkeypatching `os.open` / `os.mkdir` / `os.write`
(tests may run as root, where a chmod-ed directory does not refuse writes).
"""
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde._common.files import StorageError, atomic_write_bytes
from scoresde.cli.main import cli
from scoresde.runs.checkpoint import (CheckpointError, CheckpointNameError, UnverifiedCheckpointError,
                                      list_checkpoints, read_checkpoint)
from scoresde.runs.directory import append_log
from problems import TESTS

HERE = str(TESTS)
LEGACY = os.path.join(HERE, "fixtures", "legacy_run")          # format version 1, no digests at all
MAIN_RUN = os.path.join(HERE, "fixtures", "main_run")          # format version 1, tensor digests only
TINY = {"data": {"size": 300}, "model": {"width": 16, "depth": 1, "embed_dim": 8},
        "train": {"steps": 10, "batch_size": 32, "warmup": 5, "log_every": 5, "ckpt_every": 5, "progress": False,
                  "keep": 3},
        "sample": {"n": 16, "steps": 3}, "device": "cpu"}
TINY_ARGS = ["--device", "cpu", "--no-progress", "--batch-size", "32", "--set", "data.size=300",
             "--set", "model.width=16", "--set", "model.depth=1", "--set", "model.embed_dim=8",
             "--set", "sample.n=16", "--set", "sample.steps=3", "--set", "train.log_every=5",
             "--set", "train.ckpt_every=5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, *match):
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    bars = ("it/s]", "s/it]", "%|")                          # a sampler's progress bar may come first
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip() and not any(b in ln for b in bars)]
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    assert all(m in lines[0] for m in match), r.stderr
    return lines[0]


def log_steps(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        return [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]


def edit_header(path, edit):
    """Rewrite a safetensors file's header metadata with `edit(metadata)` and nothing else: the digests
    written with it are kept, as an attacker editing the JSON would keep them."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def edit_meta(path, edit):
    def f(md):
        meta = json.loads(md["meta"])
        edit(meta)
        md["meta"] = json.dumps(meta)
    edit_header(path, f)


# --- 1. the digest covers the metadata; a file without one is refused unless opted in --------------------------
@pytest.mark.parametrize("edit", [
    lambda m: m.update(step=m["step"] + 400),
    lambda m: m["sde"]["config"].update(beta_max=90.0),
    lambda m: m["config"]["train"].update(lr=0.5),
    lambda m: m["state"]["ema"].update(decay=0.111),
], ids=["step", "beta_max", "lr", "ema_decay"])
def test_edited_metadata_is_refused(tmp_path, edit):
    r = ss.train(tiny(), out=str(tmp_path / "run"))
    edit_meta(r.checkpoint, edit)
    for verify in (True, False):                            # the opt-in never skips a digest the file has
        with pytest.raises(CheckpointError, match="ckpt_00000010.*damaged: the digest of its metadata"):
            ss.load(r.checkpoint, verify=verify)
    one_line_error(run("sample", "--checkpoint", r.checkpoint, "--n", 4, "--steps", 2, "--out", tmp_path / "x.npy"),
                   "ckpt_00000010", "digest of its metadata")
    assert not (tmp_path / "x.npy").exists()


def test_a_removed_digest_is_refused_unless_opted_in(tmp_path):
    """The attack: rename the "digests" key (one byte) and flip EMA bytes; `sample` must not exit 0."""
    r = ss.train(tiny(), out=str(tmp_path / "run"))
    good = ss.load(r.checkpoint)[0].state_dict()
    edit_header(r.checkpoint, lambda md: md.update(digestz=md.pop("digests")))
    with pytest.raises(UnverifiedCheckpointError, match=r"unverified, digest missing \(digests of format version 2"):
        ss.load(r.checkpoint)
    out = tmp_path / "x.npy"
    err = one_line_error(run("sample", "--checkpoint", tmp_path / "run", "--n", 4, "--steps", 2, "--out", out),
                         "digest missing", "--allow-unverified")
    assert not out.exists() and "ckpt_00000010" in err
    # the user opts in: the file loads as it is (its metadata digest no longer covers the renamed entry)
    edit_header(r.checkpoint, lambda md: md.pop("meta_digest"))
    model, _ = ss.load(r.checkpoint, verify=False)
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    r2 = run("sample", "--checkpoint", tmp_path / "run", "--n", 4, "--steps", 2, "--out", out, "--allow-unverified")
    assert r2.exit_code == 0 and out.exists(), r2.output


@pytest.mark.parametrize("fixture,why", [(LEGACY, "written before digests (format version 1)"),
                                         (MAIN_RUN, "written before metadata digests (format version 1)")])
def test_format_version_1_is_refused_by_default_and_loads_as_before_when_opted_in(tmp_path, fixture, why):
    with pytest.raises(UnverifiedCheckpointError, match=r"unverified, " + why.replace("(", r"\(").replace(")", r"\)")):
        ss.load(fixture)
    out = tmp_path / "x.npy"
    one_line_error(run("sample", "--checkpoint", fixture, "--n", 4, "--steps", 2, "--out", out), why,
                   "--allow-unverified")
    one_line_error(run("likelihood", "--checkpoint", fixture, "--data", "mixture", "--n", 4), why)
    copy = tmp_path / "run"
    shutil.copytree(fixture, copy)
    one_line_error(run("optimize-steps", "--checkpoint", copy, "--budget", 3), why)
    one_line_error(run("train", "--out", copy, "--resume", "--steps", 25, *TINY_ARGS), why, "--allow-unverified")
    assert sorted(os.listdir(copy / "checkpoints")) == sorted(os.listdir(os.path.join(fixture, "checkpoints")))
    r = run("sample", "--checkpoint", fixture, "--n", 4, "--steps", 2, "--out", out, "--allow-unverified")
    assert r.exit_code == 0 and out.exists(), r.output
    r = run("likelihood", "--checkpoint", fixture, "--data", "mixture", "--n", 4, "--allow-unverified")
    assert r.exit_code == 0 and "bits/dim" in r.output, r.output
    resumed = ss.train({"train": {"steps": list_checkpoints(copy)[-1][0] + 5}}, out=str(copy), resume=True,
                       verify=False)
    assert read_checkpoint(resumed.checkpoint)[1]["step"] == resumed.step          # written as version 2


# --- 7. a checkpoint's step matches its name ---------------------------------------------------------------------
def test_a_checkpoint_named_after_another_step_or_linked_to_another_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    ss.train(tiny(), out=str(run_dir))
    ckpts = run_dir / "checkpoints"
    os.symlink("ckpt_00000010.safetensors", ckpts / "ckpt_00000015.safetensors")
    with pytest.raises(CheckpointNameError, match="says step 10, its name step 15"):
        ss.load(run_dir)
    one_line_error(run("train", "--out", run_dir, "--resume", "--steps", 20, *TINY_ARGS), "ckpt_00000015",
                   "says step 10, its name step 15")
    assert log_steps(run_dir) == [5, 10]                     # resume did not restart anywhere
    other = tmp_path / "other"
    ss.train(tiny(steps=15), out=str(other))
    os.unlink(ckpts / "ckpt_00000015.safetensors")
    os.symlink(other / "checkpoints" / "ckpt_00000015.safetensors", ckpts / "ckpt_00000015.safetensors")
    with pytest.raises(CheckpointNameError, match="a link to .*other.*not a checkpoint of this run"):
        ss.load(run_dir)
    one_line_error(run("sample", "--checkpoint", run_dir, "--n", 4, "--out", tmp_path / "x.npy"), "a link to")
    os.unlink(ckpts / "ckpt_00000015.safetensors")
    shutil.copy(ckpts / "ckpt_00000010.safetensors", ckpts / "ckpt_00000015.safetensors")     # a renamed copy
    with pytest.raises(CheckpointNameError, match="its name step 15"):
        ss.train({"train": {"steps": 20}}, out=str(run_dir), resume=True)


# --- 4. no duplicate log rows ------------------------------------------------------------------------------------
def test_a_run_killed_before_its_first_checkpoint_then_rerun_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "scoresde", "train", "--out", str(out), *TINY_ARGS,
                          "--steps", "1000000", "--set", "train.ckpt_every=1000000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not (os.path.exists(out / "log.csv") and len(log_steps(out)) >= 3):
            time.sleep(0.2)
        assert len(log_steps(out)) >= 3
    finally:
        p.kill()                                             # kill -9: no checkpoint, a log of 3+ rows
        p.wait()
    assert list_checkpoints(out) == []
    r = run("train", "--out", out, "--steps", 20, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    assert log_steps(out) == [5, 10, 15, 20]


def test_resume_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    ss.train(tiny(steps=20, ckpt_every=10), out=str(tmp_path))
    os.unlink(tmp_path / "checkpoints" / "ckpt_00000020.safetensors")     # killed after logging 15, 20
    with open(tmp_path / "log.csv", "ab") as f:
        f.write(b"25,0.5,0.1")                                             # and in the middle of a row
    ss.train({"train": {"steps": 30}}, out=str(tmp_path), resume=True)
    assert log_steps(tmp_path) == [5, 10, 15, 20, 25, 30]


def test_the_log_is_appended_all_or_nothing(tmp_path, monkeypatch):
    """ENOSPC at the log.csv append: one line, the log as it was (never 0 bytes), the run not half-logged."""
    out = tmp_path / "run"
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("log.csv"):
            real_write(fd, bytes(data)[:7])                 # part of a row reached the disk, then it was full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    one_line_error(run("train", "--out", out, "--steps", 20, *TINY_ARGS), "no space left on device while appending",
                   "log.csv", "the previous file is intact")
    monkeypatch.undo()
    assert log_steps(out) == [5] and open(out / "log.csv").read().endswith("\n")
    # a log rewritten on a full disk keeps the old one
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    before = open(out / "log.csv", "rb").read()
    with pytest.raises(StorageError, match="log.csv; the previous file is intact"):
        append_log(str(out / "log.csv"), ["step", "loss", "other"], [{"step": 6}])
    assert open(out / "log.csv", "rb").read() == before


def test_the_previous_file_is_intact_is_said_only_when_there_was_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(StorageError, match=r"^no space left on device while writing .*new.bin; nothing was written$"):
        atomic_write_bytes(tmp_path / "new.bin", b"x")
    (tmp_path / "old.bin").write_bytes(b"old")
    with pytest.raises(StorageError, match=r"old.bin; the previous file is intact$"):
        atomic_write_bytes(tmp_path / "old.bin", b"new")
    assert sorted(os.listdir(tmp_path)) == ["old.bin"] and (tmp_path / "old.bin").read_bytes() == b"old"


# --- 5. file-system errors are one line ----------------------------------------------------------------------------
def read_only(monkeypatch, root):
    """Writes under `root` fail as on a read-only file system."""
    root = str(root)
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def ro_open(path, flags, *a, **k):
        if os.path.abspath(os.fspath(path)).startswith(root) and flags & writing:
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *a, **k)

    def ro_mkdir(path, *a, **k):
        if os.path.abspath(os.fspath(path)).startswith(root):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_mkdir(path, *a, **k)
    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def test_a_read_only_file_system_is_one_line_for_train_resume_and_sample(tmp_path, monkeypatch):
    ss.train(tiny(), out=str(tmp_path / "run"))
    files = {n: (tmp_path / "run" / n).read_bytes() for n in ("log.csv", "config.toml")}
    read_only(monkeypatch, tmp_path)
    one_line_error(run("train", "--out", tmp_path / "new", "--steps", 5, *TINY_ARGS), "new", "read-only file system")
    assert not (tmp_path / "new").exists()
    one_line_error(run("train", "--out", tmp_path / "run", "--resume", "--steps", 20, *TINY_ARGS), ".lock",
                   "read-only file system")
    one_line_error(run("sample", "--checkpoint", tmp_path / "run", "--n", 4, "--steps", 2, "--out", tmp_path / "x.png"),
                   "x.png", "read-only file system", "nothing was written")
    monkeypatch.undo()
    assert {n: (tmp_path / "run" / n).read_bytes() for n in files} == files
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [5, 10]


def test_full_disk_at_the_lock_is_one_line(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    one_line_error(run("train", "--out", tmp_path / "run", "--steps", 5, *TINY_ARGS),
                   "no space left on device while writing", ".lock")
    assert not (tmp_path / "run").exists()                  # the failed start leaves nothing behind


def test_out_a_dangling_symlink_is_one_line(tmp_path):
    os.symlink(tmp_path / "nowhere" / "run", tmp_path / "link")
    one_line_error(run("train", "--out", tmp_path / "link", "--steps", 5, *TINY_ARGS), "link",
                   "a symbolic link to", "which does not exist")
    ss.train(tiny(), out=str(tmp_path / "run"))
    os.symlink(tmp_path / "nowhere" / "x.npy", tmp_path / "x.npy")
    one_line_error(run("sample", "--checkpoint", tmp_path / "run", "--n", 4, "--steps", 2, "--out", tmp_path / "x.npy"),
                   "x.npy", "which does not exist")
    assert os.path.islink(tmp_path / "x.npy")


# --- 6. a directory named like a checkpoint ----------------------------------------------------------------------
def test_a_directory_named_like_a_checkpoint_is_skipped_with_a_message(tmp_path, caplog):
    run_dir = tmp_path / "run"
    ss.train(tiny(keep=2), out=str(run_dir))
    for step in (15, 20):
        os.makedirs(run_dir / "checkpoints" / f"ckpt_{step:08d}.safetensors")
    r = ss.train({"train": {"steps": 25}}, out=str(run_dir), resume=True)            # never [Errno 21]
    assert r.step == 25 and r.checkpoint.endswith("ckpt_00000025.safetensors")
    assert [s for s, _ in list_checkpoints(run_dir)] == [10, 25]                         # pruned around them
    assert os.path.isdir(run_dir / "checkpoints" / "ckpt_00000020.safetensors")
    text = caplog.text
    assert "ckpt_00000015.safetensors not written: a directory of that name is in the way" in text
    assert "a directory named like a checkpoint, not a checkpoint file" in text
    one_line_error(run("sample", "--checkpoint", run_dir / "checkpoints" / "ckpt_00000020.safetensors",
                       "--out", tmp_path / "x.npy"), "a directory named like a checkpoint file")
    with pytest.raises(CheckpointError, match="a directory, not a checkpoint file"):
        read_checkpoint(run_dir / "checkpoints" / "ckpt_00000020.safetensors")
    with pytest.raises(StorageError, match="a directory of that name is in the way"):
        atomic_write_bytes(run_dir / "checkpoints" / "ckpt_00000020.safetensors", b"x")


# --- 9. the umask -------------------------------------------------------------------------------------------------
def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ss.train(tiny(), out=str(tmp_path / "run"))
        atomic_write_bytes(tmp_path / "a.bin", b"a")
        (tmp_path / "b.bin").write_bytes(b"b")
        os.chmod(tmp_path / "b.bin", 0o604)
        atomic_write_bytes(tmp_path / "b.bin", b"bb")        # a replaced file keeps its mode
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777                              # noqa: E731
    assert mode(tmp_path / "a.bin") == 0o640 and mode(tmp_path / "b.bin") == 0o604
    run_dir = tmp_path / "run"
    written = [run_dir / n for n in ("config.toml", "log.csv", "metrics.json", "samples.npy", "samples.png")]
    written += [p for _, p in list_checkpoints(run_dir)]
    assert {str(p): mode(p) for p in written} == {str(p): 0o640 for p in written}


# --- 10. temporaries are swept wherever they are written -------------------------------------------------------
def test_temporaries_are_swept_under_samples_and_steps_and_beside_any_target(tmp_path):
    run_dir = tmp_path / "run"
    ss.train(tiny(), out=str(run_dir))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    os.makedirs(run_dir / "steps")
    os.makedirs(run_dir / "samples", exist_ok=True)           # a finished run removes it when empty
    stale = [run_dir / "samples" / ".step_00000005.png.abc123.tmp",                          # an older writer's
             run_dir / "steps" / f".unipc-5.json.{host}-{dead.pid}.abc123.tmp",             # a dead writer's
             run_dir / f".metrics.json.{host}-{dead.pid}.x_y.tmp"]
    live = run_dir / "samples" / f".mine.png.{host}-{os.getpid()}.abc123.tmp"               # a live writer's
    for p in (*stale, live):
        p.write_bytes(b"half a file")
    ss.train({"train": {"steps": 15}}, out=str(run_dir), resume=True)
    assert [p for p in stale if p.exists()] == [] and live.exists()
    # outside a run: a write sweeps the temporaries of its target that a dead writer left
    left = tmp_path / f".x.npy.{host}-{dead.pid}.abc123.tmp"
    left.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "x.npy", b"x")
    assert not left.exists() and (tmp_path / "x.npy").read_bytes() == b"x"


# --- the lock taken over from a dead holder is shown -----------------------------------------------------------
def test_taking_over_the_lock_of_a_dead_process_is_a_warning_line(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    (out / ".lock").write_text("pid 999999 on elsewhere since 2026-01-01 00:00:00\n")       # no flock: stale
    p = subprocess.run([sys.executable, "-m", "scoresde", "train", "--out", str(out), "--steps", "5", *TINY_ARGS],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "took over the lock of a process that is gone (pid 999999 on elsewhere" in p.stderr
