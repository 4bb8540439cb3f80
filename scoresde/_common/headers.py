"""What a file claims before it is read: `.npy` / `.npz` array headers and safetensors tensor shapes.

`array_headers(path)` reads the header of a `.npy` file or of every array of an `.npz` (for a compressed
member: the npy header at the start of its deflated stream, and the uncompressed size from the zip
directory), never the data. `load_checked(path, key, ...)` then refuses, naming the file, an array of
Python objects (never unpickled), a header that claims more bytes than the file holds, or an array whose
bytes (plus what the caller will make of it) exceed the memory budget (`limits.memory_budget`); only
then is the array read. `safetensors_shapes(path)` gives the tensors' shapes from the file's header.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from scoresde._common.limits import check_memory, format_bytes

__all__ = ["ArrayHeader", "array_headers", "check_header", "load_checked", "safetensors_shapes"]

_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


@dataclass(frozen=True)
class ArrayHeader:
    """One array as its header describes it: `key` ("" for a `.npy`), `shape`, `dtype`, and `available`,
    the bytes the file actually holds after the header (for an `.npz` member, its uncompressed size)."""

    path: str
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    available: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self) -> str:
        where = f"array {self.key!r} " if self.key else "array "
        return f"{where}of shape {self.shape} {self.dtype}"


def _read_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the npy header at the file position of `fp` (raises ValueError if malformed)."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fp)
    else:
        shape, _, dtype = fmt._read_array_header(fp, version)       # (3, 0): utf-8 field names
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _file_kind(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head == _NPY_MAGIC:
        return "npy"
    raise ValueError("neither an .npy array (magic \\x93NUMPY) nor an .npz archive (a zip file)")


def array_headers(path: str, what: str = "data") -> dict[str, ArrayHeader]:
    """The headers of the array(s) in `path`: {"": header} for a `.npy`, {key: header} for an `.npz`.
    ValueError "{what} 'path': not a readable .npy/.npz array file (...)" when the file is not one."""
    try:
        if _file_kind(path) == "npy":
            with open(path, "rb") as f:
                shape, dtype = _read_header(f)
                return {"": ArrayHeader(path, "", shape, dtype, os.path.getsize(path) - f.tell())}
        out = {}
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    shape, dtype = _read_header(f)
                    out[info.filename[:-4]] = ArrayHeader(path, info.filename[:-4], shape, dtype,
                                                          info.file_size - f.tell())
        return out
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError, NotImplementedError,
            RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{what} {path!r}: not a readable .npy/.npz array file ({msg})") from None


def check_header(h: ArrayHeader, what: str = "data", *, extra_per_value: int = 0, budget: int | None = None) -> None:
    """Refuse (ValueError naming the file) what `h` cannot be read as: an object array, a header claiming
    more bytes than the file holds, or more memory than the budget (its bytes plus `extra_per_value` bytes
    per value for the copies the caller makes, e.g. 8 for a float32 copy and one temporary)."""
    src = f"{what} {h.path!r}"
    if h.dtype.hasobject:
        raise ValueError(f"{src}: {h.describe()} holds Python objects, which are never unpickled; save an array "
                         "of numbers")
    if h.nbytes > h.available:
        raise ValueError(f"{src}: the header of its {h.describe()} claims {format_bytes(h.nbytes)}, but the file "
                         f"holds {format_bytes(max(h.available, 0))} of data: truncated, damaged or forged")
    size = os.path.getsize(h.path)
    check_memory(h.nbytes + extra_per_value * h.count,
                 f"{src} (a {format_bytes(size)} file): its {h.describe()}", budget=budget)


def load_checked(path: str, key: str = "", what: str = "data", *, extra_per_value: int = 0,
                 budget: int | None = None, headers: dict[str, ArrayHeader] | None = None) -> np.ndarray:
    """The array `key` of `path` ("" for a `.npy`), read only after `check_header` passed."""
    headers = array_headers(path, what) if headers is None else headers
    if key not in headers:
        raise ValueError(f"{what} {path!r}: no array {key!r}; found {sorted(headers)}")
    check_header(headers[key], what, extra_per_value=extra_per_value, budget=budget)
    try:
        if key == "":
            return np.load(path, allow_pickle=False)
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{what} {path!r}: array {key or 'data'!r} is not readable ({msg})") from None


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors of a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
