"""A run directory: its exclusive lock, its CSV log, and how a config names and resumes it.

One training process (rank 0 of a torchrun job) holds `RUN/.lock` with `fcntl.flock` for the whole
run; a second run into the same directory is refused with one line naming the holder. The operating
system drops the lock when its process dies (even by `kill -9`), so a lock file left by a dead
process is stale by construction: the next run takes it over and says whose it was. A run that ends
removes its lock file (while still holding it; a process that locked the removed file finds that the
path no longer names it and locks the new one), and `tidy_run_dir` its empty `samples/`.

`log.csv` is written all or nothing (an append cut back on failure, a rewrite atomic), so a full disk or
a kill never leaves it empty or half a row longer: rows beyond a resumed checkpoint's step, or of an
earlier run into the same directory, are dropped, never duplicated.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import socket
import time
from typing import Any, Iterable

import torch

from scoresde._common.files import StorageError, append_bytes, atomic_write_bytes
from scoresde.runs.checkpoint import (CheckpointError, CheckpointNameError, UnverifiedCheckpointError, list_checkpoints,
                                      read_checkpoint)


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

    def _refuse(self, why: str, code: int) -> StorageError:
        err = StorageError(f"run directory {self.run_dir}: {why}")
        err.errno, err.filename = code, self.run_dir
        return err

    def acquire(self) -> "RunLock":
        """Take the lock; RunLockedError when a live process holds it, StorageError (one line naming the
        file) when the directory or its lock file cannot be written."""
        import fcntl
        if os.path.islink(self.run_dir) and not os.path.exists(self.run_dir):
            raise self._refuse(f"a symbolic link to {os.readlink(self.run_dir)!r}, which does not exist", errno.ENOENT)
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise self._refuse("exists and is not a directory", errno.ENOTDIR)
        while True:
            try:
                os.makedirs(self.run_dir, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise self._refuse(f"cannot create {self.path}: {(e.strerror or str(e)).lower()}", e.errno) from None
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
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, holder.encode())
            os.ftruncate(fd, len(holder.encode()))
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            why = "no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e)).lower()
            raise self._refuse(f"{why} while writing {self.path}", e.errno) from None
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


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def append_log(path: str, fields: list[str], rows: Iterable[dict[str, Any]], after_step: int | None = None) -> None:
    """Append rows to the CSV log, all or nothing. With `after_step` (a resume: its checkpoint's step; a new
    run: 0) first drop the rows logged after that step; a log written with other columns, or whose last row
    a killed process cut short, is rewritten with `fields` (missing values left empty) atomically. A failed
    write (a full disk) is a one-line StorageError and leaves the log as it was."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    text = None
    if os.path.exists(path):
        with open(path, newline="") as f:
            text = f.read()
    if text is None or text == "":
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(path, buf.getvalue().encode())
        return
    whole = text.endswith("\n")
    reader = csv.DictReader(io.StringIO(text if whole else text[:text.rfind("\n") + 1]))
    if after_step is None and whole and reader.fieldnames == fields:
        w.writerows(rows)
        append_bytes(path, buf.getvalue().encode())
        return
    old = [r for r in reader if (s := _step(r)) is not None and (after_step is None or s <= after_step)]
    w.writeheader()
    w.writerows([*old, *rows])
    atomic_write_bytes(path, buf.getvalue().encode())


def newest_intact(run_dir: str, *, verify: bool = True) -> tuple[str, dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The newest checkpoint of `run_dir` that reads and verifies, and the damaged ones skipped for it. A
    checkpoint that cannot prove its integrity (unless `verify=False`) or whose name is not its step is an
    error, never skipped: the run would otherwise restart elsewhere."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"checkpoint {run_dir!r}: the directory holds no checkpoints/ckpt_*.safetensors files")
    damaged = []
    for _, path in reversed(found):
        try:
            return (path, *read_checkpoint(path, verify=verify), damaged)
        except (UnverifiedCheckpointError, CheckpointNameError):
            raise
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
