"""Argument validation at the API boundary: messages name the argument, what was expected and what was found."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch


__all__ = ["check_positive", "check_real", "check_int", "check_choice", "check_fn", "check_generator"]


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a finite positive (or non-negative) real number and return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, found {type(value).__name__} {value!r}")
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected a finite {kind} number, found {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Validate an integer >= `minimum` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, found {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, found {value}")
    return value


def check_choice(name: str, value: Any, choices: Mapping | list | tuple) -> Any:
    """Validate that `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, found {value!r}")
    return value


def check_real(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
               interval: str = "[]") -> float:
    """A finite real number within [lo, hi] (`interval` "()", "(]", "[)" opens either end; None: unbounded)."""
    left, right = interval
    span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number in {span}, found {type(value).__name__} {value!r}")
    inside = (math.isfinite(value) and (lo is None or (lo < value if left == "(" else lo <= value))
              and (hi is None or (value < hi if right == ")" else value <= hi)))
    if not inside:
        raise ValueError(f"{name}: expected a finite number in {span}, found {value!r}")
    return float(value)


def check_fn(fn: Any, name: str) -> Callable:
    """A callable fn(x, t) (a score, noise or denoiser function)."""
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable {name}(x, t), found {type(fn).__name__}")
    return fn


def check_generator(generator: Any) -> None:
    """A torch.Generator or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, found {type(generator).__name__}")
