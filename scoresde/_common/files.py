"""Files written atomically (a temporary in the same directory, fsync, rename), the storage error
they raise, and the removal of temporaries a killed process left behind.

A temporary is named `.<target>.<host>-<pid>.<random>.tmp`, so a later writer can tell one left by a
process that is gone (removed) from one a live process is still writing (kept). Written files get the
mode `open()` would give them (0o666 less the umask), or keep the mode of the file they replace.

`save_npy` writes a .npy array atomically.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tempfile

from typing import Any, BinaryIO, Callable, Iterable

import numpy as np


__all__ = ["StorageError", "TMP_SUFFIX", "atomic_write_bytes", "append_bytes", "remove_stale_temporaries",
           "storage_error"]


class StorageError(OSError):
    """A file could not be written (no space left, a read-only file system, a directory in the way...);
    the target is left as it was. `str()` is the one-line message; `errno` and `filename` say what and where."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


TMP_SUFFIX = ".tmp"
_TAGGED = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def _umask() -> int:
    """The process umask, without changing it where /proc says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def storage_error(e: OSError, path: str, existed: bool, what: str = "writing") -> StorageError:
    """One line for a failed write of `path`: what happened, and whether a previous file is intact."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = f"no space left on device while {what} {path}"
    elif e.errno == errno.EROFS:
        msg = f"cannot write {path}: read-only file system"
    else:
        msg = f"cannot write {path}: {(e.strerror or str(e)).lower()}"
    msg += "; the previous file is intact" if existed else "; nothing was written"
    err = StorageError(msg)
    err.errno, err.filename = e.errno, path
    return err


def _check_target(path: str) -> bool:
    """Whether `path` exists (a file); a directory or a dangling link in its place is a StorageError."""
    if os.path.isdir(path):
        err = StorageError(f"cannot write {path}: a directory of that name is in the way; move it away")
        err.errno, err.filename = errno.EISDIR, path
        raise err
    if os.path.islink(path) and not os.path.exists(path):
        err = StorageError(f"cannot write {path}: a symbolic link to {os.readlink(path)!r}, which does not exist")
        err.errno, err.filename = errno.ENOENT, path
        raise err
    return os.path.exists(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, and os.replace (a link at
    `path` is replaced, not followed). Any failure (a full disk, a read-only file system, a directory in
    the way) raises `StorageError` with one line naming `path`; the temporary file is removed and the
    previous file, if any, is left as it was."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """`atomic_write_bytes` for content written piece by piece: `write(f)` writes into the temporary file
    (e.g. chunks of a large array, never all in memory at once)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    existed = _check_target(path)
    mode = stat.S_IMODE(os.stat(path).st_mode) if existed else 0o666 & ~_umask()
    _remove_dead(directory, base)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_host()}-{os.getpid()}.", suffix=TMP_SUFFIX, dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)        # mkstemp makes 0600: give the file the mode open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise storage_error(e, path, existed) from None
        raise
    try:                                   # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to the existing file `path` all or nothing: on a failure (e.g. a full disk) the file
    is cut back to its previous length and `StorageError` raised with one line."""
    path = os.fspath(path)
    _check_target(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise storage_error(e, path, True, "appending to") from None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise storage_error(e, path, True, "appending to") from None
    finally:
        os.close(fd)


def _alive(host: str, pid: int) -> bool:
    """Whether the writer `host`-`pid` may still be running (always, for another host)."""
    if host != _host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_dead(directory: str, base: str) -> None:
    """Remove the temporaries of `base` in `directory` whose writer (on this host) is gone."""
    prefix = f".{base}."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        m = _TAGGED.match(n)
        if m and n.startswith(prefix) and not _alive(m["host"], int(m["pid"])):
            try:
                os.unlink(os.path.join(directory, n))
            except OSError:
                pass


def save_npy(path: str | os.PathLike, array) -> None:
    """Write `array` (a numpy array or a CPU tensor) to `path` as a .npy file, atomically (the bytes of
    `np.save`; one chunk of `save_npy_chunks`)."""
    a = np.asarray(array)
    save_npy_chunks(path, a.shape, a.dtype, [a])


def save_npy_chunks(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, chunks: Iterable[Any]) -> None:
    """Write a .npy file of `shape` and `dtype` from `chunks` (arrays or CPU tensors along the first axis, in
    order) atomically, holding one chunk at a time; their total length must be shape[0]."""
    dtype = np.dtype(dtype)

    def write(f):
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
        rows = 0
        for chunk in chunks:
            a = np.ascontiguousarray(np.asarray(chunk), dtype=dtype)
            if a.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{os.fspath(path)}: a chunk of shape {a.shape} in an array of shape {tuple(shape)}")
            rows += len(a)
            f.write(a.tobytes())
        if rows != shape[0]:
            raise ValueError(f"{os.fspath(path)}: {rows} rows written, the header says {shape[0]}")
    atomic_write(path, write)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the `.<name>.*.tmp` files an interrupted `atomic_write_bytes` left in `directory` (call it
    only while holding the run's lock, so no writer of the run owns them); a temporary that a live process
    of this host is writing (e.g. `scoresde sample --out RUN/samples/...`) is kept. Returns the removed
    paths."""
    directory = os.fspath(directory)
    removed = []
    for n in os.listdir(directory) if os.path.isdir(directory) else []:
        if not (n.startswith(".") and n.endswith(TMP_SUFFIX)):
            continue
        m = _TAGGED.match(n)
        if m and m["host"] == _host() and _alive(m["host"], int(m["pid"])):
            continue
        p = os.path.join(directory, n)
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
