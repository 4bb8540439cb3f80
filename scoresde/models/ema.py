"""Exponential moving average of network weights, with score_sde's warm-up rule.

Song et al. (2021), arXiv:2011.13456, App. H: EMA rate 0.999 (VE) / 0.9999 (VP); samples are drawn
with the averaged weights. After the n-th update (n = 1, 2, ...)

    shadow <- decay_n * shadow + (1 - decay_n) * param,
    decay_n = min(decay, (1 + n) / (10 + n))   with warm-up, else decay,

as in the reference implementation (score_sde `models/ema.py`), so early averages are not
dominated by the random initialisation. Only trainable floating-point parameters are averaged;
`decay_n` is a Python float, so `update` issues fused device ops and never synchronises.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

__all__ = ["EMA"]


def _named(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper shares its module's parameters
    return {k: p for k, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}


class EMA:
    """EMA(model, decay=0.9999, warmup=True): shadow copies of `model`'s trainable parameters.

    Use `update(model)` after each optimiser step, and `with ema.average_parameters(model):` (or
    `store` / `copy_to` / `restore`) to evaluate with the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, found {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a float in [0, 1), found {decay!r}")
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.shadow = {k: p.detach().clone() for k, p in _named(model).items()}
        self._stored: list[torch.Tensor] | None = None

    def current_decay(self, n: int | None = None) -> float:
        """decay_n for the n-th update (default: the next one)."""
        n = self.num_updates + 1 if n is None else n
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params = _named(model)
        if params.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - params.keys(), params.keys() - self.shadow.keys()
            raise ValueError(f"model: parameters differ from the EMA's; missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(extra)[:5]}")
        return [self.shadow[k] for k in params], list(params.values())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay_n shadow + (1 - decay_n) param  (one fused lerp per dtype/device group)."""
        decay = self.current_decay()
        self.num_updates += 1
        shadow, params = self._pairs(model)
        torch._foreach_lerp_(shadow, params, 1.0 - decay)        # no_grad: the parameters need no detach

    @torch.no_grad()
    def copy_to(self, model_or_params: nn.Module | Iterable[torch.Tensor]) -> None:
        """Write the averaged weights into a model (by name) or a parameter iterable (in order)."""
        if isinstance(model_or_params, nn.Module):
            shadow, params = self._pairs(model_or_params)
        else:
            params, shadow = list(model_or_params), list(self.shadow.values())
            if len(params) != len(shadow):
                raise ValueError(f"params: expected {len(shadow)} tensors, found {len(params)}")
        for s, p in zip(shadow, params):
            p.copy_(s)

    def _params(self, params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
        return list(_named(params).values()) if isinstance(params, nn.Module) else list(params)

    @torch.no_grad()
    def store(self, params: nn.Module | Iterable[torch.Tensor]) -> None:
        """Save a copy of the current (raw) parameters, to be put back by `restore`."""
        self._stored = [p.detach().clone() for p in self._params(params)]

    @torch.no_grad()
    def restore(self, params: nn.Module | Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by the last `store`."""
        if self._stored is None:
            raise RuntimeError("EMA.restore: nothing stored; call store(params) first")
        params = self._params(params)
        if len(params) != len(self._stored):
            raise ValueError(f"params: expected {len(self._stored)} tensors, found {len(params)}")
        for s, p in zip(self._stored, params):
            p.copy_(s)
        self._stored = None

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context manager: `model` holds the EMA weights inside, its own weights again after."""
        self.store(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "EMA":
        self.shadow = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                       for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """{"decay", "warmup", "num_updates", "shadow": {param name: tensor}}."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise ValueError("state: the EMA parameter names differ from this EMA's "
                             f"(missing {sorted(self.shadow.keys() - shadow.keys())[:5]}, "
                             f"unexpected {sorted(shadow.keys() - self.shadow.keys())[:5]})")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
