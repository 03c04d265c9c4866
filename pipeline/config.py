"""Strict dict -> dataclass conversion shared by recipes and stage configs.

Unknown keys and wrong types raise `UserError` with the key's path and the expected form, e.g.
``recipe: stages[1].verify.dedup.minhash_treshold is not a known key; expected one of: minhash_threshold, over``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import UserError


def field_help(cls, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    return ""


def from_dict(cls, data: Any, path: str):
    """Build dataclass `cls` from `data`, checking every key and type. `path` prefixes error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of {_names(cls)}, not {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in fields:
            raise UserError(f"{path}.{key} is not a known key; expected one of: {', '.join(fields)}")
        kwargs[key] = convert(hints[key], value, f"{path}.{key}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{path} needs the key {missing[0]} ({field_help(cls, missing[0]) or 'required'})")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(path)
    return obj


def _names(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def convert(tp, value, path: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[-1] if len(errors) == 1 else f"{path} must be {_describe(tp)}, not {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise UserError(f"{path} must be one of {', '.join(map(str, get_args(tp)))}, not {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if item is str and isinstance(value, str):
                return [value]  # `stop: "###"` means `stop: ["###"]`
            raise UserError(f"{path} must be a list of {_describe(item)}, not {value!r}")
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a mapping, not {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{path} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{path} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{path} must be a string, not {value!r}")
        return value
    return value


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {_names(tp)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}; fix the syntax there") from None
    if data is None:
        raise UserError(f"{path} is empty; write the config as a YAML mapping")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a YAML mapping at the top level")
    return data


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
