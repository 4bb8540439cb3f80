"""Checkpoints: safetensors files plus JSON metadata, written atomically; loading never unpickles.

One checkpoint is one file `checkpoints/ckpt_<step>.safetensors` in a run directory holding

- `model/<name>`: the raw weights, `ema/...`: the EMA state, `optim/...`: the optimizer state,
  `rng/...`: the random-number-generator states (torch CPU, the data/noise generator, CUDA);
- metadata `format = "scoresde.checkpoint"`, `version`, and `meta`: JSON with the step, the
  resolved config, the model/SDE names and arguments, counters, and the non-tensor parts of the
  nested states (tensors stand in as references to the file's tensors).

Files are written to a temporary file in the same directory, fsynced, then renamed over the
target, so an interruption never leaves a half-written checkpoint; the last `keep` are kept. A full
disk is one `StorageError` line with the temporary file removed.

Each file carries a SHA-256 digest of each tensor group (`model`, `ema`, `optim`, `rng`) and one of
all of its metadata (format version 2: the canonical JSON of every header entry, sorted keys, fixed
separators, the tensor digests included); reading recomputes them, so flipped bytes or an edited step,
SDE or learning rate are a `CheckpointError` naming the file, never silently wrong weights or settings.
The digests prove integrity, not authorship: they are no signature. A file without them (format version
1, written before metadata digests; or a digest missing) is refused as unverified unless the caller
opts in with `verify=False` (`--allow-unverified`); it then loads as before, its tensor digests checked
where it has them. The step in the metadata must match the file name `ckpt_<step>`, and such a name
may not be a link to a file of another name or directory. Reading validates the format and the
metadata's types, and loading compares every weight shape the metadata implies (the network is built
on the meta device, nothing allocated) with the tensors in the file before building the network for real.

Listing skips (with a warning) anything named like a checkpoint that is not a file, e.g. a directory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any

import torch

from scoresde._common.files import atomic_write_bytes
from scoresde._common.digests import tensor_digests


__all__ = ["CheckpointError", "UnverifiedCheckpointError", "CheckpointNameError", "tensor_digests", "meta_digest",
           "save_checkpoint", "read_checkpoint", "list_checkpoints", "find_checkpoint", "checkpoint_task",
           "prune_checkpoints", "flatten_state", "unflatten_state", "check_shapes"]


FORMAT, VERSION = "scoresde.checkpoint", "2"
READS = ("1", "2")          # version 1: tensor digests only (or none), read with verify=False
_NAME = re.compile(r"^ckpt_(\d+)\.safetensors$")
_OPT_IN = "load it anyway only if you trust it: --allow-unverified (verify=False)"
log = logging.getLogger("scoresde")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a scoresde checkpoint."""


class UnverifiedCheckpointError(CheckpointError):
    """A checkpoint without the digests that prove its integrity (refused unless `verify=False`)."""


class CheckpointNameError(CheckpointError):
    """A checkpoint whose name does not match its step, or a link posing as another run's checkpoint."""


# --- nested states <-> (tensors, JSON) ------------------------------------------------------------
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list state into `tensors` (key `prefix/...`) and return a
    JSON-able mirror of `obj` in which tensors are {"__tensor__": key}; non-str dict keys and tuples
    are encoded so `unflatten_state` restores them exactly."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {prefix!r} (tensors, numbers, "
                    "strings, lists and dicts only)")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint: tensor {key!r} is listed in the metadata but missing")
            return tensors[key]
        if "__items__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# --- files -----------------------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def meta_digest(header: dict[str, str]) -> str:
    """SHA-256 of all of a checkpoint's header entries but `meta_digest` itself, as canonical JSON (sorted
    keys, fixed separators; `meta` and `digests` parsed, so their spacing does not matter)."""
    obj = {k: (json.loads(v) if k in ("meta", "digests") else v) for k, v in header.items() if k != "meta_digest"}
    return hashlib.sha256(_canonical(obj)).hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write one checkpoint file atomically (safetensors with JSON `meta`, the tensor digests and the
    digest of all the metadata)."""
    from safetensors.torch import save
    header = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta),
              "digests": json.dumps(tensor_digests(tensors))}
    header["meta_digest"] = meta_digest(header)
    atomic_write_bytes(path, save(tensors, metadata=header))


def _check_meta(path: str, meta: Any) -> None:
    """The metadata's own types, checked before anything trusts them."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path!r}: metadata is not a JSON object; the file is incomplete or foreign")
    for key in ("step", "config", "model", "sde", "state"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path!r}: metadata lacks {key!r}; the file is incomplete or foreign")
    step = meta["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint {path!r}: metadata 'step' must be an integer >= 0, found {step!r}")
    for key in ("config", "model", "sde", "state"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"checkpoint {path!r}: metadata {key!r} must be a JSON object, "
                                  f"found {type(meta[key]).__name__}")
    shape = meta.get("data_shape", [])
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise CheckpointError(f"checkpoint {path!r}: metadata 'data_shape' must be a list of positive integers, "
                              f"found {shape!r}")


def _unverified(path: str, header: dict[str, str]) -> str | None:
    """Why the file cannot prove its integrity (None when it carries every digest of its version)."""
    version = header.get("version")
    if version == "1":
        if "digests" not in header:
            return "written before digests (format version 1): neither its tensors nor its metadata can be checked"
        return "written before metadata digests (format version 1): its metadata cannot be checked"
    missing = [k for k in ("digests", "meta_digest") if k not in header]
    if missing:
        return f"digest missing ({' and '.join(missing)} of format version {version}): edited or damaged"
    return None


