"""One registry idiom for every kind of plug-in users extend: search spaces, datasets,
zero-cost measures, distillation losses, campaign schemes, search strategies, backends.

A registry maps names to entries; ``@REG.register("name")`` (or ``REG.register("name",
entry)``) adds one; ``REG.get(name)`` finds it, and also accepts ``module:attr`` (the way the
command line names a user's own plug-in: the module is imported, from the current folder
too, and ``attr`` read from it). An unknown name is one error with the closest match.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from primitives.errors import GpProxyError

__all__ = ["Registry", "load_plugin"]

T = TypeVar("T")


def load_plugin(spec: str, what: str) -> object:
    """``module:attr`` imported (the current folder is searched too, as ``python -m`` does)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise GpProxyError(f"{what} {spec!r}: a plug-in is named module:attr")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise GpProxyError(f"{what} {spec!r}: cannot import {module!r} ({exc})") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise GpProxyError(f"{what} {spec!r}: module {module!r} has no {attr!r}") from None


class Registry(Generic[T]):
    """Named entries of one kind; built-ins are added by ``loader`` on first use."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str, entry: T | None = None, *, replace: bool = False
                 ) -> Callable[[T], T] | T:
        """Add ``entry`` under ``name``; without ``entry``, a decorator. Registering a name
        twice is an error unless ``replace``."""

        def add(item: T) -> T:
            self._load()
            if name in self._entries and not replace:
                raise GpProxyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = item
            return item

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        self._load()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return load_plugin(name, self.kind)  # type: ignore[return-value]
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise GpProxyError(f"unknown {self.kind} {name!r}{hint}; choose from "
                           f"{', '.join(sorted(self._entries))} or name a plug-in module:attr")

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)
