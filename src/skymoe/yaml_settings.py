"""Typed settings from YAML: dataclasses filled from nested dicts, and dotted overrides.

``from_dict`` checks every key against a dataclass's fields (an unknown key names
the section and the closest allowed key; a key listed in the class's ``MOVED``
says where it went, as a full dotted key) and every value against the field's type, so a typo fails
before any work starts. ``key=value`` overrides from the command line patch the
nested dict first (``optim.lr=3e-4``). The training config
(:mod:`skymoe.train.config`) and its ``model:`` section
(:class:`skymoe.model.configuration.ModelSettings`) are built with them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from skymoe.errors import ConfigError


# ---------------------------------------------------------------- building from plain data


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and type."""
    if not isinstance(data, dict):
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"'{prefix or '<root>'}' must be a mapping (keys: {keys}), got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    moved = getattr(cls, "MOVED", {})
    for key in data:
        if key in moved:
            raise ConfigError(f"'{_join(prefix, key)}' has moved: use '{moved[key]}'")
        if key not in names:
            raise ConfigError(unknown_key_message(_join(prefix, key), prefix, names))
    return cls(**{key: _coerce(hints[key], value, _join(prefix, key)) for key, value in data.items()})


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-4" as a string; accept anything float() parses exactly
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"'{key}' must be of type {tp.__name__}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------- overrides and files


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Patch nested ``data`` in place with ``a.b.c=value`` strings (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML file holds, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def unknown_key_message(key: str, section: str, allowed: list[str]) -> str:
    """The unknown key, its section and the closest allowed key (difflib)."""
    close = difflib.get_close_matches(key.rpartition(".")[2], allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    where = f"under '{section}'" if section else "at the top level"
    return f"unknown key '{key}' {where}{hint} allowed: {', '.join(allowed)}"
