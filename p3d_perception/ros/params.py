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

from p3d_perception.memory import MemoryConfig
from p3d_perception.pipeline import PipelineConfig
from p3d_perception.segmentation import SegmentationConfig

_T = ParameterType

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
    #: True when the field may be None, written as an empty array in ROS
    optional: bool = False


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


#: Ranges of the config dataclasses' float fields as ROS descriptors show them (rqt
#: sliders, `ros2 param describe`; rclpy refuses values outside, NaN included). The
#: dataclasses' validate() still decides what is valid; these only bound it for tools.
FLOAT_RANGES = {
    'memory.match_distance_m': (0.0, 10.0), 'memory.min_embedding_similarity': (-1.0, 1.0),
    'memory.expire_s': (0.0, 86400.0), 'memory.update_rate': (0.0, 1.0),
    'memory.absorb_margin_m': (0.0, 1.0),
    'segmentation.min_range': (0.0, 100.0), 'segmentation.max_range': (0.0, 100.0),
    'segmentation.voxel_size': (0.0, 1.0), 'segmentation.up_tolerance_deg': (0.0, 90.0),
    'segmentation.plane_distance': (0.0, 1.0), 'segmentation.min_support_extent': (0.0, 100.0),
    'segmentation.min_height': (0.0, 10.0), 'segmentation.max_height': (0.0, 10.0),
    'segmentation.cluster_tolerance': (0.0, 1.0), 'segmentation.crease_radius': (0.0, 1.0),
    'segmentation.crease_threshold': (0.0, 10.0), 'segmentation.min_cluster_size': (0.0, 10.0),
    'segmentation.max_cluster_size': (0.0, 100.0), 'segmentation.rim_tolerance': (0.0, 1.0),
    'segmentation.support_rise': (0.0, 10.0),
    'segmentation.colour_crease_threshold': (0.0, 10.0),
    'segmentation.colour_threshold': (0.0, 2.0),
    'segmentation.hole_cut_min_area': (0.0, 1.0),
}


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
        optional = default is None
        if optional and not as_tuple:
            continue  # a None scalar has no ROS form: stays at its default
        if as_tuple or isinstance(default, list):
            default = list(default or [])
        doc = (f.metadata.get('doc') if f.metadata else None) or _field_doc(cls, f.name)
        if optional:
            doc += ' (empty = not set)'
        name = f'{prefix}.{f.name}'
        specs.append(ParamSpec(name, default,
                               descriptor(name, ptype, doc, float_range=FLOAT_RANGES.get(name)),
                               as_tuple, optional))
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
                return stripped.split('#', 1)[1].lstrip(':').strip()
            return name
    return name


def group(values: dict[str, Any], prefix: str, specs: list[ParamSpec]) -> dict[str, Any]:
    """Collect ``prefix.*`` parameter values into a dict for config.from_dict."""
    out = {}
    for spec in specs:
        if spec.name.startswith(prefix + '.') and spec.name in values:
            value = values[spec.name]
            if spec.optional and len(value) == 0:
                value = None
            elif spec.as_tuple:
                value = tuple(value)
            out[spec.name[len(prefix) + 1:]] = value
    return out


