# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The one configuration system: typed dataclasses filled from YAML or dicts.

Every tunable stage (segmentation, model, training, node) declares a dataclass
with defaults; YAML files and ROS parameters only override fields. Unknown keys
are errors, not silently ignored, because a misspelt parameter that does nothing
is the most expensive kind of bug on a robot.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from pathlib import Path
from typing import Any, Mapping, Type, TypeVar

import yaml

T = TypeVar('T')


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return from_dict(annotation, value, prefix=where + '.')
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], where)
        return value
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f'{where}: expected {len(args)} values, got {len(value)}')
        return tuple(_coerce(v, a, where) for v, a in zip(value, args or [Any] * len(value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        return [_coerce(v, args[0], where) if args else v for v in value]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}: expected a number, got {value!r}')
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f'{where}: expected an integer, got {value!r}')
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}: expected true/false, got {value!r}')
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}: expected a string, got {value!r}')
        return value
    return value


def require_finite(obj: Any, prefix: str = '') -> None:
    """Refuse NaN and inf in every float field of a config dataclass (nested ones too).

    Every range check in a ``validate()`` is a comparison, and NaN fails none of them,
    so ``expire_s: .nan`` passed every check and broke the first frame; one generic
    check keeps new fields covered without anyone writing it again. Floats inside
    tuples and lists (viewpoints, crop boxes) count as well.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            require_finite(value, where + '.')
            continue
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if (isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
                    and not math.isfinite(float(v))):
                raise ConfigError(f'{where} must be a finite number, got {v}')


def from_dict(cls: Type[T], data: Mapping[str, Any] | None, prefix: str = '') -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f'unknown {cls.__name__} key(s): {", ".join(prefix + k for k in unknown)}; '
            f'valid keys: {", ".join(sorted(names))}')
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    require_finite(obj, prefix)
    validate = getattr(obj, 'validate', None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict:
    """Plain dict (lists instead of tuples) ready for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a clear error when the file is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    with path.open('r', encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a YAML mapping at the top level')
    return data


def load(cls: Type[T], path: str | Path | None = None, section: str | None = None,
         overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults <- YAML file (optionally one section of it) <- overrides."""
    data: dict = {}
    if path is not None:
        data = load_yaml(path)
        if section is not None:
            data = data.get(section, {}) or {}
    data.update(overrides or {})
    return from_dict(cls, data)
