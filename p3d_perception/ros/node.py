# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The perception node: clouds in; detections, markers and /query_object out.

A thin shell over :class:`p3d_perception.pipeline.Pipeline`: it converts
messages, keeps only the newest frame (a robot wants what is there now, not a
backlog), publishes, and maps parameters to the core's config dataclasses.
Frame processing and the query service live in separate callback groups on a
multi-threaded executor, so a query is answered while a frame is being processed.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rcl_interfaces.msg import ParameterType, SetParametersResult
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from p3d_perception import config as cfg
from p3d_perception.cloud import Cloud, CloudError, depth_image_to_cloud, pointcloud2_to_cloud
from p3d_perception.pipeline import Pipeline, PipelineConfig, QueryError
from p3d_perception.recognize import ModelError, Recognizer
from p3d_perception.resources import default_model_path
from p3d_perception.ros import messages
from p3d_perception.ros.params import all_specs, group

try:  # vision_msgs is optional: publish the standard message too when it is there
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - not installable from PyPI
    Detection3DArray = None

_ARRAY_TYPES = {ParameterType.PARAMETER_STRING_ARRAY: Parameter.Type.STRING_ARRAY,
                ParameterType.PARAMETER_DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY,
                ParameterType.PARAMETER_INTEGER_ARRAY: Parameter.Type.INTEGER_ARRAY,
                ParameterType.PARAMETER_BOOL_ARRAY: Parameter.Type.BOOL_ARRAY}
#: parameters whose change needs the model reloaded
_MODEL_PARAMS = ('model_path', 'text_space', 'device', 'backend')