def _node_specs() -> list[ParamSpec]:
    def spec(name, default, ptype, text, **kw):
        return ParamSpec(name, default, descriptor(name, ptype, text, **kw))
    return [
        spec('input_type', 'pointcloud', _T.PARAMETER_STRING,
             "'pointcloud' (subscribe to 'points') or 'depth' (subscribe to "
             "'depth/image_rect_raw' + 'depth/camera_info', time-synchronised)",
             read_only=True, constraints="one of: pointcloud, depth"),
        spec('input_qos', 'sensor_data', _T.PARAMETER_STRING,
             "'sensor_data' (best effort, what camera drivers publish) or 'reliable'",
             read_only=True, constraints='one of: sensor_data, reliable'),
        spec('target_frame', '', _T.PARAMETER_STRING,
             'Frame to perceive and publish in (needs tf2_ros); empty = the sensor frame'),
        spec('model_path', '', _T.PARAMETER_STRING,
             'Model folder (model.safetensors + model_card.yaml); empty = the bundled model. '
             'Changing it reloads the model without a restart'),
        spec('text_space', '', _T.PARAMETER_STRING,
             "Expected text space of the model (e.g. 'minilm'); empty = accept the model's"),
        spec('device', 'auto', _T.PARAMETER_STRING,
             "'auto' (CUDA when available), 'cuda' or 'cpu'",
             constraints='one of: auto, cuda, cpu'),
        spec('backend', 'torch', _T.PARAMETER_STRING, "'torch' or 'onnxruntime'",
             constraints='one of: torch, onnxruntime'),
        spec('precision', 'auto', _T.PARAMETER_STRING,
             "torch backend: 'auto' (fp16 on CUDA, bf16 on CPUs with AMX, else fp32) or "
             "'fp32'", constraints='one of: auto, fp32'),
        spec('vocabulary', [], _T.PARAMETER_STRING_ARRAY,
             'Labels to recognise; empty = the model\'s own vocabulary. Any words work '
             '(open vocabulary); changes apply at once'),
        spec('descriptions_file', '', _T.PARAMETER_STRING,
             'YAML of label: [lines saying what it looks like], over the bundled lexicon; '
             "read by models trained with label_text: descriptions. Empty = bundled only"),
        spec('top_k', PipelineConfig.top_k, _T.PARAMETER_INTEGER,
             'Alternative labels reported per detection', int_range=(1, 50)),
        spec('unknown_threshold', PipelineConfig.unknown_threshold, _T.PARAMETER_DOUBLE,
             "Below this score a detection is labelled 'unknown'", float_range=(0.0, 1.0)),
        spec('max_objects_per_frame', PipelineConfig.max_objects_per_frame,
             _T.PARAMETER_INTEGER, 'Largest clusters recognised per frame',
             int_range=(1, 1000)),
        spec('min_points_to_recognise', PipelineConfig.min_points_to_recognise,
             _T.PARAMETER_INTEGER, 'Smaller clusters are not recognised',
             int_range=(1, 100000)),
        spec('query.default_top_k', 3, _T.PARAMETER_INTEGER,
             '/query_object answers at most this many objects when the request says 0',
             int_range=(1, 100)),
        spec('query.default_min_score', 0.3, _T.PARAMETER_DOUBLE,
             '/query_object min_score when the request gives a negative one (its default)',
             float_range=(0.0, 1.0)),
        spec('query.highlight_s', 10.0, _T.PARAMETER_DOUBLE,
             'How long the query answer stays highlighted in RViz (s)',
             float_range=(0.0, 3600.0)),
        spec('max_frame_age_s', 1.0, _T.PARAMETER_DOUBLE,
             'Frames older than this when they arrive are dropped (0 = never)',
             float_range=(0.0, 3600.0)),
        spec('depth_sync_slop_s', 0.02, _T.PARAMETER_DOUBLE,
             'Largest stamp difference between a depth image and its camera_info',
             float_range=(0.0, 1.0)),
        spec('publish_clustered_cloud', True, _T.PARAMETER_BOOL,
             "Publish 'p3d/clusters', the object points coloured by label"),
        spec('frame_thread_nice', 10, _T.PARAMETER_INTEGER,
             'How much lower than queries frames run (OS nice of the frame thread): a query '
             'is answered first when both want the CPU. 0 = same priority',
             int_range=(0, 19), read_only=True),
        spec('diagnostics_period_s', 1.0, _T.PARAMETER_DOUBLE,
             "Period of the '/diagnostics' status (rates, latencies, drops)",
             float_range=(0.1, 60.0), read_only=True),
    ]


def all_specs() -> list[ParamSpec]:
    """Every parameter the node declares (also used to check config/perception.yaml)."""
    return (_node_specs() + dataclass_specs('memory', MemoryConfig)
            + dataclass_specs('segmentation', SegmentationConfig))
