"""Name → object registries (timm / torchdistill style), with wildcard listing.

    LOSSES = Registry("loss")

    @LOSSES.register("kd")
    class HintonKD(nn.Module): ...

    LOSSES.get("kd")           # the class
    LOSSES.names("d*")         # ['dist', 'dkd']
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from edgekd.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """``lazy`` maps names to modules that register them when first asked for (so a device-side process imports
    only the backend it runs, and nothing imports torch by listing tasks)."""

    def __init__(self, kind: str, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy = dict(lazy or {})

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            import importlib

            importlib.import_module(self._lazy[name])
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UsageError(f"unknown {self.kind} {name!r}", f"choose one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in {*self._items, *self._lazy} if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
