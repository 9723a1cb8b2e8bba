# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The perception node: clouds in; detections, markers and /query_object out.

A thin shell over :class:`p3d_perception.pipeline.Pipeline`: it converts
messages, keeps only the newest frame (a robot wants what is there now, not a
backlog), publishes, and maps parameters to the core's config dataclasses.

Two flavours share everything in :class:`PerceptionBase`: the plain
:class:`PerceptionNode` (the default executable, ``perception_node``) configures and
activates itself at start-up; the managed node in ``ros/managed_node.py`` does the
same steps on ``ros2 lifecycle set`` transitions.

One rule holds for every callback: no input takes the process down. A frame that
cannot be converted or processed is counted with its reason on ``/diagnostics`` and
skipped; a parameter change that fails for any reason is a rejected change; a query
that fails gets ``success=false`` and the reason. Frames, queries and housekeeping run
in separate callback groups on a multi-threaded executor, so a query is answered while
a frame is being processed.
"""

from __future__ import annotations

import collections
import gc
import math
import signal
import statistics
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rcl_interfaces.msg import ParameterType, SetParametersResult
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from p3d_perception import config as cfg
from p3d_perception.cloud import Cloud, depth_image_to_cloud, pointcloud2_to_cloud
from p3d_perception.pipeline import Pipeline, PipelineConfig, QueryError
from p3d_perception.recognize import ModelError, Recognizer
from p3d_perception.resources import default_model_path
from p3d_perception.ros import messages
from p3d_perception.ros.executor import NodeExecutor
from p3d_perception.ros.frame_worker import FrameWorker
from p3d_perception.ros.params import all_specs, group

try:  # vision_msgs is optional: publish the standard message too when it is there
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - not installable from PyPI
    Detection3DArray = None

_ARRAY_TYPES = {ParameterType.PARAMETER_STRING_ARRAY: Parameter.Type.STRING_ARRAY,
                ParameterType.PARAMETER_DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY,
                ParameterType.PARAMETER_INTEGER_ARRAY: Parameter.Type.INTEGER_ARRAY,
                ParameterType.PARAMETER_BOOL_ARRAY: Parameter.Type.BOOL_ARRAY}
_EMPTY_ARRAY_INPUTS = (Parameter.Type.BYTE_ARRAY, Parameter.Type.BOOL_ARRAY,
                       Parameter.Type.INTEGER_ARRAY, Parameter.Type.DOUBLE_ARRAY,
                       Parameter.Type.STRING_ARRAY, Parameter.Type.STRING)
#: parameters whose change needs the model reloaded
_MODEL_PARAMS = ('model_path', 'text_space', 'device', 'backend', 'precision')
_CHOICES = {'input_type': ('pointcloud', 'depth'),
            'input_qos': ('sensor_data', 'reliable'),
            'device': ('auto', 'cuda', 'cpu'), 'backend': ('torch', 'onnxruntime'),
            'precision': ('auto', 'fp32')}


class StartupError(RuntimeError):
    """A parameter or file that makes the node unable to start; main prints one line."""


def input_qos(name: str) -> QoSProfile:
    """The subscription profile for camera input.

    Depth 1 either way: while a frame is processed only the newest one waits, older
    ones are dropped. ``sensor_data`` (best effort) matches every camera driver;
    ``reliable`` only matches reliable publishers, and makes a slow link back-pressure.
    """
    reliability = (ReliabilityPolicy.BEST_EFFORT if name == 'sensor_data'
                   else ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=1, reliability=reliability, durability=DurabilityPolicy.VOLATILE,
                      history=HistoryPolicy.KEEP_LAST)


class PerceptionBase:
    """Parameters, pipeline, callbacks and outputs shared by both node flavours.

    Mixed into an rclpy ``Node`` (or ``LifecycleNode``); the steps are split the way
    the managed node's transitions need them: declare, configure (load the model),
    activate (subscribe), deactivate, cleanup.
    """

    pipeline: Pipeline | None

    # ----------------------------------------------------------- declaration
    def _declare(self) -> None:
        self._specs = {s.name: s for s in all_specs()}
        for s in self._specs.values():
            # rclpy cannot infer an array type from an empty list: declare the type itself,
            # then give it its empty value, so bulk `get_parameters` (param dump, rqt) works
            if s.default == []:
                self.declare_parameter(s.name, _ARRAY_TYPES[s.descriptor.type], s.descriptor)
                try:
                    self.get_parameter(s.name).value
                except ParameterUninitializedException:
                    self.set_parameters([Parameter(s.name, _ARRAY_TYPES[s.descriptor.type],
                                                   [])])
            else:
                self.declare_parameter(s.name, s.default, s.descriptor)
        self._params = {name: self.get_parameter(name).value for name in self._specs}
        problem = self._check_values(self._params)
        if problem:
            raise StartupError(problem)
        self._stats = collections.Counter()
        #: set when shutdown starts: a callback still in flight may then find its
        #: publisher destroyed, which is the end of the process, not an error
        self.closing = False
        self._reasons: dict[str, str] = {}
        self._latency = collections.defaultdict(lambda: collections.deque(maxlen=200))
        self._frame_times = collections.deque(maxlen=50)
        self._lock = threading.Lock()  # one frame or one reconfiguration at a time
        self.pipeline = None
        self._model_vocabulary: list[str] = []
        self._tf = None
        self._subscriptions: list = []
        self._frames_group = MutuallyExclusiveCallbackGroup()
        self._query_group = MutuallyExclusiveCallbackGroup()
        self._misc_group = ReentrantCallbackGroup()
        self._frames = FrameWorker(
            lambda text: self.get_logger().warning(text, throttle_duration_sec=5.0),
            nice=self._params['frame_thread_nice'])
        self.add_pre_set_parameters_callback(self._normalise_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------ configure
    def _configure(self) -> None:
        """Load the model and build the pipeline (raises StartupError with the reason)."""
        try:
            recognizer = self._load_recognizer(self._params, quiet_descriptions=False)
            self._model_vocabulary = list(recognizer.vocabulary)
            pipeline = Pipeline(recognizer, self._pipeline_config(self._params))
            if self._params['vocabulary']:
                pipeline.set_vocabulary(list(self._params['vocabulary']))
        except (ModelError, cfg.ConfigError, ValueError, OSError) as exc:
            raise StartupError(str(exc)) from None
        self.pipeline = pipeline
        self._tf = self._make_tf(self._params['target_frame'])

    def _create_outputs(self, publisher: Callable) -> None:
        """Publishers (plain or lifecycle, as ``publisher`` makes them), service, timer."""
        import p3d_perception_interfaces.msg as p3d_msg
        import p3d_perception_interfaces.srv as p3d_srv
        self._p3d_msg = p3d_msg
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        self._pub_detections = publisher(p3d_msg.DetectionArray, 'p3d/detections', reliable)
        self._pub_markers = publisher(MarkerArray, 'p3d/markers', reliable)
        self._pub_query_markers = publisher(MarkerArray, 'p3d/query_markers', reliable)
        self._pub_clusters = publisher(PointCloud2, 'p3d/clusters', reliable)
        # plain even on the managed node: an inactive node still reports its state
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', reliable)
        self._pub_vision = (publisher(Detection3DArray, 'p3d/detections_3d', reliable)
                            if Detection3DArray is not None else None)
        # A deep request queue: requests that arrive while a frame holds the interpreter
        # wait their turn instead of being pushed out of a keep-last-10 history.
        self._query_service = self.create_service(
            p3d_srv.QueryObject, 'query_object', self._on_query,
            qos_profile=QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE,
                                   history=HistoryPolicy.KEEP_LAST),
            callback_group=self._query_group)
        # Steady time: under use_sim_time a looping bag makes the ROS clock jump back,
        # and a ROS-clock timer would then stop firing until it caught up again.
        self._diag_timer = self.create_timer(self._params['diagnostics_period_s'],
                                             self._publish_diagnostics,
                                             callback_group=self._misc_group,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------- activate
    def _subscribe(self, *, removable: bool = False) -> str:
        """Subscribe to the camera; ``removable`` ones can be destroyed from a callback.

        rclpy's multi-threaded executor can fail on a QoS event handler destroyed while it
        builds its wait set (InvalidHandle), so subscriptions the managed node removes on
        deactivate are made without event handlers (no incompatible-QoS warning for them).
        """
        qos = input_qos(self._params['input_qos'])
        kw: dict[str, Any] = {}
        if removable:
            kw['event_callbacks'] = SubscriptionEventCallbacks(use_default_callbacks=False)
        if self._params['input_type'] == 'pointcloud':
            self._subscriptions = [self.create_subscription(
                PointCloud2, 'points', self._on_cloud, qos,
                callback_group=self._frames_group, **kw)]
            return self.resolve_topic_name('points')
        self._infos = collections.deque(maxlen=30)
        self._subscriptions = [
            self.create_subscription(CameraInfo, 'depth/camera_info', self._on_info,
                                     qos_profile_sensor_data, callback_group=self._misc_group,
                                     **kw),
            self.create_subscription(Image, 'depth/image_rect_raw', self._on_depth, qos,
                                     callback_group=self._frames_group, **kw)]
        return self.resolve_topic_name('depth/image_rect_raw')

    def _unsubscribe(self) -> None:
        for sub in self._subscriptions:
            self.destroy_subscription(sub)
        self._subscriptions = []

    def _ready_line(self, source: str) -> str:
        rec = self.pipeline.recognizer
        return (f'ready: {source} -> {self.resolve_topic_name("p3d/detections")}; model '
                f'{self._model_path(self._params)} ({rec.text_space}, {rec.runtime_name}), '
                f'{len(rec.vocabulary)} labels; '
                f'service {self.resolve_service_name("query_object")}')

    # ----------------------------------------------------------------- input
    def _on_cloud(self, msg: PointCloud2) -> None:
        self._stats['received'] += 1
        try:
            if self._is_stale(msg.header.stamp):
                return
        except Exception as exc:  # noqa: BLE001 - any bad message is one invalid frame
            self._count_invalid('invalid', exc)
            return
        t = time.perf_counter()
        self._hand_over(lambda: self._convert_and_process(pointcloud2_to_cloud, msg, t))

    def _on_info(self, msg: CameraInfo) -> None:
        self._infos.append(msg)

    def _on_depth(self, msg: Image) -> None:
        self._stats['received'] += 1
        try:
            if self._is_stale(msg.header.stamp):
                return
            t = _stamp_s(msg.header.stamp)
            slop = self._params['depth_sync_slop_s']
            infos = [i for i in list(self._infos)
                     if abs(_stamp_s(i.header.stamp) - t) <= slop]
            if not infos:
                self._stats['dropped_unsynchronised'] += 1
                return
            info = min(infos, key=lambda i: abs(_stamp_s(i.header.stamp) - t))
        except Exception as exc:  # noqa: BLE001 - any bad message is one invalid frame
            self._count_invalid('invalid', exc)
            return
        t0 = time.perf_counter()
        self._hand_over(lambda: self._convert_and_process(
            lambda m: depth_image_to_cloud(m, info), msg, t0))

    def _hand_over(self, job: Callable[[], None]) -> None:
        """Give a frame to the frame thread; a frame still waiting there is superseded."""
        if not self._frames.submit(job):
            self._stats['dropped_superseded'] += 1

    def _convert_and_process(self, convert: Callable[[Any], Cloud], msg: Any,
                             t_received: float) -> None:
        t0 = time.perf_counter()
        try:
            cloud = convert(msg)
        except Exception as exc:  # noqa: BLE001 - any bad message is one invalid frame
            self._count_invalid('invalid', exc)
            return
        self._latency['handover'].append((t0 - t_received) * 1e3)
        self._latency['convert'].append((time.perf_counter() - t0) * 1e3)
        self._process(cloud)

    def _is_stale(self, stamp) -> bool:
        max_age = self._params['max_frame_age_s']
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if max_age <= 0 or stamp_ns == 0:
            return False
        age = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        if age > max_age:
            self._stats['dropped_stale'] += 1
            self.get_logger().warning(
                f'dropping a frame {age:.2f} s old (max_frame_age_s {max_age}); playing a '
                'bag? give use_sim_time:=true', throttle_duration_sec=5.0)
            return True
        return False

    def _count_invalid(self, kind: str, exc: BaseException) -> None:
        """Count a skipped frame under ``kind`` and keep its reason for /diagnostics."""
        self._stats[kind] += 1
        reason = f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__
        self._reasons[f'last_{kind}_reason'] = reason[:300]
        self.get_logger().warning(f'skipping a frame ({kind}, {self._stats[kind]} so far): '
                                  f'{reason}', throttle_duration_sec=2.0)

    # ----------------------------------------------------------- processing
    def _process(self, cloud: Cloud) -> None:
        t0 = time.perf_counter()
        try:
            if self._tf is not None:
                cloud = self._tf.to_target(cloud)
                if cloud is None:
                    self._stats['dropped_no_transform'] += 1
                    return
            with self._lock:
                if self.pipeline is None:
                    return
                result = self.pipeline.process(cloud)
            detections = messages.detection_array_msg(self._p3d_msg, result)
            markers = messages.markers_msg(result, up=self._up())
            clusters = (messages.clustered_cloud_msg(result)
                        if self._params['publish_clustered_cloud'] else None)
            vision = self._vision_msg(result) if self._pub_vision is not None else None
        except Exception as exc:  # noqa: BLE001 - a frame that breaks a stage is skipped
            self._count_invalid('failed', exc)
            return
        if self.closing or not self.context.ok():
            return
        try:
            self._pub_detections.publish(detections)
            self._pub_markers.publish(markers)
            if clusters is not None:
                self._pub_clusters.publish(clusters)
            if vision is not None:
                self._pub_vision.publish(vision)
        except Exception:  # noqa: BLE001 - only when shutting down; a bug otherwise
            if self.closing or not self.context.ok():
                return
            raise
        total = (time.perf_counter() - t0) * 1e3
        self._stats['processed'] += 1
        self._frame_times.append(time.monotonic())
        for k, v in result.timings_ms.items():
            self._latency[k].append(v)
        self._latency['callback_total'].append(total)

    def _up(self) -> np.ndarray | None:
        """Labels float 'above' boxes: +z in a target frame, -y in an optical frame."""
        return np.array([0.0, 0.0, 1.0]) if self._tf is not None else None

    # -------------------------------------------------------------- queries
    def _on_query(self, request, response):
        t0 = time.perf_counter()
        try:
            return self._answer(request, response, t0)
        except Exception as exc:  # noqa: BLE001 - a query never takes the node down
            response.success = False
            response.message = f'query failed: {type(exc).__name__}: {exc}'
            response.matches, response.scores = [], []
            self._stats['queries_failed'] += 1
            return response

    def _answer(self, request, response, t0: float):
        pipeline = self.pipeline
        if pipeline is None or not self._subscriptions:
            response.success = False
            response.message = 'the node is not active (ros2 lifecycle set ... activate)'
            return response
        top_k = int(request.top_k) or self._params['query.default_top_k']
        min_score = float(request.min_score)
        if min_score < 0:      # not given: the .srv default is -1
            min_score = self._params['query.default_min_score']
        try:
            matches = pipeline.query(request.query, top_k=top_k, min_score=min_score)
        except QueryError as exc:
            response.success = False
            response.message = str(exc)
            self._stats['queries_refused'] += 1
            return response
        now_ns = self.get_clock().now().nanoseconds
        response.success = True
        response.matches = [messages.detection_msg(self._p3d_msg, m.object, m.object.frame_id,
                                                   m.object.last_seen_ns) for m in matches]
        response.scores = [float(m.score) for m in matches]
        remembered = len(pipeline.memory)
        response.message = (f'{len(matches)} match(es) among {remembered} remembered objects'
                            if matches else
                            f'no match: no remembered object looks like '
                            f'"{request.query.strip()}" (none of {remembered} scores >= '
                            f'{min_score:.2f})')
        self._pub_query_markers.publish(messages.query_markers_msg(
            request.query.strip(), matches, now_ns, up=self._up(),
            lifetime_s=self._params['query.highlight_s']))
        self._stats['queries'] += 1
        self._latency['query'].append((time.perf_counter() - t0) * 1e3)
        return response

    # ----------------------------------------------------------- parameters
    def _normalise_parameters(self, params: list[Parameter]) -> list[Parameter]:
        """Let 'empty' mean empty whatever type the tool gave it.

        `ros2 param set ... vocabulary "[]"` arrives as a bool array and `['']` as one
        empty string; both mean "back to the default" for an array parameter, so both
        become that parameter's own typed empty array before rclpy checks the type.
        """
        out = []
        for p in params:
            spec = self._specs.get(p.name)
            if (spec is not None and spec.descriptor.type in _ARRAY_TYPES
                    and p.type_ in _EMPTY_ARRAY_INPUTS and _is_empty(p.value)):
                p = Parameter(p.name, _ARRAY_TYPES[spec.descriptor.type], [])
            out.append(p)
        return out

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        try:
            return self._apply_parameters(params)
        except Exception as exc:  # noqa: BLE001 - an unexpected error is a rejected change
            return SetParametersResult(successful=False,
                                       reason=f'{type(exc).__name__}: {exc}')

    def _apply_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new = dict(self._params)
        for p in params:
            if p.name in self._specs:
                new[p.name] = p.value
        problem = self._check_values(new)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        reread = any(p.name == 'descriptions_file' for p in params)
        try:
            config = self._pipeline_config(new)
            if self.pipeline is not None:
                self._reconfigure(new, config, reread)
            if new['target_frame'] != self._params['target_frame'] and self.pipeline:
                self._tf = self._make_tf(new['target_frame'])
        except (cfg.ConfigError, ModelError, ValueError, OSError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        changed = sorted(k for k in new if new[k] != self._params[k])
        self._params = new
        if changed:
            self.get_logger().info(f'parameters updated: {", ".join(changed)}')
        return SetParametersResult(successful=True)

    def _reconfigure(self, new: dict[str, Any], config: PipelineConfig, reread: bool) -> None:
        recognizer = None
        if any(new[k] != self._params[k] for k in _MODEL_PARAMS):
            recognizer = self._load_recognizer(new, quiet_descriptions=True)
        with self._lock:
            if recognizer is not None:
                self._model_vocabulary = list(recognizer.vocabulary)
                self.pipeline.recognizer = recognizer
                self.pipeline.memory.clear()  # embeddings of another model don't compare
            elif reread:  # set again, even to the same path: the file may have been edited
                self.pipeline.recognizer.set_descriptions(new['descriptions_file'])
            if recognizer is not None or new['vocabulary'] != self._params['vocabulary']:
                self.pipeline.set_vocabulary(list(new['vocabulary'])
                                             or self._model_vocabulary)
            self._apply_config(config)

    def _check_values(self, values: dict[str, Any]) -> str:
        """The reason ``values`` are refused, or '' (choices, finite numbers)."""
        for name, allowed in _CHOICES.items():
            if values[name] not in allowed:
                return f'{name} must be one of {", ".join(allowed)}; got {values[name]!r}'
        for name, value in values.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                return f'{name} must be finite; got {value!r}'
        return ''

    def _pipeline_config(self, values: dict[str, Any]) -> PipelineConfig:
        specs = list(self._specs.values())
        return cfg.from_dict(PipelineConfig, {
            'segmentation': group(values, 'segmentation', specs),
            'memory': group(values, 'memory', specs),
            'top_k': values['top_k'], 'unknown_threshold': values['unknown_threshold'],
            'max_objects_per_frame': values['max_objects_per_frame'],
            'min_points_to_recognise': values['min_points_to_recognise']})

    def _apply_config(self, config: PipelineConfig) -> None:
        from p3d_perception.segmentation import Segmenter
        if config.segmentation != self.pipeline.config.segmentation:
            self.pipeline.segmenter = Segmenter(config.segmentation)
        self.pipeline.memory.config = config.memory
        self.pipeline.config = config

    def _model_path(self, values: dict[str, Any]) -> str:
        return values['model_path'] or str(default_model_path())

    def _load_recognizer(self, values: dict[str, Any], *, quiet_descriptions: bool
                         ) -> Recognizer:
        recognizer = Recognizer.from_checkpoint(
            self._model_path(values), device=values['device'], backend=values['backend'],
            text_space=values['text_space'] or None, precision=values['precision'])
        if values['device'] == 'cuda' and recognizer.device != 'cuda':
            self.get_logger().warning('CUDA requested but not available: running on CPU')
        if values['descriptions_file']:
            if recognizer.model.cfg.label_text == 'descriptions' or not quiet_descriptions:
                recognizer.set_descriptions(values['descriptions_file'])
            else:  # switching to a names model keeps the file for the next descriptions one
                self.get_logger().warning(
                    f'model {recognizer.card.get("name")} builds prototypes from names: '
                    f'descriptions_file {values["descriptions_file"]} is kept but not used')
        return recognizer

    # ---------------------------------------------------------------- tf2
    def _make_tf(self, target_frame: str):
        if not target_frame:
            return None
        try:
            from p3d_perception.ros.transforms import TargetFrame
        except ImportError as exc:
            self.get_logger().warning(f'tf2_ros is not importable ({exc}): target_frame '
                                      f'{target_frame!r} ignored, publishing in the sensor frame')
            return None
        return TargetFrame(self, target_frame)

    # ---------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        if self.closing or not self.context.ok():
            return
        times = list(self._frame_times)
        rate = ((len(times) - 1) / (times[-1] - times[0])
                if len(times) > 1 and times[-1] > times[0] else 0.0)
        pipeline = self.pipeline
        values: dict[str, object] = {
            'rate_hz': f'{rate:.2f}', 'active': bool(self._subscriptions),
            'remembered_objects': len(pipeline.memory) if pipeline else 0}
        values.update({k: v for k, v in sorted(self._stats.items())})
        values.update(sorted(self._reasons.items()))
        for stage, samples in sorted(self._latency.items()):
            if samples:
                values[f'latency_ms.{stage}.median'] = f'{statistics.median(samples):.1f}'
        bad = self._stats['invalid'] + self._stats['failed'] + self._stats['dropped_stale']
        warn = bool(bad) and bad >= self._stats['processed']
        device = pipeline.recognizer.device if pipeline else 'unconfigured'
        self._pub_diag.publish(messages.diagnostics_msg(
            f'{self.get_name()}: perception', device,
            self.get_clock().now().nanoseconds, 1 if warn else 0,
            'most frames dropped or invalid' if warn else 'ok', values))

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def destroy_node(self) -> None:
        """Let a frame in progress finish (it returns early on ``closing``), then destroy."""
        self.closing = True
        self._frames.stop(timeout_s=30.0)
        super().destroy_node()

    def _vision_msg(self, result):  # pragma: no cover - vision_msgs not on PyPI
        out = Detection3DArray(header=messages.header(result.cloud.frame_id,
                                                      result.cloud.stamp_ns))
        for det in result.detections:
            d = Detection3D(header=out.header, id=str(det.object_id))
            d.bbox.center = messages.pose(det.center, det.rotation)
            d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = (float(v) for v in det.size)
            for label, score in zip(det.top_labels, det.top_scores):
                h = ObjectHypothesisWithPose()
                h.hypothesis.class_id, h.hypothesis.score = label, float(score)
                h.pose.pose = d.bbox.center
                d.results.append(h)
            out.detections.append(d)
        return out


class PerceptionNode(PerceptionBase, Node):
    """Subscribes to a depth camera; publishes what is on the table and answers queries."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('p3d_perception', **kwargs)
        self._declare()
        self._configure()
        self._create_outputs(self.create_publisher)
        source = self._subscribe()
        self.get_logger().info(self._ready_line(source))


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip() in ('', '[]')
    return all(isinstance(v, str) and not v.strip() for v in value)


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def tune_interpreter() -> None:
    """Hand the interpreter to waiting threads every 1 ms, and freeze what start-up made.

    Frame processing is long Python work; a short switch interval lets the query thread
    run sooner, which bounds a query's wait behind a frame. A full garbage collection
    walked every object of torch and the model, pausing all threads for 120-280 ms;
    frozen, those objects are never walked again.
    """
    sys.setswitchinterval(0.001)
    gc.freeze()


