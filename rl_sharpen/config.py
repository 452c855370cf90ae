"""ml_collections ConfigDicts in, frozen dataclasses out.

Experiments are written as `configs/<x>.py` files whose `get_config(arg)` returns a ConfigDict
(overridable from the command line with `--config.a.b=v`). `from_config_dict(Cls, cd)` turns it
into the frozen dataclass the code uses, checking every field: an unknown name, a value of the
wrong type or a value outside a Literal's choices raises an error naming the field and what is
allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import types
import typing
from typing import Any, Literal, Mapping

import ml_collections


class ConfigError(ValueError):
    pass


class SourceError(ConfigError, OSError):
    """A config field names a model, tokenizer or dataset that cannot be read (no such path, hub offline)."""


def _plain(value):
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return value.to_dict()
    return value


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_config_dict(tp, value, path)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}={value!r}; allowed: {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}={value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is tuple:
        pairs = len(args) == 2 and args[1] is Ellipsis and len(typing.get_args(args[0])) == 2
        if pairs and isinstance(_plain(value), Mapping):  # ((name, weight), ...) written as a dict
            value = tuple(_plain(value).items())
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r}; expected a sequence for {tp}")
        if pairs and not all(isinstance(v, (list, tuple)) for v in value):
            raise ConfigError(f"{path}={value!r}; expected pairs {args[0]}, e.g. (('name', 0.1),); on the command "
                              "line a dict keeps only its keys, so write the pairs")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{path}={value!r}; expected {len(args)} entries for {tp}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin is dict or tp is dict:
        value = _plain(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r}; expected a mapping")
        if args:
            return {_convert(args[0], k, f"{path}.key"): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r}; expected a float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r}; expected an int")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}; expected True or False")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r}; expected a string")
        return value
    return value


def from_config_dict(cls, cd: Mapping[str, Any] | ml_collections.ConfigDict | None, path: str = "config"):
    """Frozen dataclass `cls` from a (possibly partial) ConfigDict; missing fields take defaults."""
    data = _plain(cd) or {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}={data!r}; expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown field of {cls.__name__}; allowed: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(hints[name], value, f"{path}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e


def to_config_dict(obj) -> ml_collections.ConfigDict:
    """The ConfigDict that round-trips to `obj` (for defaults in configs/ files). A field that is None
    (typed `X | None`) becomes a placeholder of type X, so `--config.a.b=v` can still set it."""
    return ml_collections.ConfigDict(_overridable(obj))


def _overridable(obj):
    hints = typing.get_type_hints(type(obj))
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            value = _overridable(value)
        elif value is None:
            types_ = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
            if len(types_) == 1 and types_[0] in (int, float, str, bool):
                value = ml_collections.config_dict.placeholder(types_[0])
        else:
            value = copy.deepcopy(value)
        out[field.name] = value
    return out


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, spelled as on the command line: "configs/demo.py" or
    "configs/demo.py:tiny" (for notebooks, scripts and tests; `main` reads --config itself)."""
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"config file {file!r} does not exist")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(file))[0], file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
