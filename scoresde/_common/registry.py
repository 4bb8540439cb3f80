"""`Registry`: a name -> object mapping filled by a `register(name)` decorator, refusing duplicates,
whose KeyError lists the names it holds (SDEs, samplers, networks, tasks, preconditioners).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping


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
