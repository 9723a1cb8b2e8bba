# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Fuzzed damage to real rosbag2 files: cut anywhere, flipped bits, metadata lost.

Whatever happened to the file, reading it yields decoded messages and a report,
never an exception; a cut MCAP gives back exactly the messages that were complete
before the cut, and every cloud that comes out is a valid Cloud.
"""

from __future__ import annotations

import shutil

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from p3d_perception import bagio
from p3d_perception.bagrecovery import Recovery, scan_mcap
from p3d_perception.cloud import pack_cloud

from test_fuzz_cloud import check_cloud

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
N_CLOUDS = 12


def _write(path, storage):
    ts = bagio.typestore()
    T = ts.types
    rng = np.random.default_rng(1)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        c = w.add_connection('/points', bagio.POINTCLOUD2, typestore=ts)
        s = w.add_connection('/chatter', 'std_msgs/msg/String', typestore=ts)
        for i in range(N_CLOUDS):
            pk = pack_cloud(rng.normal(0, 1, (60, 3)), rng.integers(0, 255, (60, 3)),
                            height=6, width=10)
            msg = T[bagio.POINTCLOUD2](
                header=T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](
                    sec=i, nanosec=0), frame_id='cam'), height=pk.height, width=pk.width,
                fields=[T['sensor_msgs/msg/PointField'](name=f.name, offset=f.offset,
                                                        datatype=f.datatype, count=f.count)
                        for f in pk.fields], is_bigendian=False, point_step=pk.point_step,
                row_step=pk.row_step, data=np.frombuffer(pk.data, np.uint8),
                is_dense=pk.is_dense)
            w.write(c, i * 10, ts.serialize_cdr(msg, bagio.POINTCLOUD2))
            w.write(s, i * 10 + 1, ts.serialize_cdr(T['std_msgs/msg/String'](data='x' * i),
                                                    'std_msgs/msg/String'))
    return path


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('fuzzbags')
    return {kind: _write(root / kind, kind) for kind in ('mcap', 'sqlite3')}


@FUZZ
@given(kind=st.sampled_from(['mcap', 'sqlite3']), cut=st.floats(0.0, 1.0),
       flips=st.integers(0, 6), seed=st.integers(0, 2 ** 32 - 1),
       drop_metadata=st.booleans())
def test_damaged_bags_read_without_raising(bags, tmp_path_factory, kind, cut, flips, seed,
                                           drop_metadata):
    src = bags[kind]
    bag = tmp_path_factory.mktemp('damaged') / 'bag'
    shutil.copytree(src, bag)
    store = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    data = bytearray(store.read_bytes())
    at = int(len(data) * cut)
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, max(at, 1), flips):
        if pos < at:
            data[pos] ^= 1 << int(rng.integers(0, 8))
    store.write_bytes(bytes(data[:at]))
    if drop_metadata:
        (bag / 'metadata.yaml').unlink()
    report = bagio.BagReport()
    msgs = list(bagio.iter_messages(bag, report=report))
    assert len(msgs) <= 2 * N_CLOUDS
    assert report.messages == len(msgs)
    for _, why in report.bags_failed + report.truncated:
        assert why
    clouds = list(bagio.iter_clouds(bag, '/points', report=bagio.BagReport()))
    for _, cloud in clouds:
        check_cloud(cloud)
    if kind == 'mcap' and not flips and at < len(data):
        found = Recovery(str(src), ends=[])
        list(scan_mcap(next(src.glob('*.mcap')), found))
        assert len(msgs) == sum(1 for e in found.ends if e <= at)
