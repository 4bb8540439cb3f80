"""A run directory: its exclusive lock, its CSV log, and how a config names and resumes it.

One training process (rank 0 of a torchrun job) holds `RUN/.lock` with `fcntl.flock` for the whole
run; a second run into the same directory is refused with one line naming the holder. The operating
system drops the lock when its process dies (even by `kill -9`), so a lock file left by a dead
process is stale by construction: the next run takes it over and says whose it was. A run that ends
removes its lock file (while still holding it; a process that locked the removed file finds that the
path no longer names it and locks the new one), and `tidy_run_dir` its empty `samples/`.
"""
from __future__ import annotations

import csv
import os
import socket
import time
from typing import Any, Iterable

import torch

from scoresde.runs.checkpoint import CheckpointError, list_checkpoints, read_checkpoint


__all__ = ["RunLock", "RunLockedError", "append_log", "newest_intact", "tidy_run_dir"]


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """Exclusive, non-blocking lock on a run directory (`with RunLock(run_dir): ...`)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, ".lock")
        self.stale: str | None = None          # the holder recorded by a dead process, if taken over
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        os.makedirs(self.run_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            previous = os.read(fd, 4096).decode(errors="replace").strip()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(f"run directory {self.run_dir!r} is in use by {previous or 'another process'}; "
                                     "wait for that run to end or choose another --out") from None
            if self._names(fd):
                break
            os.close(fd)                       # the holder removed this file as it ended: lock the new one
        self.stale = previous or None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                     .encode())
        self._fd = fd
        return self

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file open as `fd`."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def release(self) -> None:
        """Remove the lock file, then unlock it: a finished run leaves no `.lock` behind."""
        if self._fd is not None:
            import fcntl
            if self._names(self._fd):
                os.unlink(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def append_log(path: str, fields: list[str], rows: Iterable[dict[str, Any]], after_step: int | None = None) -> None:
    """Append rows to the CSV log. With `after_step` (a resume) first drop the rows logged after that step;
    a log written with other columns is rewritten with `fields` (missing values left empty)."""
    rows = list(rows)
    old: list[dict[str, Any]] | None = None
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if after_step is not None or reader.fieldnames != fields:
                old = [r for r in reader if after_step is None or int(r["step"]) <= after_step]
    mode = "w" if old is not None or not os.path.exists(path) else "a"
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if mode == "w":
            w.writeheader()
        w.writerows([*(old or []), *rows])


def newest_intact(run_dir: str) -> tuple[str, dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The newest checkpoint of `run_dir` that reads and verifies, and the damaged ones skipped for it."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"checkpoint {run_dir!r}: the directory holds no checkpoints/ckpt_*.safetensors")
    damaged = []
    for _, path in reversed(found):
        try:
            return (path, *read_checkpoint(path), damaged)
        except CheckpointError as e:
            damaged.append(str(e))
    raise CheckpointError(f"resume: no intact checkpoint in {run_dir!r}; {damaged[0]}")


def tidy_run_dir(run_dir: str, created: bool = False) -> None:
    """At the end of a run: remove its `samples/` when nothing was written there (plots go there only with
    `train.sample_every`), and the directory itself when this run `created` it and left it empty (a run that
    failed before writing anything)."""
    samples = os.path.join(run_dir, "samples")
    for path in (samples, run_dir) if created else (samples,):
        try:
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        except OSError:                        # another process wrote there meanwhile: keep it
            pass