def _check_name(path: str, step: int) -> None:
    """`ckpt_<step>` names its step, and is no link to a file of another name or directory (another run's)."""
    m = _NAME.match(os.path.basename(path))
    if m is None:
        return
    if int(m.group(1)) != step:
        raise CheckpointNameError(f"checkpoint {path!r}: its metadata says step {step}, its name step "
                                  f"{int(m.group(1))}: a renamed or linked file, refused (remove or rename it)")
    if os.path.islink(path):
        real = os.path.realpath(path)
        if (os.path.basename(real) != os.path.basename(path)
                or os.path.dirname(real) != os.path.realpath(os.path.dirname(os.path.abspath(path)))):
            raise CheckpointNameError(f"checkpoint {path!r}: a link to {real!r}, not a checkpoint of this run; "
                                      "refused (remove the link)")


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate one checkpoint file: (tensors, meta). Never unpickles.

    Every digest the file carries is checked. A file without the digests of all its content (format
    version 1, or a digest missing) is refused with `UnverifiedCheckpointError` unless `verify=False`."""
    from safetensors import safe_open
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r}: a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path!r}: not a scoresde checkpoint (a safetensors file "
                                      f"without the {FORMAT!r} format tag)")
            if header.get("version") not in READS:
                raise CheckpointError(f"checkpoint {path!r}: format version {header.get('version')!r}, "
                                      f"this scoresde reads versions {', '.join(READS)}")
            why = _unverified(path, header)
            if why is not None and verify:
                raise UnverifiedCheckpointError(f"checkpoint {path!r}: unverified, {why}; {_OPT_IN}")
            meta = json.loads(header["meta"])
            digests = json.loads(header["digests"]) if "digests" in header else None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:     # safetensors reports corrupt files with several exception types
        raise CheckpointError(f"checkpoint {path!r}: corrupt or not a safetensors file "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if "meta_digest" in header and header["meta_digest"] != meta_digest(header):
        raise CheckpointError(f"checkpoint {path!r}: damaged: the digest of its metadata (step, config, SDE, "
                              "optimiser and EMA settings) does not match the one written with it")
    _check_meta(path, meta)
    if digests is not None:    # without digests (verify=False) the file loads unverified
        found = tensor_digests(tensors)
        bad = sorted(g for g in set(digests) | set(found) if digests.get(g) != found.get(g))
        if bad:
            raise CheckpointError(f"checkpoint {path!r}: damaged: the content digest of its {', '.join(bad)} "
                                  "tensors does not match the one written with it")
    _check_name(path, meta["step"])
    return tensors, meta


_warned: set[str] = set()


def _not_a_file(path: str) -> str:
    return "a directory" if os.path.isdir(path) else "a link to nothing" if os.path.islink(path) else "not a file"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint files in `run_dir/checkpoints`, oldest first; anything else named
    like one (a directory, a dangling link) is skipped with a warning."""
    d = os.path.join(os.fspath(run_dir), "checkpoints")
    if not os.path.isdir(d):
        return []
    found = []
    for n in os.listdir(d):
        if (m := _NAME.match(n)) is None:
            continue
        p = os.path.join(d, n)
        if os.path.isfile(p):
            found.append((int(m.group(1)), p))
        elif p not in _warned:
            _warned.add(p)
            log.warning("skipped %s: %s named like a checkpoint, not a checkpoint file", p, _not_a_file(p))
    return sorted(found)


def find_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint file itself, or the latest checkpoint of a run directory."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file or run directory")
    if path.rstrip(os.sep).endswith(".safetensors") and not os.path.isdir(os.path.join(path, "checkpoints")):
        raise CheckpointError(f"checkpoint {path!r}: a directory named like a checkpoint file, neither a "
                              "checkpoint nor a run directory")
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"checkpoint {path!r}: the directory holds no checkpoints/ckpt_*.safetensors files")
    return found[-1][1]


def checkpoint_task(path: str | os.PathLike) -> str | None:
    """The task named in the header of `path`'s checkpoint (`find_checkpoint`; no tensors read, nothing
    verified), or None when the path holds no readable checkpoint (loading it then reports why)."""
    from safetensors import safe_open
    try:
        with safe_open(find_checkpoint(path), framework="pt", device="cpu") as f:
            return json.loads((f.metadata() or {})["meta"]).get("task")
    except Exception:
        return None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, p in list_checkpoints(run_dir)[:-keep]:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


# --- rebuilding a trained model ---------------------------------------------------------------------
def check_shapes(build, tensors: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """Build a module with `build()` on the meta device (no memory) and compare its state-dict shapes with
    `tensors[prefix + name]`: the metadata is never trusted to size an allocation. Raises CheckpointError
    naming the first missing, unexpected or mismatched tensor and both shapes."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    found = {k[len(prefix):]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
    for k in expected:
        if k not in found:
            raise CheckpointError(f"checkpoint {source!r}: the metadata describes a network with weight {k!r} "
                                  f"of shape {list(expected[k])}, which the file lacks")
        if found[k] != expected[k]:
            raise CheckpointError(f"checkpoint {source!r}: weight {k!r} has shape {list(found[k])} in the file, "
                                  f"but the metadata describes {list(expected[k])}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(f"checkpoint {source!r}: the file holds weight {extra[0]!r} that the network its "
                              "metadata describes does not have")
