"""A nested state (dicts, lists, numbers, strings, tensors) in one safetensors file, written atomically:
the tensors as tensors, the structure as JSON in the metadata. Nothing is unpickled on load.

    save_state("fit.partial.safetensors", {"step": 3, "x": torch.ones(2), "rows": [[1.0], [2.0, 3.0]]})
    load_state("fit.partial.safetensors")      # the same dict, or None when the file does not exist
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from scoresde._common.files import atomic_write_bytes


__all__ = ["save_state", "load_state", "StateFileError"]

_KEY = "scoresde.state"


class StateFileError(ValueError):
    """A state file that does not read (damaged, or not written by `save_state`)."""


def _pack(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {"__dict__": [[_pack(k, tensors, f"{path}/k{i}"), _pack(v, tensors, f"{path}/{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        return [_pack(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"state {path}: expected tensors, dicts, lists, numbers or strings, found {type(value).__name__}")


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict):
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    return value


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (dict keys may be any of the plain values, e.g. ints)."""
    from safetensors.torch import save
    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors, "s")
    atomic_write_bytes(path, save(tensors, metadata={_KEY: json.dumps(tree)}))


def load_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state `save_state` wrote to `path`, or None when there is no such file; `StateFileError` when it
    does not read."""
    from safetensors import safe_open
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tree = json.loads((f.metadata() or {})[_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _unpack(tree, tensors)
    except Exception as e:                   # noqa: BLE001  (safetensors raises its own error types)
        raise StateFileError(f"{path}: not a readable state file ({str(e).splitlines()[0] if str(e) else e!r}); "
                             "delete it to start over") from None
