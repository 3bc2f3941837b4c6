"""Plain data → one frozen dataclass of the config schema, checked: unknown keys, wrong
types, out-of-range values (``metadata={"range": (lo, hi)}``) and the class's own cross-field
rules (its ``check()`` method) are one :class:`ConfigError` naming the key, where its value came
from and the fix. YAML keys may use ``-`` where the field uses ``_`` (``smoothing-size``)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from raydiff.config.compat import RENAMED
from raydiff.config.fields import PLAIN_NAME_FIX, PLAIN_NAME_PROBLEM, Invalid, is_plain_name
from raydiff.config.sources import Where, at, blame, fix_in
from raydiff.errors import ConfigError


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    if origin in (Mapping, dict):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, key: str, where: Where) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's form."""
    origin = get_origin(tp)
    here = at(where, key)
    bad = ConfigError(here, f"key '{key}' must be {type_name(tp)}, got {value!r}.", f"correct '{key}' {fix_in(here)}.")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise bad
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return convert(value, arg, key, where)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(here, f"key '{key}' is {value!r}; valid choices: {', '.join(map(str, choices))}.",
                              f"set '{key}' to one of them.")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return build(tp, value, key, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        return tuple(convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise bad
        _k_tp, v_tp = get_args(tp)
        return {str(k): convert(v, v_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(here, f"key '{key}' is {value}; it must be a finite number.", f"give '{key}' a number.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def build(cls: type, data: Mapping[str, Any], prefix: str, where: Where) -> Any:
    """``cls(**data)``, every key and value checked, then ``cls.check`` (its cross-field rules)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key).replace("-", "_")
        key = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if key in RENAMED:
            raise ConfigError(at(where, key), f"key '{key}' was renamed to '{RENAMED[key]}'.",
                              f"write '{RENAMED[key]}' instead.")
        if name not in fields:
            raise ConfigError(at(where, key), f"unknown key '{key}'.", f"use one of: {', '.join(sorted(fields))}.")
        converted = convert(value, hints[name], key, where)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if (lo is not None and converted < lo) or (hi is not None and converted > hi):
                span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(at(where, key), f"key '{key}' = {converted} is out of range {span}.",
                                  f"pick a value in {span}.")
        kwargs[name] = converted
    obj = cls(**kwargs)
    check(obj, prefix, where)
    return obj


def check(obj: Any, prefix: str, where: Where) -> None:
    """``obj.check(prefix)`` when its class has cross-field rules; an :class:`Invalid` becomes a
    ConfigError blamed on the first of its keys that ``--set`` (or a variable) gave, else the file."""
    rule = getattr(obj, "check", None)
    if rule is None:
        return
    try:
        rule(prefix)
    except Invalid as err:
        raise ConfigError(blame(where, *err.keys), err.message, err.fix) from None


def check_plain_name(value: str, key: str, where: str) -> str:
    """``value`` if it is a plain folder name (no ``/``, ``..``, leading dot); else ConfigError."""
    if not is_plain_name(value):
        raise ConfigError(where, PLAIN_NAME_PROBLEM.format(key=key, value=value), PLAIN_NAME_FIX)
    return value


def mapping(value: Any, key: str, where: Where) -> Mapping[str, Any]:
    """A section's body: ``None`` is empty; anything but a mapping is an error naming ``key``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        here = at(where, key)
        raise ConfigError(here, f"key '{key}' must be a mapping, got {value!r}.", f"correct '{key}' {fix_in(here)}.")
    return value
