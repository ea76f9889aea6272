"""Strict construction of typed specs (dataclasses) from YAML mappings.

Every spec in mmlib is a dataclass; `from_mapping` fills it from a dict and rejects unknown keys,
wrong types, missing required fields, non-finite numbers and values outside a field's declared
range, with an error that names where the value came from (e.g. "params/default.yaml:
models.VBPR.lr"). A range is declared once, next to the field: `factors: int = param(64, ge=1)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmlib.errors import MmlibError

S = TypeVar("S")


_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def param(default: Any, **bounds: float) -> Any:
    """A dataclass field with a declared range, checked by `from_mapping` whenever a value is given:
    `param(64, ge=1)`, `param(0.1, ge=0, lt=1)`. A list default is copied per instance."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"param(): unknown bound(s) {sorted(unknown)}; use {sorted(_BOUNDS)}")
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=bounds)
    return dataclasses.field(default=default, metadata=bounds)


def _check_bounds(value: Any, bounds: typing.Mapping, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not isinstance(v, (int, float)):
            continue
        for name, bound in bounds.items():
            test, symbol = _BOUNDS[name]
            if not test(v, bound):
                raise MmlibError(f"{where.rstrip(':')}: {value!r} is out of range; it must be "
                                 f"{symbol} {bound}.")


def load_yaml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MmlibError(f"{path}: no such params file.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MmlibError(f"{path}: malformed YAML ({exc}). Fix the syntax and re-run.") from exc
    if not isinstance(data, dict):
        raise MmlibError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    return data


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) a YAML value against a type hint."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        options = [o for o in options if o is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own, more precise message
            return _check_type(value, options[0], where)
        for option in options:
            try:
                return _check_type(value, option, where)
            except MmlibError:
                pass
        raise MmlibError(f"{where.rstrip(':')}: {value!r} does not match {hint}.")
    if hint is type(None):
        if value is None:
            return None
        raise MmlibError(f"{where.rstrip(':')}: expected null, got {value!r}.")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise MmlibError(f"{where.rstrip(':')}: {value!r} is not one of {list(typing.get_args(hint))}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MmlibError(f"{where.rstrip(':')}: expected a list, got {value!r}.")
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        items = [_check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise MmlibError(f"{where.rstrip(':')}: expected a mapping, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise MmlibError(f"{where.rstrip(':')}: {value!r} is not a finite number.")
    if isinstance(hint, type):
        if hint is int and isinstance(value, bool):
            raise MmlibError(f"{where.rstrip(':')}: expected an integer, got {value!r}.")
        if isinstance(value, hint):
            return value
        raise MmlibError(f"{where.rstrip(':')}: expected {hint.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def _join(where: str, key: str) -> str:
    """'params/x.yaml:' + 'models' -> 'params/x.yaml: models'; 'a.b' + 'c' -> 'a.b.c'."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def from_mapping(cls: type[S], data: Any, where: str) -> S:
    """Build dataclass `cls` from `data`, rejecting unknown keys and checking types."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise MmlibError(f"{where.rstrip(':')}: expected a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MmlibError(
            f"{where.rstrip(':')}: unknown key {key!r}.{hint} Allowed keys: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], _join(where, name))
            _check_bounds(kwargs[name], f.metadata, _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MmlibError(f"{where.rstrip(':')}: missing required key {name!r}.")
    try:
        return cls(**kwargs)
    except MmlibError as exc:  # a rule of the dataclass's __post_init__: say which file / field
        raise MmlibError(_prefixed(where, str(exc))) from None
    except (TypeError, ValueError) as exc:
        raise MmlibError(f"{where.rstrip(':')}: {exc}") from exc


def _prefixed(where: str, message: str) -> str:
    """`message` after `where`, once: unchanged if it already starts with `where`, and a message
    that starts with the last field of `where` continues it ("params/x.yaml: dataset" +
    "dataset.kcore=0 ..." -> "params/x.yaml: dataset.kcore=0 ...")."""
    where = where.rstrip(":")
    if not where or message.startswith(where):
        return message
    head, _, tail = where.rpartition(": ")
    if head and re.match(re.escape(tail) + r"(?=[.:=\s(\[]|$)", message):
        return f"{head}: {message}"
    return f"{where}: {message}"
