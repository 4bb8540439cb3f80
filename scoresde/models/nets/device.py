"""The fast CUDA path: bf16 autocast, channels_last memory format and optional torch.compile.

On a CUDA device:
- `prepare_model(net, "cuda", channels_last=True, compile=False)` moves the network, stores its
  4-D weights channels_last (NHWC: cuDNN's fast layout for convolutions under bf16) and, with
  `compile=True`, wraps it in `torch.compile` (the wrapper forwards `data_shape` and `config`).
- `with autocast(device):` runs the forward pass in bfloat16 where safe (matmuls, convolutions)
  and float32 elsewhere (GroupNorm, softmax statistics); parameters and the optimiser stay fp32,
  and the networks return the caller's dtype. bf16 needs no loss scaling.
On CPU both are no-ops (CPU autocast and channels_last rarely pay off for these networks), so
the same training / sampling code runs unchanged on either device.

The networks keep the forward pass free of host synchronisation (no `.item()`, no Python
branching on tensor values), so CUDA kernels queue ahead of the Python loop and CUDA graphs /
torch.compile work; `torch.cuda.set_sync_debug_mode("error")` can be used to check it.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

__all__ = ["autocast", "prepare_model", "to_channels_last"]


def _device(device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device: expected a torch device or its name ('cpu', 'cuda', 'cuda:0'), found {device!r}") from e


def autocast(device: Any, enabled: bool = True):
    """bf16 autocast context on CUDA when `enabled`; a no-op context on CPU or when disabled."""
    dev = _device(device)
    if enabled and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D CUDA tensor in channels_last layout (values unchanged); anything else as is."""
    if x.ndim == 4 and x.is_cuda:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, device: Any, channels_last: bool = True, compile: bool = False,
                  **compile_kwargs: Any) -> nn.Module:
    """Move `model` to `device`; on CUDA also make it channels_last and optionally `torch.compile` it.

    Returns the module to call (the compiled wrapper when `compile` on CUDA; it shares the
    parameters of `model`, so optimisers, EMA and checkpoints use `model` itself).
    """
    dev = _device(device)
    model = model.to(dev)
    if dev.type != "cuda":
        return model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, **compile_kwargs)
    return model
