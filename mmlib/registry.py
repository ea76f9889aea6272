"""Name -> class registries for recommenders and extractors.

Modules register themselves with a decorator; `mmlib.models` and `mmlib.extract` import every
module once so that the registries are complete after `import mmlib.models` / `mmlib.extract`.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from mmlib.errors import MmlibError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            setattr(obj, "registered_name", name)
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MmlibError(
                f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())} "
                f"(`mmlib list {self.kind}s`)."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS: Registry = Registry("model")
EXTRACTORS: Registry = Registry("extractor")
