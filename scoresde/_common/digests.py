"""SHA-256 digests of tensors: what checkpoints and autoencoder provenance records are checked against."""
from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["tensor_digests"]

def tensor_digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of each tensor group (the part of the key before the first "/"): names, dtypes, shapes
    and raw bytes, in sorted key order."""
    hashes: dict[str, Any] = {}
    for key in sorted(tensors):
        t = tensors[key]
        h = hashes.setdefault(key.split("/", 1)[0], hashlib.sha256())
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return {g: h.hexdigest() for g, h in hashes.items()}
