"""Small shared helpers: broadcasting, argument validation and the generic registry."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

__all__ = ["Registry", "append_dims", "as_time", "check_positive", "check_int", "check_choice",
           "SMALL_EXAMPLE", "policy_threads", "thread_policy"]

SMALL_EXAMPLE = 256   # values per example up to which one CPU thread is used (see `policy_threads`)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample `(B,)` tensor broadcasts against rank `ndim`."""
    if v.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return time `t` (float, 0-d or `(B,)` tensor) as a `(B,)` tensor on `x`'s device and dtype."""
    B = x.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a tensor of shape ({B},), found {type(t).__name__}")
    if not isinstance(t, torch.Tensor):
        return torch.full((B,), float(t), device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.to(device=x.device, dtype=x.dtype).expand(B)
    if t.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},) to match the batch of x, found {tuple(t.shape)}")
    return t.to(device=x.device, dtype=x.dtype)


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


def policy_threads(data_shape: Sequence[int], device: Any = "cpu", threads: int = 0) -> int | None:
    """The CPU thread count for work on examples of `data_shape`, or None to keep torch's setting.

    `threads` > 0 wins (the config's `threads`); otherwise examples of at most `SMALL_EXAMPLE`
    values (2-D points, 8x8 digits) get one thread: their matrix products are too small to split,
    and on a shared machine the intra-op synchronisation made sampling 2-D points with 2 threads
    up to 30x slower than with one. Not on CPU devices: None.
    """
    if torch.device(device if device is not None else "cpu").type != "cpu":
        return None
    if threads:
        return threads
    return 1 if math.prod(tuple(data_shape)) <= SMALL_EXAMPLE else None


@contextlib.contextmanager
def thread_policy(data_shape: Sequence[int], device: Any = "cpu", threads: int = 0):
    """Run the block with `policy_threads(data_shape, device, threads)` CPU threads, then restore.

    An explicit `threads` is set as given; the automatic choice (one thread for small examples)
    only lowers the count.
    """
    n, before = policy_threads(data_shape, device, threads), torch.get_num_threads()
    if n is not None and (threads or n < before):
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class Registry(Mapping[str, Any]):
    """A named dict of components filled by a `register(name)` decorator.

    Duplicate names are refused; looking up an unknown name raises a `KeyError` that lists the
    registered names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} registry: name must be a non-empty str, found {name!r}")

        def deco(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} registry: {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def __getitem__(self, name: str) -> Any:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
