# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The perception node, in-process, over real DDS, on a real Kinect scan."""

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from p3d_perception.ros.executor import NodeExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2, PointField
import torch
from visualization_msgs.msg import Marker, MarkerArray
import yaml

from p3d_perception.cloud import pack_cloud, read_pcd
from p3d_perception.ros.messages import packed_to_msg
from p3d_perception.ros.params import all_specs

pytestmark = pytest.mark.slow

VOCAB = ['box', 'mug', 'bowl', 'apple', 'banana', 'teapot', 'cereal box', 'book']


@pytest.fixture(scope='module')
def tiny_model_dir(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp('model') / 'tiny', vocabulary=VOCAB,
                           command='test_node fixture')


@pytest.fixture(scope='module')
def scan_msg_factory(mosd_dir):
    cloud = read_pcd(mosd_dir / 'learn0.pcd')
    packed = pack_cloud(cloud.points, cloud.colors, height=cloud.height, width=cloud.width)

    def make(node, jitter=0.0):
        msg = packed_to_msg(packed, 'camera_depth_optical_frame', 0)
        if jitter:
            pts = cloud.points + np.float32(jitter)
            msg = packed_to_msg(pack_cloud(pts, cloud.colors, height=cloud.height,
                                           width=cloud.width), 'camera_depth_optical_frame', 0)
        msg.header.stamp = node.get_clock().now().to_msg()
        return msg
    return make


