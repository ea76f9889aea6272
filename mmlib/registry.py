"""Name -> class registries for recommenders and extractors.

Modules register themselves with a decorator; a registry imports its package on first use, and the
package imports every module in it (eagerly, or through its `load_all()`), so the registry is
always complete.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, TypeVar

from mmlib.errors import MmlibError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package  # importing it registers every entry
        self._entries: dict[str, T] = {}

    def _load(self) -> None:
        package = importlib.import_module(self.package)
        load_all = getattr(package, "load_all", None)  # a package that imports its modules lazily
        if load_all is not None:
            load_all()

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            setattr(obj, "registered_name", name)
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MmlibError(
                f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())} "
                f"(`mmlib list {self.kind}s`)."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


MODELS: Registry = Registry("model", "mmlib.models")
EXTRACTORS: Registry = Registry("extractor", "mmlib.extract")