class PerceptionNode(Node):
    """Subscribes to a depth camera; publishes what is on the table and answers queries."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('p3d_perception', **kwargs)
        self._specs = {s.name: s for s in all_specs()}
        for s in self._specs.values():
            # rclpy cannot infer an array type from an empty list: declare the type itself
            self.declare_parameter(s.name, _ARRAY_TYPES.get(s.descriptor.type, s.default)
                                   if s.default == [] else s.default, s.descriptor)
        self._params = {name: self._read(name) for name in self._specs}
        self._validate_choices(self._params)
        self._stats = collections.Counter()
        self._latency = collections.defaultdict(lambda: collections.deque(maxlen=200))
        self._frame_times = collections.deque(maxlen=50)
        self._lock = threading.Lock()  # one frame or one reconfiguration at a time

        recognizer = self._load_recognizer(self._params)
        self._model_vocabulary = list(recognizer.vocabulary)
        self.pipeline = Pipeline(recognizer, self._pipeline_config(self._params))
        if self._params['vocabulary']:
            self.pipeline.set_vocabulary(list(self._params['vocabulary']))
        self._tf = self._make_tf(self._params['target_frame'])

        frames_group = MutuallyExclusiveCallbackGroup()
        service_group = MutuallyExclusiveCallbackGroup()
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        # Depth 1: while a frame is processed only the newest one waits; older are dropped.
        sensor_qos = (QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                 durability=DurabilityPolicy.VOLATILE,
                                 history=HistoryPolicy.KEEP_LAST)
                      if self._params['input_qos'] == 'sensor_data'
                      else QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                      history=HistoryPolicy.KEEP_LAST))
        if self._params['input_type'] == 'pointcloud':
            self.create_subscription(PointCloud2, 'points', self._on_cloud, sensor_qos,
                                     callback_group=frames_group)
            source = self.resolve_topic_name('points')
        else:
            self._infos = collections.deque(maxlen=30)
            self.create_subscription(CameraInfo, 'depth/camera_info', self._on_info,
                                     qos_profile_sensor_data, callback_group=service_group)
            self.create_subscription(Image, 'depth/image_rect_raw', self._on_depth, sensor_qos,
                                     callback_group=frames_group)
            source = self.resolve_topic_name('depth/image_rect_raw')

        import p3d_perception_interfaces.msg as p3d_msg
        import p3d_perception_interfaces.srv as p3d_srv
        self._p3d_msg = p3d_msg
        self._pub_detections = self.create_publisher(p3d_msg.DetectionArray, 'p3d/detections',
                                                     reliable)
        self._pub_markers = self.create_publisher(MarkerArray, 'p3d/markers', reliable)
        self._pub_query_markers = self.create_publisher(MarkerArray, 'p3d/query_markers',
                                                        reliable)
        self._pub_clusters = self.create_publisher(PointCloud2, 'p3d/clusters', reliable)
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', reliable)
        self._pub_vision = (self.create_publisher(Detection3DArray, 'p3d/detections_3d',
                                                  reliable)
                            if Detection3DArray is not None else None)
        self.create_service(p3d_srv.QueryObject, 'query_object', self._on_query,
                            callback_group=service_group)
        self.create_timer(self._params['diagnostics_period_s'], self._publish_diagnostics,
                          callback_group=service_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        rec = self.pipeline.recognizer
        self.get_logger().info(
            f'ready: {source} -> {self.resolve_topic_name("p3d/detections")}; model '
            f'{self._model_path(self._params)} ({rec.text_space}, {rec.device}, '
            f'{self._params["backend"]}), {len(rec.vocabulary)} labels; '
            f'service {self.resolve_service_name("query_object")}')

    def _read(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return self._specs[name].default  # a typed, empty array parameter

    # ----------------------------------------------------------------- input
    def _on_cloud(self, msg: PointCloud2) -> None:
        self._stats['received'] += 1
        if self._is_stale(msg.header.stamp):
            return
        try:
            cloud = pointcloud2_to_cloud(msg)
        except CloudError as exc:
            self._count_invalid(exc)
            return
        self._process(cloud)

    def _on_info(self, msg: CameraInfo) -> None:
        self._infos.append(msg)

    def _on_depth(self, msg: Image) -> None:
        self._stats['received'] += 1
        if self._is_stale(msg.header.stamp):
            return
        t = _stamp_s(msg.header.stamp)
        slop = self._params['depth_sync_slop_s']
        infos = [i for i in list(self._infos) if abs(_stamp_s(i.header.stamp) - t) <= slop]
        if not infos:
            self._stats['dropped_unsynchronised'] += 1
            return
        info = min(infos, key=lambda i: abs(_stamp_s(i.header.stamp) - t))
        try:
            cloud = depth_image_to_cloud(msg, info)
        except CloudError as exc:
            self._count_invalid(exc)
            return
        self._process(cloud)

    def _is_stale(self, stamp) -> bool:
        max_age = self._params['max_frame_age_s']
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if max_age <= 0 or stamp_ns == 0:
            return False
        age = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        if age > max_age:
            self._stats['dropped_stale'] += 1
            self.get_logger().warning(f'dropping a frame {age:.2f} s old (max_frame_age_s '
                                      f'{max_age})', throttle_duration_sec=5.0)
            return True
        return False

    def _count_invalid(self, exc: Exception) -> None:
        self._stats['invalid'] += 1
        self.get_logger().warning(f'skipping malformed input ({self._stats["invalid"]} so far): '
                                  f'{exc}', throttle_duration_sec=2.0)

    # ----------------------------------------------------------- processing
    def _process(self, cloud: Cloud) -> None:
        t0 = time.perf_counter()
        if self._tf is not None:
            cloud = self._tf.to_target(cloud)
            if cloud is None:
                self._stats['dropped_no_transform'] += 1
                return
        with self._lock:
            try:
                result = self.pipeline.process(cloud)
            except CloudError as exc:
                self._count_invalid(exc)
                return
        self._pub_detections.publish(messages.detection_array_msg(self._p3d_msg, result))
        self._pub_markers.publish(messages.markers_msg(result, up=self._up()))
        if self._params['publish_clustered_cloud']:
            self._pub_clusters.publish(messages.clustered_cloud_msg(result))
        if self._pub_vision is not None:
            self._pub_vision.publish(self._vision_msg(result))
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
        top_k = int(request.top_k) or self._params['query.default_top_k']
        try:
            matches = self.pipeline.query(request.query, top_k=top_k,
                                          min_score=float(request.min_score))
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
        remembered = len(self.pipeline.memory)
        response.message = (f'{len(matches)} match(es) among {remembered} remembered objects'
                            if matches else
                            f'no object scores >= {request.min_score:.2f} among {remembered} '
                            'remembered objects')
        self._pub_query_markers.publish(messages.query_markers_msg(
            request.query.strip(), matches, now_ns, up=self._up(),
            lifetime_s=self._params['query.highlight_s']))
        self._stats['queries'] += 1
        self._latency['query'].append((time.perf_counter() - t0) * 1e3)
        return response

    # ----------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new = dict(self._params)
        for p in params:
            if p.name in self._specs:
                new[p.name] = p.value
        try:
            self._validate_choices(new)
            config = self._pipeline_config(new)
            recognizer = None
            if any(new[k] != self._params[k] for k in _MODEL_PARAMS):
                recognizer = self._load_recognizer(new)
            with self._lock:
                if recognizer is not None:
                    self._model_vocabulary = list(recognizer.vocabulary)
                    self.pipeline.recognizer = recognizer
                    self.pipeline.memory.clear()  # embeddings of another model don't compare
                elif new['descriptions_file'] != self._params['descriptions_file']:
                    self.pipeline.recognizer.set_descriptions(new['descriptions_file'])
                if recognizer is not None or new['vocabulary'] != self._params['vocabulary']:
                    self.pipeline.set_vocabulary(list(new['vocabulary'])
                                                 or self._model_vocabulary)
                self._apply_config(config)
            if new['target_frame'] != self._params['target_frame']:
                self._tf = self._make_tf(new['target_frame'])
        except (cfg.ConfigError, ModelError, ValueError, OSError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        changed = sorted(k for k in new if new[k] != self._params[k])
        self._params = new
        if changed:
            self.get_logger().info(f'parameters updated: {", ".join(changed)}')
        return SetParametersResult(successful=True)

    def _validate_choices(self, values: dict[str, Any]) -> None:
        choices = {'input_type': ('pointcloud', 'depth'),
                   'input_qos': ('sensor_data', 'reliable'),
                   'device': ('auto', 'cuda', 'cpu'), 'backend': ('torch', 'onnxruntime')}
        for name, allowed in choices.items():
            if values[name] not in allowed:
                raise cfg.ConfigError(f'{name} must be one of {", ".join(allowed)}; '
                                      f'got {values[name]!r}')

    def _pipeline_config(self, values: dict[str, Any]) -> PipelineConfig:
        specs = list(self._specs.values())
        return cfg.from_dict(PipelineConfig, {
            'segmentation': group(values, 'segmentation', specs),
            'memory': group(values, 'memory', specs),
            'top_k': values['top_k'], 'unknown_threshold': values['unknown_threshold'],
            'max_objects_per_frame': values['max_objects_per_frame'],
            'min_points_to_recognise': values['min_points_to_recognise']})

    def _apply_config(self, config: PipelineConfig) -> None:
        from p3d_perception.segment import Segmenter
        if config.segmentation != self.pipeline.config.segmentation:
            self.pipeline.segmenter = Segmenter(config.segmentation)
        self.pipeline.memory.config = config.memory
        self.pipeline.config = config

    def _model_path(self, values: dict[str, Any]) -> str:
        return values['model_path'] or str(default_model_path())

    def _load_recognizer(self, values: dict[str, Any]) -> Recognizer:
        recognizer = Recognizer.from_checkpoint(
            self._model_path(values), device=values['device'], backend=values['backend'],
            text_space=values['text_space'] or None)
        if values['device'] == 'cuda' and recognizer.device != 'cuda':
            self.get_logger().warning('CUDA requested but not available: running on CPU')
        if values['descriptions_file']:
            recognizer.set_descriptions(values['descriptions_file'])
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
        times = list(self._frame_times)
        rate = ((len(times) - 1) / (times[-1] - times[0])
                if len(times) > 1 and times[-1] > times[0] else 0.0)
        values: dict[str, object] = {'rate_hz': f'{rate:.2f}',
                                     'remembered_objects': len(self.pipeline.memory)}
        values.update({k: v for k, v in sorted(self._stats.items())})
        for stage, samples in sorted(self._latency.items()):
            if samples:
                values[f'latency_ms.{stage}.median'] = f'{statistics.median(samples):.1f}'
        bad = self._stats['invalid'] + self._stats['dropped_stale']
        warn = bool(bad) and bad >= self._stats['processed']
        self._pub_diag.publish(messages.diagnostics_msg(
            f'{self.get_name()}: perception', self.pipeline.recognizer.device,
            self.get_clock().now().nanoseconds, 1 if warn else 0,
            'most frames dropped or invalid' if warn else 'ok', values))

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

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


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = PerceptionNode()
    except (ModelError, cfg.ConfigError) as exc:
        rclpy.logging.get_logger('p3d_perception').fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