class Harness:
    """The node under test plus a client node, spun together on a background thread."""

    def __init__(self, context, interfaces, model_dir, **params):
        from p3d_perception.ros.node import PerceptionNode
        from rclpy.parameter import Parameter
        msg, srv = interfaces
        params.setdefault('model_path', str(model_dir))
        # A loaded 2-core CI box can take over a second between publish and callback;
        # only test_old_frames_are_dropped_and_counted is about frame age.
        params.setdefault('max_frame_age_s', 30.0)
        self.model_dir = model_dir
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = PerceptionNode(context=context, parameter_overrides=overrides)
        self.client = Node('test_client', context=context)
        self.detections, self.markers = [], []
        self.client.create_subscription(msg.DetectionArray, 'p3d/detections',
                                        self.detections.append, 10)
        self.client.create_subscription(MarkerArray, 'p3d/markers', self.markers.append, 10)
        self.pub = self.client.create_publisher(PointCloud2, 'points', qos_profile_sensor_data)
        self.query = self.client.create_client(srv.QueryObject, 'query_object')
        self.set_params = self.client.create_client(SetParameters,
                                                    '/p3d_perception/set_parameters')
        self.request = srv.QueryObject.Request
        self.executor = NodeExecutor(num_threads=3, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert self.wait(lambda: self.pub.get_subscription_count() > 0
                         and self.query.service_is_ready())

    @staticmethod
    def wait(predicate, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def send(self, msg, timeout=60.0):
        before = len(self.detections)
        self.pub.publish(msg)
        assert self.wait(lambda: len(self.detections) > before, timeout), 'no detections'
        return self.detections[-1]

    def call(self, client, request, timeout=30.0):
        future = client.call_async(request)
        assert self.wait(future.done, timeout), 'no response'
        return future.result()

    def close(self):
        self.executor.shutdown()
        self.thread.join(10)      # a thread left in the C++ wait aborts at exit (rclpy#1484)
        self.node.destroy_node()
        self.client.destroy_node()


@pytest.fixture
def harness(rclpy_context, interfaces, tiny_model_dir):
    h = Harness(rclpy_context, interfaces, tiny_model_dir)
    yield h
    h.close()


def test_publishes_detections_markers_and_keeps_ids(harness, scan_msg_factory):
    first = harness.send(scan_msg_factory(harness.node))
    assert len(first.detections) >= 2, 'expected the boxes on the table to be detected'
    assert first.header.frame_id == 'camera_depth_optical_frame'
    for det in first.detections:
        assert det.label and 0.0 <= det.score <= 1.0
        assert det.alternative_labels[0] == det.label
        assert det.point_count > 0 and det.size.x > 0 and det.size.z > 0
    assert harness.wait(lambda: harness.markers)
    markers = harness.markers[-1].markers
    assert markers[0].action == Marker.DELETEALL
    assert {m.type for m in markers[1:]} == {Marker.CUBE, Marker.TEXT_VIEW_FACING}
    assert any(f'#{first.detections[0].object_id}' in m.text for m in markers)

    # the same scene again, moved by 2 mm: the same objects keep their ids
    second = harness.send(scan_msg_factory(harness.node, jitter=0.002))
    ids1 = sorted(d.object_id for d in first.detections)
    ids2 = sorted(d.object_id for d in second.detections)
    assert len(set(ids1) & set(ids2)) >= min(len(ids1), len(ids2)) - 1


def test_query_answers_and_refuses_bad_queries(harness, scan_msg_factory):
    harness.send(scan_msg_factory(harness.node))
    ok = harness.call(harness.query, harness.request(query='a box', top_k=2, min_score=0.0))
    assert ok.success, ok.message
    assert 1 <= len(ok.matches) <= 2 and len(ok.scores) == len(ok.matches)
    assert list(ok.scores) == sorted(ok.scores, reverse=True)
    for bad, reason in (('', 'empty'), ('x' * 300, 'too long'), ('mug\x07', 'non-printable')):
        resp = harness.call(harness.query, harness.request(query=bad, top_k=1))
        assert not resp.success and reason in resp.message
        assert len(resp.matches) == 0
    high = harness.call(harness.query, harness.request(query='a box', top_k=5, min_score=1.0))
    assert high.success and all(s >= 1.0 for s in high.scores)


def _param(name, ptype, **value):
    return ParameterMsg(name=name, value=ParameterValue(type=ptype, **value))


def test_vocabulary_change_takes_effect_and_bad_values_are_rejected(
        harness, scan_msg_factory):
    req = SetParameters.Request(parameters=[_param(
        'vocabulary', ParameterType.PARAMETER_STRING_ARRAY,
        string_array_value=['banana', 'teapot'])])
    result = harness.call(harness.set_params, req).results[0]
    assert result.successful, result.reason
    dets = harness.send(scan_msg_factory(harness.node))
    assert dets.detections
    assert {d.label for d in dets.detections} <= {'banana', 'teapot', 'unknown'}
    for d in dets.detections:
        assert set(d.alternative_labels) <= {'banana', 'teapot'}

    bad = SetParameters.Request(parameters=[_param('device', ParameterType.PARAMETER_STRING,
                                                   string_value='tpu')])
    result = harness.call(harness.set_params, bad).results[0]
    assert not result.successful and 'device' in result.reason
    dup = SetParameters.Request(parameters=[_param(
        'vocabulary', ParameterType.PARAMETER_STRING_ARRAY, string_array_value=['a', 'a'])])
    result = harness.call(harness.set_params, dup).results[0]
    assert not result.successful and 'duplicate' in result.reason
    assert harness.node.get_parameter('device').value == 'auto'


def test_old_frames_are_dropped_and_counted(harness, scan_msg_factory):
    """A frame stamped 60 s ago is dropped as stale; a fresh one is processed."""
    msg = scan_msg_factory(harness.node)
    msg.header.stamp.sec -= 60
    before = harness.node._stats['dropped_stale']
    harness.pub.publish(msg)
    assert harness.wait(lambda: harness.node._stats['dropped_stale'] > before)
    assert harness.send(scan_msg_factory(harness.node)).detections


def test_malformed_clouds_are_counted_and_skipped(harness, scan_msg_factory):
    no_xyz = PointCloud2(height=1, width=2, point_step=4, row_step=8, data=bytes(8),
                         fields=[PointField(name='intensity', offset=0,
                                            datatype=PointField.FLOAT32, count=1)])
    short = scan_msg_factory(harness.node)
    short.data = bytes(short.data)[:1000]
    for count, msg in enumerate((no_xyz, short), start=1):  # one at a time: depth-1 QoS
        msg.header.stamp = harness.node.get_clock().now().to_msg()
        harness.pub.publish(msg)
        assert harness.wait(lambda: harness.node.stats().get('invalid', 0) >= count)
    good = harness.send(scan_msg_factory(harness.node))  # still running
    assert good.detections


def test_missing_model_fails_at_startup_with_a_clear_message(tmp_path):
    missing = tmp_path / 'no_such_model'
    proc = subprocess.run(
        [sys.executable, '-m', 'p3d_perception.ros.node', '--ros-args', '-p',
         f'model_path:={missing}'], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert 'cannot start' in out and str(missing) in out
    assert 'Traceback' not in out


def test_ctrl_c_twice_exits_cleanly():
    """Ctrl-C as a terminal under ros2 launch gives it: SIGINT, then launch's own, 20 ms on.

    Sent as soon as the node says it is ready, so the first one may land before the
    executor spins and the second during the orderly shutdown.
    """
    # the bundled model: a start-up of real length
    proc = subprocess.Popen([sys.executable, '-m', 'p3d_perception.ros.node'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if 'ready:' in line:
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out = ''.join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out


def test_params_file_and_readme_match_declared_parameters(repo_root):
    params = yaml.safe_load((repo_root / 'config' / 'perception.yaml').read_text())
    params = params['/**']['ros__parameters']
    text = (repo_root / 'config' / 'perception.yaml').read_text()
    readme = (repo_root / 'README.md').read_text()
    for spec in all_specs():
        if spec.default == []:
            assert f'# {spec.name}: []' in text
        else:
            assert params[spec.name] == spec.default, spec.name
        assert f'`{spec.name}`' in readme, f'README does not document {spec.name}'
    assert set(params) <= {s.name for s in all_specs()}


def test_model_path_change_swaps_the_model_without_restart(harness, scan_msg_factory,
                                                           tmp_path, make_tiny_model):
    """A fine-tuned model is deployed by a parameter change; a bad path is refused."""
    tuned = make_tiny_model(tmp_path / 'tuned', vocabulary=['widget', 'gadget'],
                            prompt_labels=['widget', 'gadget'], seed=1, command='test')
    harness.send(scan_msg_factory(harness.node))
    assert len(harness.node.pipeline.memory) > 0
    missing = SetParameters.Request(parameters=[_param(
        'model_path', ParameterType.PARAMETER_STRING, string_value=str(tmp_path / 'nope'))])
    result = harness.call(harness.set_params, missing).results[0]
    assert not result.successful and 'nope' in result.reason
    swap = SetParameters.Request(parameters=[_param(
        'model_path', ParameterType.PARAMETER_STRING, string_value=str(tuned))])
    result = harness.call(harness.set_params, swap).results[0]
    assert result.successful, result.reason
    assert len(harness.node.pipeline.memory) == 0      # old embeddings do not compare
    dets = harness.send(scan_msg_factory(harness.node))
    assert dets.detections
    assert {d.label for d in dets.detections} <= {'widget', 'gadget', 'unknown'}


def test_descriptions_file_reaches_the_label_prototypes(harness, tmp_path, make_tiny_model):
    """A user's description lines change the prototypes of a descriptions-aligned model."""
    lines = tmp_path / 'my_objects.yaml'
    lines.write_text('widget: [a widget, a small blue plastic cube with one round hole]\n')
    describe = SetParameters.Request(parameters=[_param(
        'descriptions_file', ParameterType.PARAMETER_STRING, string_value=str(lines))])
    result = harness.call(harness.set_params, describe).results[0]
    assert not result.successful and 'label_text' in result.reason   # a names model refuses
    aligned = make_tiny_model(tmp_path / 'desc', vocabulary=['widget', 'mug'],
                              label_text='descriptions', command='test')
    swap = SetParameters.Request(parameters=[_param(
        'model_path', ParameterType.PARAMETER_STRING, string_value=str(aligned))])
    assert harness.call(harness.set_params, swap).results[0].successful
    rec = harness.node.pipeline.recognizer
    before = rec._protos[rec.vocabulary.index('widget')].clone()
    result = harness.call(harness.set_params, describe).results[0]
    assert result.successful, result.reason
    rec = harness.node.pipeline.recognizer
    after = rec._protos[rec.vocabulary.index('widget')]
    want = rec._space.encode(['a widget', 'a small blue plastic cube with one round hole'])
    torch.testing.assert_close(after, torch.nn.functional.normalize(want.mean(0), dim=0))
    assert float(before @ after) < 0.99
    broken = SetParameters.Request(parameters=[_param(
        'descriptions_file', ParameterType.PARAMETER_STRING,
        string_value=str(tmp_path / 'missing.yaml'))])
    result = harness.call(harness.set_params, broken).results[0]
    assert not result.successful and 'missing.yaml' in result.reason


def test_empty_arrays_reset_and_non_finite_values_are_refused(harness, scan_msg_factory):
    """What `ros2 param set NODE vocabulary "[]"` sends (a bool array) resets to the model's."""
    node = harness.node
    names = SetParameters.Request(parameters=[_param(
        'vocabulary', ParameterType.PARAMETER_STRING_ARRAY, string_array_value=['mug', 'bowl'])])
    assert harness.call(harness.set_params, names).results[0].successful
    for empty in (_param('vocabulary', ParameterType.PARAMETER_BOOL_ARRAY, bool_array_value=[]),
                  _param('vocabulary', ParameterType.PARAMETER_STRING_ARRAY,
                         string_array_value=[''])):
        result = harness.call(harness.set_params,
                              SetParameters.Request(parameters=[empty])).results[0]
        assert result.successful, result.reason
        assert node.get_parameter('vocabulary').value == []
        assert node.pipeline.recognizer.vocabulary == VOCAB
        assert harness.call(harness.set_params, names).results[0].successful
    for name, value in (('memory.expire_s', float('nan')), ('unknown_threshold', float('inf')),
                        ('segmentation.min_range', float('nan'))):
        bad = SetParameters.Request(parameters=[_param(
            name, ParameterType.PARAMETER_DOUBLE, double_value=value)])
        result = harness.call(harness.set_params, bad).results[0]
        assert not result.successful and name.split('.')[-1] in result.reason, result.reason
    viewpoint = SetParameters.Request(parameters=[_param(
        'segmentation.viewpoint', ParameterType.PARAMETER_DOUBLE_ARRAY,
        double_array_value=[0.0, float('nan'), 0.0])])
    assert not harness.call(harness.set_params, viewpoint).results[0].successful
    # one crop corner at a time, as `ros2 param set` sends them
    corner = SetParameters.Request(parameters=[_param(
        'segmentation.crop_max', ParameterType.PARAMETER_DOUBLE_ARRAY,
        double_array_value=[5.0, 5.0, 5.0])])
    result = harness.call(harness.set_params, corner).results[0]
    assert result.successful, result.reason
    assert node.pipeline.config.segmentation.crop_max == (5.0, 5.0, 5.0)
    assert harness.send(scan_msg_factory(node)).detections


def test_descriptions_file_is_reread_and_a_names_model_switch_takes_one_step(
        harness, tmp_path, make_tiny_model):
    lines = tmp_path / 'mine.yaml'
    lines.write_text('widget: [a widget, a small blue plastic cube]\n')
    aligned = make_tiny_model(tmp_path / 'desc', vocabulary=['widget', 'mug'],
                              label_text='descriptions', command='test')
    both = SetParameters.Request(parameters=[
        _param('model_path', ParameterType.PARAMETER_STRING, string_value=str(aligned)),
        _param('descriptions_file', ParameterType.PARAMETER_STRING, string_value=str(lines))])
    assert all(r.successful for r in harness.call(harness.set_params, both).results)
    rec = harness.node.pipeline.recognizer
    first = rec._protos[rec.vocabulary.index('widget')].clone()
    lines.write_text('widget: [a widget, a long red metal rod with a hook at one end]\n')
    again = SetParameters.Request(parameters=[both.parameters[1]])
    assert harness.call(harness.set_params, again).results[0].successful
    second = rec._protos[rec.vocabulary.index('widget')]
    assert float(first @ second) < 0.99, 'the edited file was not read again'
    broken = tmp_path / 'broken.yaml'
    broken.write_text('widget: [unclosed\n')
    bad = SetParameters.Request(parameters=[_param(
        'descriptions_file', ParameterType.PARAMETER_STRING, string_value=str(broken))])
    result = harness.call(harness.set_params, bad).results[0]
    assert not result.successful and 'broken.yaml' in result.reason
    # back to a names model while descriptions_file is still set: one step, with a warning
    back = SetParameters.Request(parameters=[_param(
        'model_path', ParameterType.PARAMETER_STRING, string_value=str(harness.model_dir))])
    result = harness.call(harness.set_params, back).results[0]
    assert result.successful, result.reason
    assert harness.node.pipeline.recognizer.vocabulary == VOCAB


def test_a_frame_that_breaks_a_stage_is_counted_not_fatal(harness, scan_msg_factory):
    node = harness.node
    real = node.pipeline.segmenter

    def broken(cloud):
        raise RuntimeError('segmenter exploded')
    node.pipeline.segmenter = broken
    msg = scan_msg_factory(node)
    harness.pub.publish(msg)
    assert harness.wait(lambda: node.stats().get('failed', 0) >= 1)
    assert 'segmenter exploded' in node._reasons['last_failed_reason']
    node.pipeline.segmenter = real
    assert harness.send(scan_msg_factory(node)).detections


def test_managed_node_subscribes_only_while_active(rclpy_context, interfaces, tiny_model_dir,
                                                   scan_msg_factory):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from p3d_perception.ros.managed_node import ManagedPerceptionNode
    msg_mod, srv = interfaces
    node = ManagedPerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter('model_path', value=str(tiny_model_dir))])
    client = Node('test_client', context=rclpy_context)
    got = []
    client.create_subscription(msg_mod.DetectionArray, 'p3d/detections', got.append, 10)
    pub = client.create_publisher(PointCloud2, 'points', qos_profile_sensor_data)
    executor = NodeExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(node)
    executor.add_node(client)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert node.pipeline is None and pub.get_subscription_count() == 0
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline is not None and pub.get_subscription_count() == 0
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert Harness.wait(lambda: pub.get_subscription_count() == 1)
        pub.publish(scan_msg_factory(node))
        assert Harness.wait(lambda: got), 'no detections while active'
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert Harness.wait(lambda: pub.get_subscription_count() == 0)
        assert len(node.pipeline.memory) > 0          # memory survives a deactivate
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline is None
    finally:
        executor.shutdown()
        thread.join(10)
        node.destroy_node()
        client.destroy_node()
    # a destroyed managed node leaves the graph (rclpy keeps its state machine, and with it
    # the node and its change_state service, unless the node destroys it); plain nodes of
    # other tests may linger in this process until garbage collection, so the lifecycle
    # service is what is looked for
    assert not _graph_has('/p3d_perception/change_state', seconds=4.0)


def _graph_has(service: str, seconds: float) -> bool:
    """Whether a fresh participant, spinning for ``seconds``, discovers ``service``."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Node('graph_probe', context=context)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(name == service for name, _ in probe.get_service_names_and_types()):
                return True
            time.sleep(0.1)
        return False
    finally:
        probe.destroy_node()
        rclpy.shutdown(context=context)


def test_every_float_parameter_has_a_range_holding_its_default():
    """rclpy refuses values outside a descriptor's range, NaN among them, before any callback."""
    for spec in all_specs():
        if spec.descriptor.type != ParameterType.PARAMETER_DOUBLE:
            continue
        ranges = spec.descriptor.floating_point_range
        assert ranges, f'{spec.name} has no floating_point_range'
        assert ranges[0].from_value <= spec.default <= ranges[0].to_value, spec.name