def spin(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Run a node until Ctrl-C or shutdown; every start-up failure is one line, exit 1.

    The executor is shut down before the node is destroyed, so no callback still in
    flight touches a destroyed publisher on the way out.
    """
    log = rclpy.logging.get_logger('p3d_perception')
    try:
        rclpy.init(args=args)   # the default context: rclpy's SIGINT handler shuts it down
    except Exception as exc:  # noqa: BLE001 - e.g. a missing --params-file
        log.fatal(f'cannot start: {_one_line(exc)}')
        return 1
    context = rclpy.get_default_context()
    # made before the model loads: an executor needs a live context, and a Ctrl-C
    # during the load has shut it down by the time the load ends
    executor = NodeExecutor(num_threads=4, context=context)
    node = None
    try:
        try:
            node = make_node(context)
        except Exception as exc:  # noqa: BLE001 - a bad parameter or file: say which and stop
            if not context.ok():    # Ctrl-C while it started: a stop, not a failure
                return 0
            log.fatal(f'cannot start: {_one_line(exc)}')
            return 1
        tune_interpreter()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - see below
        # rclpy's SIGINT handler shuts the context down; an executor that is just
        # building its wait set then raises RCLError "context is not valid" instead of
        # ExternalShutdownException. That is the same Ctrl-C; anything else is a bug.
        if context.ok():
            raise
    finally:
        _ignore_sigint()
        if node is not None:
            node.closing = True
        # a frame of a loaded machine may still be in the encoder: let it finish
        executor.shutdown(timeout_sec=30.0)
        _drain(executor, timeout_s=30.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


def _drain(executor: NodeExecutor, timeout_s: float) -> None:
    """Wait for the callbacks the executor has handed to its threads to finish.

    rclpy 7.1's ``Executor.shutdown`` marks itself shut down before it checks whether
    to wait, so it returns at once; a handler still queued then ran after
    ``destroy_node`` and failed on its destroyed entity, printed at exit as "exception
    was never retrieved: cannot use Destroyable" (seen in a clean-clone CI run). Run
    now, with the node alive, they return early on ``closing``.
    """
    deadline = time.monotonic() + timeout_s
    for task in list(getattr(executor, '_futures', ())):
        while not task.done() and time.monotonic() < deadline:
            time.sleep(0.01)


def _ignore_sigint() -> None:
    """Ignore SIGINT from now on, even if one arrives while we say so.

    Ctrl-C in a terminal reaches ros2 launch and its children, and launch then signals
    them again: that second SIGINT must not interrupt the orderly shutdown. It can land
    inside ``signal.signal`` itself (a traceback seen in CI), so a KeyboardInterrupt
    raised before the ignore took effect is swallowed and the call made again; once
    SIG_IGN is set, CPython drops any SIGINT still pending.
    """
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def _one_line(exc: BaseException) -> str:
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (StartupError, ModelError, cfg.ConfigError)) \
        else f'{type(exc).__name__}: {text}'


def main(args: list[str] | None = None) -> int:
    return spin(lambda context: PerceptionNode(context=context), args)


if __name__ == '__main__':
    sys.exit(main())
