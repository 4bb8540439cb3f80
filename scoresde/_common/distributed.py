"""Data-parallel training under `torchrun`: process-group set-up, DDP wrapping, collectives.

`torchrun --nproc-per-node=N -m scoresde train ...` (or `--nnodes`/`--rdzv-endpoint` for several
machines) starts N copies of the same training; they find each other from the RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR variables torchrun sets. Each rank draws its own batches (its data
generator is seeded with seed + rank), DistributedDataParallel averages the gradients, so every
rank takes the same optimizer step and the weights stay identical; only rank 0 writes files.
Without those variables everything here is a no-op for one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "teardown", "wrap", "all_reduce_sum", "all_gather_bytes", "broadcast_str",
           "barrier", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, local rank; `enabled` under torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """"auto" -> cuda when available, else cpu; under torchrun cuda means cuda:<local rank>."""
    local = info.local_rank if info is not None else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was requested but no CUDA device is available (use --device cpu)")
        return torch.device("cuda", local)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device: expected auto, cpu or cuda, found {device!r}")


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if the launcher's variables are set (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(), resolve_device(device)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)), True)
    dev = resolve_device(device, info)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=info.rank,
                                world_size=info.world_size)
    return info, dev


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun (weights broadcast from rank 0)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (in place; `t` itself for one process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_bytes(t: torch.Tensor, info: DistInfo, device: torch.device) -> list[torch.Tensor]:
    """Every rank's copy of a same-sized uint8 CPU tensor (an RNG state), in rank order."""
    if not info.enabled:
        return [t]
    src = t.to(device)
    out = [torch.empty_like(src) for _ in range(info.world_size)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]


def broadcast_str(s: str, info: DistInfo, device: torch.device) -> str:
    """Rank 0's string on every rank (sent as bytes; nothing is pickled)."""
    if not info.enabled:
        return s
    data = torch.tensor(list(s.encode()), dtype=torch.uint8)
    n = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(n, 0)
    buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=device)
    if info.is_main:
        buf.copy_(data.to(device))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def barrier(info: DistInfo, device: torch.device | None = None) -> None:
    if info.enabled:
        dist.barrier(device_ids=[device.index]) if device is not None and device.type == "cuda" else dist.barrier()


def unwrap(model: Any) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    return getattr(model, "module", model)
