"""Packages that import a name's module only when the name is first used (PEP 562), so that
`import mmlib.data` or `import mmlib.io` costs nothing until pandas or torch is really needed."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, table: dict[str, str]):
    """`__getattr__` and `__dir__` for `package`: a name in `table` (name -> module) is imported
    from its module on first access and then kept in the package like an ordinary attribute."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            setattr(sys.modules[package], name, value)  # once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
