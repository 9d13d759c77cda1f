"""A run declared in a small YAML file, loaded into a typed dataclass.

Keys are the dataclass's field names (``-`` and ``_`` alike). An unknown key, at the top or
inside a nested mapping, is one line naming the file, its line and the key, with a "did you
mean"; a value of the wrong type names the key and the type it needs. Values given on the
command line (``overrides``, already typed) replace the file's. Each key remembers where it
came from (``run.where["dpo.lr"]`` is ``"run.yaml:7"`` or the flag), so later checks can point
at it. Paths in the file are taken as on the command line: relative to the current folder.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from stmed.errors import InputError, did_you_mean
from stmed.options import read_yaml


def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None):
    """An instance of ``cls`` from the YAML file at ``path`` (None: the defaults) with ``overrides``
    on top; ``flags`` names the flag of each overridable field, for ``where``."""
    values, where = ({}, {}) if path is None else _read(cls, Path(path))
    hints = typing.get_type_hints(cls)
    for name, value in (overrides or {}).items():
        old = values.get(name)
        if isinstance(value, dict) and isinstance(old, dict):
            if dataclasses.is_dataclass(typing.get_args(hints[name])[-1]):
                value = {k: old.get(k, v) for k, v in value.items()}  # a selection: each keeps the file's settings
            else:
                value = {**old, **value}  # settings: the flag's keys over the file's
        values[name] = value
        where[name] = flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        for key in overrides[name] if isinstance(overrides[name], dict) else ():
            where[f"{name}.{key}"] = flag
    assert all(n in hints for n in values), f"{cls.__name__}: overrides name no field: {set(values) - set(hints)}"
    run = cls(**values)
    run.where.update(where)
    return run


def _read(cls, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    data, node = read_yaml(path, f"{path}: no such file (the run's declaration)")
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys to values, got {_show(data)}")
    lines: dict[str, int] = {}
    _lines(node, "", lines)
    where: dict[str, str] = {}
    values = _fields(cls, data, "", path, lines, where)
    return values, where


def _lines(node, prefix: str, out: dict[str, int]) -> None:
    """The line of every mapping key, by its dotted path."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            raw = str(key.value)  # a field's key is looked up with _ for -, a name (vqa-rad) as written
            out[prefix + raw] = out[prefix + raw.replace("-", "_")] = key.start_mark.line + 1
            _lines(value, prefix + raw + ".", out)


def _fields(cls, data: dict, prefix: str, path: Path, lines: dict, where: dict) -> dict[str, Any]:
    """``data``'s keys checked against ``cls``'s fields and their values against the field types."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "where"]
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        at = f"{path}:{lines.get(prefix + name, '?')}"
        if name not in known:
            raise InputError(f"{at}: unknown key {prefix + str(key)!r}{did_you_mean(name, known)}; "
                             f"known: {', '.join(known)}")
        where[prefix + name] = at
        values[name] = _typed(value, hints[name], prefix + name, path, lines, where)
    return values


def _typed(value, hint, key: str, path: Path, lines: dict, where: dict):
    """``value`` as a ``hint``, or one InputError line naming the key."""
    at = f"{path}:{lines.get(key, '?')}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(value, arg, key, path, lines, where)
            except InputError:
                continue
    elif dataclasses.is_dataclass(hint):
        if value is None:
            return hint()
        if isinstance(value, dict):
            return hint(**_fields(hint, value, key + ".", path, lines, where))
    elif origin is list:
        items = value if isinstance(value, list) else [value]  # one value stands for a list of one
        return [_typed(v, args[0], key, path, lines, where) for v in items]
    elif origin is dict:
        if isinstance(value, list) and dataclasses.is_dataclass(args[1]) and all(isinstance(v, str) for v in value):
            return {v: args[1]() for v in value}  # [a, b]: each with its default settings
        if value is None:
            return {}
        if isinstance(value, dict):
            for k in value:
                where[f"{key}.{k}"] = f"{path}:{lines.get(f'{key}.{k}', '?')}"
            return {str(k): _typed(v, args[1], f"{key}.{k}", path, lines, where) for k, v in value.items()}
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise AssertionError(f"{key}: declarations cannot hold a {hint!r}")
    raise InputError(f"{at}: {key}: expected {_describe(hint)}, got {_show(value)}")


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if origin is dict:
        inner = "settings" if dataclasses.is_dataclass(args[1]) or args[1] is Any else _describe(args[1])
        return f"a mapping of names to {inner}" + (" (or a list of names)" if dataclasses.is_dataclass(args[1]) else "")
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _show(value) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]
