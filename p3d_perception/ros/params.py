# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""ROS parameters <-> the core's config dataclasses, declared with descriptors.

The dataclasses are the single source of truth for names, types, defaults and
validation; this module only maps them to ROS parameters (``segmentation.voxel_size``
and so on), so a new config field becomes a documented, type-checked parameter
without touching the node.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType

_SCALARS = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAYS = {
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
}


@dataclasses.dataclass
class ParamSpec:
    """One ROS parameter: its name, default, descriptor and how to read it back."""

    name: str
    default: Any
    descriptor: ParameterDescriptor
    #: True when the dataclass field is a tuple (ROS arrays come back as lists)
    as_tuple: bool = False


def param_type(annotation: Any) -> tuple[int, bool]:
    """ROS parameter type of a dataclass field annotation, and whether it is a tuple."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return param_type(args[0])
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    if origin in (tuple, list) and args and args[0] in _ARRAYS:
        return _ARRAYS[args[0]], origin is tuple
    raise TypeError(f'no ROS parameter type for {annotation!r}')


def descriptor(name: str, ptype: int, text: str, *, read_only: bool = False,
               float_range: tuple[float, float] | None = None,
               int_range: tuple[int, int] | None = None,
               constraints: str = '') -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, type=ptype, description=text, read_only=read_only,
                            additional_constraints=constraints)
    if float_range is not None:
        d.floating_point_range = [FloatingPointRange(
            from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0)]
    if int_range is not None:
        d.integer_range = [IntegerRange(from_value=int(int_range[0]),
                                        to_value=int(int_range[1]), step=0)]
    return d


def dataclass_specs(prefix: str, cls: type) -> list[ParamSpec]:
    """Return a ParamSpec per field of config dataclass ``cls``, named ``prefix.field``."""
    hints = typing.get_type_hints(cls)
    default_obj = cls()
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init or dataclasses.is_dataclass(hints[f.name]):
            continue
        try:
            ptype, as_tuple = param_type(hints[f.name])
        except TypeError:
            continue  # not expressible as a ROS parameter: stays at its default
        default = getattr(default_obj, f.name)
        if default is None:
            continue
        if as_tuple or isinstance(default, list):
            default = list(default)
        doc = (f.metadata.get('doc') if f.metadata else None) or _field_doc(cls, f.name)
        specs.append(ParamSpec(f'{prefix}.{f.name}', default,
                               descriptor(f'{prefix}.{f.name}', ptype, doc), as_tuple))
    return specs


def _field_doc(cls: type, name: str) -> str:
    """Use the ``#:`` comment above a field in the source as its description."""
    import inspect
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return name
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(f'{name}:'):
            comments = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith('#:'):
                comments.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            if comments:
                return ' '.join(comments)
            if '#' in stripped:
                return stripped.split('#', 1)[1].strip()
            return name
    return name


def group(values: dict[str, Any], prefix: str, specs: list[ParamSpec]) -> dict[str, Any]:
    """Collect ``prefix.*`` parameter values into a dict for config.from_dict."""
    out = {}
    for spec in specs:
        if spec.name.startswith(prefix + '.') and spec.name in values:
            value = values[spec.name]
            out[spec.name[len(prefix) + 1:]] = tuple(value) if spec.as_tuple else value
    return out
