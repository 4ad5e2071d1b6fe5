"""The one config loader: a mapping (Hydra / OmegaConf / plain dict) -> a validated dataclass.

Every typed config of the project is built here: the trainer's `PPOConfig` and the sections the plugged components
own (`search`, `reward`, the curriculum keys). One function, so every section fails the same way:
- unknown keys raise `ConfigError` naming each with its section prefix and listing the valid keys there;
- values are checked against the field's annotation (ints widen to floats, one string becomes a one-item list of
  strings, `X | None` accepts null) and mistyped ones raise naming the key;
- nested dataclasses are built recursively with `section.field.` prefixes;
- the class's own validation runs last: a class with a `validate(section)` method is built without running its
  `__post_init__` (which validates under the class's default section name) and then validated under the section
  it was loaded from, so a curriculum read from the `search` section reports `search.start_threshold`; any other
  class is constructed normally (its `__post_init__`, if any, runs).
Defaults live in the dataclass fields only; the loader never supplies one of its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, mistyped, or inconsistent with another."""


def plain(data: Any, name: str) -> dict[str, Any]:
    """`data` as a plain dict: None -> {}, an OmegaConf DictConfig resolved; anything but a mapping raises."""
    if data is None:
        return {}
    if type(data).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name or 'the config'} must be a mapping, got {type(data).__name__}")
    return dict(data)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check / coerce `value` to annotation `tp`; returns (ok, coerced)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if isinstance(value, str) and typing.get_args(tp) == (str,):
                return True, [value]  # a single path for a list of files
            return False, value
        (inner,) = typing.get_args(tp) or (Any,)
        out = []
        for v in value:
            ok, cv = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(cv)
        return True, out
    if tp is Any or tp is dict or origin is dict:
        return isinstance(value, dict) or tp is Any, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is dataclasses.MISSING:
        raise ConfigError(f"{f.name} has no default and must be given")
    return f.default


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from `data` (see the module docstring); `prefix` is the section, e.g. "search."."""
    data = plain(data, prefix.rstrip("."))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)} in {where}; "
            f"valid keys there: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name in fields.keys() & data.keys():
        tp, value, key = hints[name], data[name], prefix + name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping) and type(value).__name__ != "DictConfig":
                raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
            kwargs[name] = from_dict(tp, value, key + ".")
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            from verl.utils.tracking import _secret_name  # a secret's value is never shown

            shown = "***" if _secret_name(key) else repr(value)
            raise ConfigError(f"{key} expects {getattr(tp, '__name__', tp)}, got {shown} ({type(value).__name__})")
        kwargs[name] = coerced
    validate = getattr(cls, "validate", None)
    if not callable(validate):
        return cls(**kwargs)
    obj = cls.__new__(cls)
    for name, f in fields.items():
        object.__setattr__(obj, name, kwargs[name] if name in kwargs else _default(f))
    obj.validate(prefix.rstrip("."))
    return obj
