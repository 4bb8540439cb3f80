"""Files written atomically (a temporary in the same directory, fsync, rename): bytes and .npy arrays;
the storage error they raise, and the removal of temporaries a killed process left behind.
"""
from __future__ import annotations

import errno
import io
import os
import tempfile

import numpy as np


class StorageError(OSError):
    """A file could not be written (e.g. no space left on device); the target is left as it was."""


TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, and os.replace.
    A full disk (or a quota) raises `StorageError` with one line; the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            err = StorageError(f"no space left on device while writing {path} ({len(data) / 2**20:.1f} MiB); "
                               "the previous file is intact")
            err.errno = e.errno
            raise err from None
        raise
    try:                                   # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_npy(path: str | os.PathLike, array) -> None:
    """Write `array` (a numpy array or a CPU tensor) to `path` as a .npy file, atomically (`atomic_write_bytes`)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    atomic_write_bytes(path, buf.getvalue())


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the `.<name>.*.tmp` files an interrupted `atomic_write_bytes` left in `directory` (call it
    only while holding the run's lock, so no live writer owns them). Returns the removed paths."""
    directory = os.fspath(directory)
    removed = []
    for n in os.listdir(directory) if os.path.isdir(directory) else []:
        if n.startswith(".") and n.endswith(TMP_SUFFIX):
            try:
                os.unlink(os.path.join(directory, n))
                removed.append(os.path.join(directory, n))
            except FileNotFoundError:
                pass
    return removed
