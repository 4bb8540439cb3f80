"""A run directory: its exclusive lock, its CSV log, and how a config names and resumes it.

One training process (rank 0 of a torchrun job) holds `RUN/.lock` with `fcntl.flock` for the whole
run; a second run into the same directory is refused with one line naming the holder. The operating
system drops the lock when its process dies (even by `kill -9`), so a lock file left by a dead
process is stale by construction: the next run takes it over and says whose it was.
"""
from __future__ import annotations

import csv
import os
import socket
import time
from typing import Any, Iterable, Mapping

import torch

from .checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from .config import load_toml, resolve
from .tasks import get_task

__all__ = ["RunLock", "RunLockedError", "append_log", "newest_intact", "resolve_run", "run_dir_of"]


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"run directory {self.run_dir!r} is in use by {previous or 'another process'}; "
                                 "wait for that run to end or choose another --out") from None
        self.stale = previous or None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                     .encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            os.ftruncate(self._fd, 0)                   # an unheld lock file says nothing
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


def run_dir_of(cfg: dict[str, Any]) -> str:
    """The run directory a config names (`out`, else runs/<name or timestamp>)."""
    if cfg["out"]:
        return cfg["out"]
    return os.path.join("runs", cfg["name"] or time.strftime("%Y%m%d-%H%M%S"))


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


def resolve_run(config: Any = None, *, out: str | None = None, resume: bool = False, task: str | None = None):
    """(cfg, task class, resume state) of a run: the config resolved over the defaults (over the checkpoint's
    config on `resume`) and validated; the resume state is (path, tensors, meta, damaged) or None. A new run
    trains `task` (default: the config's `task`; a score model with an `autoencoder` is the
    "latent" task); a resumed one the task its checkpoint names."""
    overrides: dict[str, Any] = {"out": out} if out else {}
    if task and not resume:
        overrides["task"] = task
    state = None
    if resume:      # the run directory first (the task, and so the sections it reads, come from its checkpoint)
        raw = load_toml(config) if isinstance(config, (str, os.PathLike)) else config
        first = resolve({k: raw[k] for k in ("out", "name") if k in raw} if isinstance(raw, Mapping) else raw,
                        overrides)
        if not (first["out"] or first["name"]):
            raise ValueError("resume: name the run directory to continue with --out DIR (or --name NAME)")
        state = newest_intact(run_dir_of(first))
        cfg = resolve(config, overrides, base=state[2]["config"])
        task = state[2].get("task", "score")                   # checkpoints before the engine: "score"
    else:
        cfg = resolve(config, overrides)
        task = cfg["task"]
        if task == "score" and cfg["autoencoder"]:           # a score model on an autoencoder's latents
            task = overrides["task"] = "latent"
            cfg = resolve(config, overrides)                  # with the latent task's own defaults
    task_cls = get_task(task)
    cfg["task"] = task
    task_cls.check_config(cfg)
    return cfg, task_cls, state
