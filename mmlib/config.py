"""Strict construction of typed specs (dataclasses) from YAML mappings.

Every spec in mmlib is a dataclass; `from_mapping` fills it from a dict and rejects unknown keys,
wrong types and missing required fields with an error that names where the value came from
(e.g. "params/default.yaml: models.VBPR.lr").
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmlib.errors import MmlibError

S = TypeVar("S")


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
            return float(value)
        except ValueError:
            pass
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
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MmlibError(f"{where.rstrip(':')}: missing required key {name!r}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MmlibError):
            raise
        raise MmlibError(f"{where.rstrip(':')}: {exc}") from exc
