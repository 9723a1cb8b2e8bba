# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Synthetic bags must be real rosbag2 files, and reading must survive broken ones.

Bags are written and read back through the ``rosbags`` library (both storage
plugins), checking message types, payloads, QoS and ground truth; then bags
are truncated or salted with bad messages to check that readers report and
skip the damage instead of aborting.
"""

import json
import shutil

import numpy as np
import pytest
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from p3d_perception import bagio
from p3d_perception.training.synthetic import (
    CAMERA_PRESETS, camera_trajectory, generate_scene, render)

SMALL = CAMERA_PRESETS['d435'].replace(width=160, height=120, fx=95.75, fy=95.75, cx=80.0,
                                       cy=60.0)


def _frames(n=3, moving=False, seed=0):
    scene = generate_scene(seed, n_objects=(3, 5))
    poses = camera_trajectory(scene, n, seed)
    if not moving:
        poses = [poses[0]] * n
    return [render(scene, SMALL, i, pose=p) for i, p in enumerate(poses)]


@pytest.fixture(scope='module')
def static_frames():
    return _frames(3)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_scene_bag_round_trip(tmp_path, static_frames, storage):
    frames = static_frames
    path = bagio.write_scene_bag(tmp_path / 'bag', frames, storage=storage)
    ext = '.mcap' if storage == 'mcap' else '.db3'
    assert any(p.suffix == ext for p in path.iterdir())
    assert (path / 'metadata.yaml').is_file()
    expected = {
        bagio.CLOUD_TOPIC: 'sensor_msgs/msg/PointCloud2',
        bagio.DEPTH_TOPIC: 'sensor_msgs/msg/Image',
        bagio.INFO_TOPIC: 'sensor_msgs/msg/CameraInfo',
        bagio.TF_STATIC_TOPIC: 'tf2_msgs/msg/TFMessage',
        bagio.INSTANCES_TOPIC: 'sensor_msgs/msg/Image',
        bagio.OBJECTS_TOPIC: 'std_msgs/msg/String',
    }
    with Reader(path) as reader:     # plain rosbags, as `ros2 bag info` would see it
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == expected
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts[bagio.CLOUD_TOPIC] == 3 and counts[bagio.TF_STATIC_TOPIC] == 1
        tf = next(c for c in reader.connections if c.topic == bagio.TF_STATIC_TOPIC)
        assert tf.ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
        assert tf.ext.serialization_format == 'cdr'

    report = bagio.BagReport()
    msgs = list(bagio.iter_messages(path, report=report))
    assert report.ok and report.messages == len(msgs) == 3 * 5 + 1
    stamps = [m[2] for m in msgs if m[0] == bagio.CLOUD_TOPIC]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3

    clouds = list(bagio.iter_clouds(path))
    assert len(clouds) == 3
    for (stamp, cloud), f in zip(clouds, frames):
        assert (cloud.height, cloud.width) == (120, 160)
        assert cloud.frame_id == 'camera_depth_optical_frame'
        nan = np.isnan(cloud.points[:, 2])
        assert np.array_equal(nan, f.depth.reshape(-1) == 0)
        assert np.array_equal(cloud.points[~nan], f.points[~nan])
        assert np.array_equal(cloud.colors, f.colors)

    by_topic = {}
    for topic, _, _, msg in msgs:
        by_topic.setdefault(topic, []).append(msg)
    depth = by_topic[bagio.DEPTH_TOPIC][0]
    assert depth.encoding == '16UC1' and depth.step == 160 * 2
    mm = np.frombuffer(depth.data.tobytes(), '<u2').reshape(120, 160)
    assert np.array_equal(mm, np.round(frames[0].depth * 1000).astype(np.uint16))
    info = by_topic[bagio.INFO_TOPIC][0]
    assert np.allclose(np.asarray(info.k).reshape(3, 3), frames[0].K)
    assert (info.width, info.height) == (160, 120)
    tfm = by_topic[bagio.TF_STATIC_TOPIC][0].transforms[0]
    assert tfm.header.frame_id == 'table' and tfm.child_frame_id == frames[0].frame_id
    t = tfm.transform.translation
    assert np.allclose([t.x, t.y, t.z], frames[0].T_table_camera[:3, 3], atol=1e-6)

    truth = bagio.read_ground_truth(path, instances=True)
    assert len(truth) == 3
    for gt, f in zip(truth, frames):
        assert [o['category'] for o in gt['objects']] == [o['category'] for o in f.objects]
        assert np.allclose(gt['objects'][0]['pose'], f.objects[0]['pose'], atol=1e-5)
        assert np.array_equal(gt['instance'], f.instance.reshape(120, 160))
    # the same truth from the messages alone (no sidecar)
    (path / bagio.SIDECAR).unlink()
    again = bagio.read_ground_truth(path)
    assert [len(g['objects']) for g in again] == [len(g['objects']) for g in truth]
    assert json.loads(by_topic[bagio.OBJECTS_TOPIC][1].data)['stamp_ns'] == stamps[1]


def test_moving_camera_goes_on_tf(tmp_path):
    frames = _frames(3, moving=True, seed=1)
    path = bagio.write_scene_bag(tmp_path / 'moving', frames)
    msgs = [m for m in bagio.iter_messages(path, [bagio.TF_TOPIC, bagio.TF_STATIC_TOPIC])]
    assert [m[0] for m in msgs] == [bagio.TF_TOPIC] * 3
    ts = [m[3].transforms[0].transform.translation for m in msgs]
    assert not np.allclose([ts[0].x, ts[0].y], [ts[2].x, ts[2].y])


def test_write_errors(tmp_path, static_frames):
    path = bagio.write_scene_bag(tmp_path / 'b', static_frames[:1])
    with pytest.raises(FileExistsError):
        bagio.write_scene_bag(path, static_frames[:1])
    bagio.write_scene_bag(path, static_frames[:1], overwrite=True, storage='sqlite3')
    with pytest.raises(ValueError, match='storage'):
        bagio.write_scene_bag(tmp_path / 'c', static_frames[:1], storage='rosbag1')
    with pytest.raises(ValueError, match='no frames'):
        bagio.write_scene_bag(tmp_path / 'd', [])
    with pytest.raises(FileNotFoundError):
        list(bagio.iter_messages(tmp_path / 'nope'))


def test_truncated_and_garbage_bags_are_reported_and_skipped(tmp_path, static_frames, caplog):
    good = bagio.write_scene_bag(tmp_path / 'good', static_frames)
    cut = tmp_path / 'cut'
    shutil.copytree(good, cut)
    mcap = next(cut.glob('*.mcap'))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])          # power lost mid-recording
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'metadata.yaml').write_text('this: [is not, a rosbag2')
    report = bagio.BagReport()
    with caplog.at_level('WARNING'):
        msgs = list(bagio.iter_messages([junk, cut, good], report=report))
    n_good = 3 * 5 + 1
    assert len(msgs) >= n_good                      # the good bag is read completely
    assert len(msgs) < 2 * n_good
    assert str(junk) in [p for p, _ in report.bags_failed]
    damaged = {p for p, _ in report.truncated} | {p for p, _ in report.bags_failed}
    assert str(cut) in damaged
    assert not report.ok and 'unreadable' in report.summary()
    assert any('bag' in r.message for r in caplog.records if r.levelname == 'WARNING')
    clouds = list(bagio.iter_clouds([cut, good]))
    assert 3 <= len(clouds) < 6


def test_undecodable_messages_are_counted(tmp_path, static_frames):
    path = tmp_path / 'salted'
    ts = bagio.typestore()
    good = bagio._cloud_msg(ts, static_frames[0], 1)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection('/points', bagio.POINTCLOUD2, typestore=ts)
        s = w.add_connection('/chatter', 'std_msgs/msg/String', typestore=ts)
        w.write(c, 1, ts.serialize_cdr(good, bagio.POINTCLOUD2))
        w.write(c, 2, b'\x00\x01\x00\x00\xff')      # not a PointCloud2
        w.write(s, 3, ts.serialize_cdr(ts.types['std_msgs/msg/String'](data='hi'),
                                       'std_msgs/msg/String'))
        w.write(c, 4, ts.serialize_cdr(good, bagio.POINTCLOUD2))
    report = bagio.BagReport()
    msgs = list(bagio.iter_messages(path, report=report))
    assert [m[2] for m in msgs] == [1, 3, 4]
    assert report.undecodable == 1 and report.messages == 3
    report = bagio.BagReport()
    clouds = list(bagio.iter_clouds(path, report=report))   # first PointCloud2 topic
    assert [c[0] for c in clouds] == [1, 4]
    assert report.undecodable == 1
    assert bagio.cloud_topics(path) == ['/points']
