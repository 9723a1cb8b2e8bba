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


def _complete_before(mcap, cut):
    """Messages of an intact MCAP whose records end before byte ``cut``."""
    from p3d_perception.bagrecovery import Recovery, scan_mcap
    found = Recovery(str(mcap), ends=[])
    list(scan_mcap(mcap, found))
    return sum(1 for e in found.ends if e <= cut), len(found.ends)


@pytest.fixture(scope='module')
def long_bag(tmp_path_factory, static_frames):
    frames = [f for f in _frames(8)]
    return bagio.write_scene_bag(tmp_path_factory.mktemp('long') / 'bag', frames)


@pytest.mark.parametrize('cut', [0.5, 0.9, 0.99, 'last 4 KB'])
def test_truncated_mcap_keeps_its_complete_messages(tmp_path, long_bag, cut, caplog):
    # the rosbags reader refuses an MCAP without its summary: 0 messages before
    mcap = next(long_bag.glob('*.mcap'))
    data = mcap.read_bytes()
    at = len(data) - 4096 if cut == 'last 4 KB' else int(len(data) * cut)
    bag = tmp_path / 'cut'
    shutil.copytree(long_bag, bag)
    next(bag.glob('*.mcap')).write_bytes(data[:at])
    complete, total = _complete_before(mcap, at)
    report = bagio.BagReport()
    with caplog.at_level('WARNING'):
        msgs = list(bagio.iter_messages(bag, report=report))
    assert len(msgs) >= 0.9 * complete and len(msgs) <= complete and complete < total + 1
    assert report.recovered == {str(bag): len(msgs)} and report.undecodable == 0
    assert str(bag) in [b for b, _ in report.truncated] and not report.bags_failed
    assert 'recovered' in report.summary()
    assert any('recovered' in r.message for r in caplog.records)
    assert bagio.cloud_topics(bag) == [bagio.CLOUD_TOPIC]
    clouds = list(bagio.iter_clouds(bag))
    assert len(clouds) == sum(1 for m in msgs if m[1] == bagio.POINTCLOUD2) > 0


def test_mcap_without_metadata_yaml_is_read_from_its_records(tmp_path, long_bag):
    bag = tmp_path / 'no_meta'
    shutil.copytree(long_bag, bag)
    (bag / 'metadata.yaml').unlink()               # ros2 bag record writes it last
    report = bagio.BagReport()
    msgs = list(bagio.iter_messages(bag, report=report))
    assert len(msgs) == 8 * 5 + 1 and report.recovered[str(bag)] == len(msgs)


def test_half_written_sqlite3_bag_keeps_its_intact_rows(tmp_path, static_frames):
    good = bagio.write_scene_bag(tmp_path / 'sq', _frames(6), storage='sqlite3')
    n_all = len(list(bagio.iter_messages(good)))
    db = next(good.glob('*.db3'))
    data = db.read_bytes()
    db.write_bytes(data[:len(data) // 2])          # pages past the cut never reached disk
    (good / 'metadata.yaml').unlink()
    report = bagio.BagReport()
    msgs = list(bagio.iter_messages(good, report=report))
    assert 0.3 * n_all < len(msgs) < n_all and report.undecodable == 0
    assert report.recovered[str(good)] == len(msgs)
    clouds = list(bagio.iter_clouds(good))
    assert clouds and all(len(c) == 160 * 120 for _, c in clouds)
    # rows come in recording order
    stamps = [m[2] for m in msgs]
    assert stamps == sorted(stamps)


def test_flipped_bytes_never_raise_and_the_rest_is_read(tmp_path, long_bag):
    mcap = next(long_bag.glob('*.mcap'))
    data = bytearray(mcap.read_bytes())
    rng = np.random.default_rng(7)
    for trial in range(6):
        bad = bytearray(data)
        for pos in rng.integers(8, len(bad) - 8, 20):
            bad[pos] ^= 1 << int(rng.integers(0, 8))
        bag = tmp_path / f'flip{trial}'
        shutil.copytree(long_bag, bag)
        next(bag.glob('*.mcap')).write_bytes(bytes(bad))
        report = bagio.BagReport()
        msgs = list(bagio.iter_messages(bag, report=report))
        clouds = list(bagio.iter_clouds(bag, report=bagio.BagReport()))
        assert len(msgs) + report.undecodable >= 20      # most of the 41 survive
        for _, c in clouds:
            assert np.abs(c.points[c.valid]).max() <= 1000.0


def test_implausible_clouds_are_counted_and_skipped(tmp_path, static_frames):
    import dataclasses
    path = tmp_path / 'far'
    ts = bagio.typestore()
    msg = bagio._cloud_msg(ts, static_frames[0], 1)
    data = np.frombuffer(bytes(msg.data), np.float32).copy().reshape(-1, 4)
    first = int(np.flatnonzero(np.isfinite(data[:, :3]).all(axis=1))[0])
    data[first, 0] = 3e30                               # x of a valid point: a flipped exponent
    bad = dataclasses.replace(msg, data=data.reshape(-1).view(np.uint8))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection('/points', bagio.POINTCLOUD2, typestore=ts)
        w.write(c, 1, ts.serialize_cdr(msg, bagio.POINTCLOUD2))
        w.write(c, 2, ts.serialize_cdr(bad, bagio.POINTCLOUD2))
    report = bagio.BagReport()
    assert [s for s, _ in bagio.iter_clouds(path, report=report)] == [1]
    assert report.implausible == 1 and 'implausible' in report.summary()
