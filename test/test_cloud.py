# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""PointCloud2 / depth / PCD decoding: every layout a real driver publishes.

Messages are built byte by byte (numpy structured arrays with explicit offsets
and byte order) so the decoder is checked against the wire format itself, not
against its own packer.
"""

from __future__ import annotations

import array
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from p3d_perception.cloud import (
    Cloud, CloudError, CloudTooLargeError, EmptyCloudError, FLOAT32, FLOAT64, INT8, INT16,
    PointField, UINT8, UINT16, UINT32, cloud_to_packed, depth_image_to_cloud, depth_to_cloud,
    pack_cloud, pointcloud2_to_cloud, read_pcd)

MOSD = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'mosd_learn'
RNG = np.random.default_rng(0)


def make_msg(values: dict, layout: list, point_step: int, height: int = 1, width=None,
             big: bool = False, row_pad: int = 0, data_type=bytes, frame_id: str = 'cam',
             stamp=(12, 345)):
    """Build a PointCloud2 stand-in: ``layout`` = [(name, offset, datatype, count)]."""
    codes = {INT8: 'i1', UINT8: 'u1', INT16: 'i2', UINT16: 'u2', 5: 'i4', UINT32: 'u4',
             FLOAT32: 'f4', FLOAT64: 'f8'}
    order = '>' if big else '<'
    n = len(next(iter(values.values())))
    width = n // height if width is None else width
    dt = np.dtype({'names': [f[0] for f in layout],
                   'formats': [np.dtype(order + codes[f[2]]) if f[3] == 1
                               else np.dtype((order + codes[f[2]], (f[3],))) for f in layout],
                   'offsets': [f[1] for f in layout], 'itemsize': point_step})
    arr = np.zeros(n, dtype=dt)
    for name, v in values.items():
        arr[name] = v
    rows = arr.tobytes()
    row_bytes = width * point_step
    row_step = row_bytes + row_pad
    data = b''.join(rows[r * row_bytes:(r + 1) * row_bytes] + b'\xab' * row_pad
                    for r in range(height))
    if data_type is np.ndarray:
        data = np.frombuffer(data, dtype=np.uint8).copy()
    elif data_type is array.array:
        data = array.array('B', data)
    elif data_type is list:
        data = list(data)
    fields = [SimpleNamespace(name=f[0], offset=f[1], datatype=f[2], count=f[3]) for f in layout]
    header = SimpleNamespace(frame_id=frame_id, stamp=SimpleNamespace(sec=stamp[0],
                                                                      nanosec=stamp[1]))
    return SimpleNamespace(header=header, height=height, width=width, fields=fields,
                           is_bigendian=big, point_step=point_step, row_step=row_step,
                           data=data, is_dense=False)


def rand_points(n):
    return RNG.uniform(-2, 2, size=(n, 3)).astype(np.float32)


def rand_colors(n):
    return RNG.integers(0, 256, size=(n, 3), dtype=np.uint8)


def packed(colors, alpha=0):
    c = colors.astype(np.uint32)
    return (np.uint32(alpha) << 24) | (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


XYZ = [('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT32, 1)]


@pytest.mark.parametrize('data_type', [bytes, np.ndarray, array.array, list])
def test_xyz_unorganised_any_buffer_type(data_type):
    pts = rand_points(50)
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2]}, XYZ, 12,
                   data_type=data_type)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (50, 3)
    np.testing.assert_array_equal(cloud.points, pts)
    assert cloud.colors is None and cloud.height == 1 and cloud.width == 50
    assert not cloud.is_organized and len(cloud) == 50
    assert cloud.frame_id == 'cam' and cloud.stamp_ns == 12 * 10**9 + 345


@pytest.mark.parametrize('big', [False, True])
def test_pcl_xyzrgb_padded_organised(big):
    # PCL PointXYZRGB: x y z _ (16 bytes) then rgb float at 16, point_step 32.
    h, w = 4, 6
    pts, cols = rand_points(h * w), rand_colors(h * w)
    rgb_float = packed(cols).view(np.float32)
    layout = XYZ + [('rgb', 16, FLOAT32, 1)]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'rgb': rgb_float}, layout,
                   32, height=h, big=big)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.is_organized and (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_array_equal(cloud.colors, cols)


@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('alpha', [0, 255])
def test_rgba_uint32_with_row_padding(big, alpha):
    h, w = 3, 5
    pts, cols = rand_points(h * w), rand_colors(h * w)
    layout = [('rgba', 0, UINT32, 1), ('x', 4, FLOAT32, 1), ('y', 8, FLOAT32, 1),
              ('z', 12, FLOAT32, 1)]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2],
                    'rgba': packed(cols, alpha)}, layout, 20, height=h, big=big, row_pad=7)
    cloud = pointcloud2_to_cloud(msg)
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_array_equal(cloud.colors, cols)
    assert 'rgba' not in cloud.fields


def test_float64_xyz_non_adjacent_and_extra_fields():
    n = 40
    pts = RNG.uniform(-1, 1, (n, 3))
    intensity = RNG.uniform(0, 100, n).astype(np.float32)
    ring = RNG.integers(0, 64, n).astype(np.uint16)
    label = RNG.integers(0, 1000, n).astype(np.uint32)
    normal = RNG.normal(size=(n, 3)).astype(np.float32)
    layout = [('z', 0, FLOAT64, 1), ('intensity', 8, FLOAT32, 1), ('x', 16, FLOAT64, 1),
              ('ring', 24, UINT16, 1), ('y', 32, FLOAT64, 1), ('label', 40, UINT32, 1),
              ('normal', 44, FLOAT32, 3)]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'intensity': intensity,
                    'ring': ring, 'label': label, 'normal': normal}, layout, 64, big=True)
    cloud = pointcloud2_to_cloud(msg)
    np.testing.assert_array_equal(cloud.points, pts.astype(np.float32))
    np.testing.assert_array_equal(cloud.fields['intensity'], intensity)
    np.testing.assert_array_equal(cloud.fields['ring'], ring)
    np.testing.assert_array_equal(cloud.fields['label'], label)
    np.testing.assert_array_equal(cloud.fields['normal'], normal)
    assert cloud.fields['ring'].dtype.isnative and cloud.fields['label'].dtype == np.uint32


def test_separate_r_g_b_uint8_fields():
    n = 10
    pts, cols = rand_points(n), rand_colors(n)
    layout = XYZ + [('r', 12, UINT8, 1), ('g', 13, UINT8, 1), ('b', 14, UINT8, 1)]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'r': cols[:, 0],
                    'g': cols[:, 1], 'b': cols[:, 2]}, layout, 16)
    np.testing.assert_array_equal(pointcloud2_to_cloud(msg).colors, cols)


def test_nan_and_inf_become_invalid_rows_in_place():
    pts = rand_points(8)
    pts[1] = np.nan
    pts[3, 2] = np.inf
    pts[5, 0] = np.nan  # partially invalid
    pts[6] = [-np.inf, 1.0, 2.0]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2]}, XYZ, 12)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.valid.tolist() == [True, False, True, False, True, False, False, True]
    assert np.isnan(cloud.points[~cloud.valid]).all()
    np.testing.assert_array_equal(cloud.points[cloud.valid], pts[[0, 2, 4, 7]])


def _rclpy_msg(msg):
    """The same cloud as a real sensor_msgs/PointCloud2 (sensor_msgs_py checks the type)."""
    from sensor_msgs.msg import PointCloud2
    from sensor_msgs.msg import PointField as RosPointField
    out = PointCloud2(height=msg.height, width=msg.width, is_bigendian=msg.is_bigendian,
                      point_step=msg.point_step, row_step=msg.row_step, is_dense=msg.is_dense)
    out.fields = [RosPointField(name=f.name, offset=f.offset, datatype=f.datatype,
                                count=f.count) for f in msg.fields]
    out.data = bytes(msg.data)
    return out


def test_matches_sensor_msgs_py_when_available():
    pc2 = pytest.importorskip('sensor_msgs_py.point_cloud2',
                              reason='sensor_msgs_py is not installable here (no wheel)')
    pts, cols = rand_points(30), rand_colors(30)
    layout = XYZ + [('rgb', 16, FLOAT32, 1)]
    msg = _rclpy_msg(make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2],
                               'rgb': packed(cols).view(np.float32)}, layout, 32))
    ref = np.array([list(p) for p in pc2.read_points(msg, field_names=('x', 'y', 'z'))],
                   dtype=np.float32)
    np.testing.assert_array_equal(pointcloud2_to_cloud(msg).points, ref)


def _rosbags_msg(pk, typestore, frame_id='camera_color_optical_frame'):
    t = typestore.types
    return t['sensor_msgs/msg/PointCloud2'](
        header=t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](sec=7, nanosec=9),
                                        frame_id=frame_id),
        height=pk.height, width=pk.width,
        fields=[t['sensor_msgs/msg/PointField'](name=f.name, offset=f.offset,
                                                datatype=f.datatype, count=f.count)
                for f in pk.fields],
        is_bigendian=pk.is_bigendian, point_step=pk.point_step, row_step=pk.row_step,
        data=np.frombuffer(pk.data, dtype=np.uint8).copy(), is_dense=pk.is_dense)


def test_rosbags_message_through_a_real_bag(tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    h, w = 6, 8
    pts, cols = rand_points(h * w), rand_colors(h * w)
    pts[4] = np.nan
    label = np.arange(h * w, dtype=np.uint32)
    pk = pack_cloud(pts, cols, {'label': label}, height=h, width=w)
    msg = _rosbags_msg(pk, store)
    bag = tmp_path / 'bag'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/points', msg.__msgtype__, typestore=store)
        writer.write(conn, 7 * 10**9 + 9, store.serialize_cdr(msg, msg.__msgtype__))
    with AnyReader([bag], default_typestore=store) as reader:
        (conn, _, raw), = list(reader.messages())
        decoded = reader.deserialize(raw, conn.msgtype)
    cloud = pointcloud2_to_cloud(decoded)
    assert (cloud.height, cloud.width) == (h, w)
    assert cloud.frame_id == 'camera_color_optical_frame' and cloud.stamp_ns == 7 * 10**9 + 9
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_array_equal(cloud.colors, cols)
    np.testing.assert_array_equal(cloud.fields['label'], label)


def test_pack_cloud_layout_and_round_trip():
    h, w = 5, 7
    pts, cols = rand_points(h * w), rand_colors(h * w)
    pts[3] = np.nan
    extra = {'intensity': RNG.uniform(size=h * w).astype(np.float32),
             'id': np.arange(h * w, dtype=np.int64), 'flag': np.ones(h * w, dtype=bool),
             'normal': RNG.normal(size=(h * w, 3)).astype(np.float32)}
    pk = pack_cloud(pts.reshape(h, w, 3), cols, extra)
    names = [f.name for f in pk.fields]
    assert names[:4] == ['x', 'y', 'z', 'rgb']
    assert [(f.offset, f.datatype) for f in pk.fields[:4]] == [(0, 7), (4, 7), (8, 7), (12, 7)]
    assert pk.row_step == pk.point_step * w and len(pk.data) == pk.row_step * h
    assert not pk.is_dense and not pk.is_bigendian
    # rgb is the PCL packing: 0x00RRGGBB reinterpreted as float32
    first = struct.unpack_from('<I', pk.data, 12)[0]
    assert first == (int(cols[0, 0]) << 16) | (int(cols[0, 1]) << 8) | int(cols[0, 2])
    cloud = pointcloud2_to_cloud(pk)
    assert (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.points, pts)
    np.testing.assert_array_equal(cloud.colors, cols)
    np.testing.assert_array_equal(cloud.fields['intensity'], extra['intensity'])
    np.testing.assert_array_equal(cloud.fields['id'], extra['id'])
    np.testing.assert_array_equal(cloud.fields['flag'], 1)
    np.testing.assert_array_equal(cloud.fields['normal'], extra['normal'])
    again = pointcloud2_to_cloud(cloud_to_packed(cloud))
    np.testing.assert_array_equal(again.points, pts)


def test_pointfield_dataclass():
    f = PointField('x', 0, FLOAT32)
    assert f.count == 1 and f.datatype == 7


# ------------------------------------------------------------------ bad input

def _good():
    pts = rand_points(12)
    return make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2]}, XYZ, 12, height=3)


def test_empty_cloud_raises():
    msg = _good()
    msg.height, msg.width, msg.data = 0, 0, b''
    with pytest.raises(EmptyCloudError, match='empty'):
        pointcloud2_to_cloud(msg)


def test_missing_xyz_fields_raises():
    msg = _good()
    msg.fields = [SimpleNamespace(name='intensity', offset=0, datatype=FLOAT32, count=1)]
    with pytest.raises(CloudError, match='no x/y/z field'):
        pointcloud2_to_cloud(msg)
    msg.fields = []
    with pytest.raises(CloudError, match='no fields'):
        pointcloud2_to_cloud(msg)


def test_short_data_raises():
    msg = _good()
    msg.data = msg.data[:-1]
    with pytest.raises(CloudError, match='expected height\\*row_step'):
        pointcloud2_to_cloud(msg)
    msg = _good()
    msg.row_step = 8
    with pytest.raises(CloudError, match='row_step'):
        pointcloud2_to_cloud(msg)


def test_field_outside_point_and_bad_datatype_raise():
    msg = _good()
    msg.fields[2].offset = 10
    with pytest.raises(CloudError, match='does not fit in point_step'):
        pointcloud2_to_cloud(msg)
    msg = _good()
    msg.fields[0].datatype = 42
    with pytest.raises(CloudError, match='unknown PointField datatype'):
        pointcloud2_to_cloud(msg)


def test_all_nan_raises():
    nan = np.full(6, np.nan, dtype=np.float32)
    msg = make_msg({'x': nan, 'y': nan, 'z': nan}, XYZ, 12)
    with pytest.raises(EmptyCloudError, match='none is finite'):
        pointcloud2_to_cloud(msg)
    assert len(pointcloud2_to_cloud(msg, require_valid=False)) == 6


def test_ten_million_points_refused_before_decoding():
    msg = _good()
    msg.height, msg.width = 2500, 4000  # 10M points; the buffer is never touched
    with pytest.raises(CloudTooLargeError, match='max_points=5000000'):
        pointcloud2_to_cloud(msg)
    with pytest.raises(CloudTooLargeError, match='max_points=10'):
        pointcloud2_to_cloud(_good(), max_points=10)


def test_point_step_beyond_a_c_int_is_a_cloud_error():
    # numpy refuses such an itemsize with a plain ValueError ("won't fit into a C int")
    msg = _good()
    msg.point_step = 2 ** 31
    msg.fields[2].offset = 2 ** 31 - 4
    with pytest.raises(CloudError, match='point_step must be in'):
        pointcloud2_to_cloud(msg)


def test_r_g_b_with_different_counts_stay_plain_fields():
    layout = XYZ + [('r', 12, UINT8, 1), ('g', 13, UINT8, 2), ('b', 15, UINT8, 1)]
    pts = rand_points(4)
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'r': [1, 2, 3, 4],
                    'g': np.full((4, 2), 9), 'b': [5, 6, 7, 8]}, layout, 16)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.colors is None
    assert cloud.fields['g'].shape == (4, 2) and cloud.fields['r'].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize('datatype', [UINT16, INT16, 5])
def test_integer_r_g_b_clip_instead_of_wrapping(datatype):
    size = 2 if datatype in (UINT16, INT16) else 4
    layout = XYZ + [(c, 12 + i * size, datatype, 1) for i, c in enumerate('rgb')]
    pts = rand_points(3)
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'r': [300, 255, 0],
                    'g': [1000, 7, 128], 'b': [0 if datatype == UINT16 else -5, 1, 256]},
                   layout, 12 + 3 * size)
    np.testing.assert_array_equal(pointcloud2_to_cloud(msg).colors,
                                  [[255, 255, 0], [255, 7, 1], [0, 128, 255]])


def test_data_longer_than_the_layout_is_refused():
    msg = _good()
    msg.data = msg.data + b'\x00' * 12
    with pytest.raises(CloudError, match='more than height\\*row_step'):
        pointcloud2_to_cloud(msg)


def xyz_fields():
    return [SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in XYZ]


def _mutated(**changes):
    msg = _good()
    for key, value in changes.items():
        if key.startswith('f0_'):
            setattr(msg.fields[0], key[3:], value)
        else:
            setattr(msg, key, value)
    return msg


MALFORMED = {
    'negative width': _mutated(width=-4),
    'huge height': _mutated(height=2 ** 62),
    'huge width and row_step': _mutated(width=2 ** 40, row_step=2 ** 45),
    'huge row_step': _mutated(row_step=2 ** 62),
    'zero point_step': _mutated(point_step=0, row_step=0),
    'negative point_step': _mutated(point_step=-12),
    'offset outside the point': _mutated(f0_offset=12),
    'negative offset': _mutated(f0_offset=-4),
    'huge offset': _mutated(f0_offset=2 ** 63),
    'unknown datatype': _mutated(f0_datatype=0),
    'negative count': _mutated(f0_count=-1),
    'huge count': _mutated(f0_count=2 ** 40),
    'height is None': _mutated(height=None),
    'width is a float': _mutated(width=4.0),
    'width is NaN': _mutated(width=float('nan')),
    'offset is text': _mutated(f0_offset='0'),
    'data is text': _mutated(data='\x00' * 48),
    'data is a list of big ints': _mutated(data=[300] * 48),
    'data is a list of negative ints': _mutated(data=[-1] * 48),
    'data is None': _mutated(data=None),
    'fields is None': _mutated(fields=None),
    'fields is a number': _mutated(fields=3),
    'a field is a number': _mutated(fields=[1, 2, 3]),
    'stamp is text': _mutated(header=SimpleNamespace(frame_id='c', stamp=SimpleNamespace(
        sec='x', nanosec=0))),
    'object data': _mutated(data=np.array([object()] * 48)),
    'fields overlap a thousandfold': _mutated(
        point_step=64, row_step=256, data=b'\x00' * 768,
        fields=xyz_fields() + [SimpleNamespace(name=f'f{i}', offset=0, datatype=UINT8,
                                               count=64) for i in range(300)]),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_layouts_give_a_cloud_error_with_a_reason(case):
    with pytest.raises(CloudError) as info:
        pointcloud2_to_cloud(MALFORMED[case])
    assert str(info.value) and 'unexpected' not in str(info.value), str(info.value)


def test_lenient_layouts_still_decode():
    msg = _mutated(f0_count=0)                       # count 0 is read as 1
    assert len(pointcloud2_to_cloud(msg)) == 12
    msg = _good()
    msg.fields.append(SimpleNamespace(name='x', offset=0, datatype=INT8, count=1))
    np.testing.assert_array_equal(pointcloud2_to_cloud(msg).points,
                                  pointcloud2_to_cloud(_good_same(msg)).points)
    msg = _good()
    msg.data = np.frombuffer(msg.data, dtype=np.float32)  # a float array: its bytes count
    assert len(pointcloud2_to_cloud(msg)) == 12


def _good_same(msg):
    out = SimpleNamespace(**vars(msg))
    out.fields = msg.fields[:3]
    return out


def test_float64_overflow_becomes_invalid_not_inf():
    layout = [('x', 0, FLOAT64, 1), ('y', 8, FLOAT64, 1), ('z', 16, FLOAT64, 1)]
    msg = make_msg({'x': [1e300, 1.0], 'y': [0.0, 1.0], 'z': [1.0, 1.0]}, layout, 24)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.valid.tolist() == [False, True] and np.isnan(cloud.points[0]).all()


def test_implausible_clouds_are_named():
    from p3d_perception.cloud import implausible
    cloud = Cloud.from_points(np.array([[0, 0, 1], [1e6, 0, 1]], np.float32))
    assert '1e+06 m' in implausible(cloud)
    assert implausible(Cloud.from_points(np.array([[0, 0, 1], [2, 3, 4]], np.float32))) == ''
    assert implausible(Cloud.from_points(np.full((2, 3), np.nan, np.float32))) == ''


def test_not_a_message_raises():
    with pytest.raises(CloudError, match='no attribute'):
        pointcloud2_to_cloud(object())


def test_pack_bad_input_raises():
    with pytest.raises(CloudError, match='shape'):
        pack_cloud(np.zeros((4, 2)))
    with pytest.raises(EmptyCloudError):
        pack_cloud(np.zeros((0, 3)))
    with pytest.raises(CloudError, match='height\\*width'):
        pack_cloud(np.zeros((10, 3)), height=3, width=3)
    with pytest.raises(CloudError, match='colors'):
        pack_cloud(np.zeros((4, 3)), colors=np.zeros((3, 3), np.uint8))


# ------------------------------------------------------------------ depth images

K_D435 = np.array([[615.0, 0, 322.5], [0, 615.5, 238.25], [0, 0, 1]])


def test_depth_16uc1_geometry():
    h, w = 48, 64
    depth = RNG.integers(300, 3000, (h, w)).astype(np.uint16)
    depth[0, 0] = 0
    K = np.array([[60.0, 0, 31.5], [0, 61.0, 23.0], [0, 0, 1]])
    cloud = depth_to_cloud(depth, K, frame_id='depth', stamp_ns=5)
    assert cloud.is_organized and (cloud.height, cloud.width) == (h, w)
    p = cloud.points.reshape(h, w, 3)
    assert np.isnan(p[0, 0]).all()
    v, u = 10, 40
    z = depth[v, u] / 1000.0
    np.testing.assert_allclose(p[v, u], [(u - 31.5) * z / 60.0, (v - 23.0) * z / 61.0, z],
                               rtol=1e-6)
    # a point projects back onto its own pixel
    q = p[20, 50]
    assert abs(60.0 * q[0] / q[2] + 31.5 - 50) < 1e-3 and abs(61.0 * q[1] / q[2] + 23 - 20) < 1e-3


def test_depth_32fc1_plane_is_planar_and_scale_option():
    h, w = 480, 640
    depth = np.full((h, w), 1.25, dtype=np.float32)
    depth[5, 5] = np.nan
    depth[6, 6] = np.inf
    cloud = depth_to_cloud(depth, K_D435)
    assert cloud.valid.sum() == h * w - 2
    np.testing.assert_allclose(cloud.points[cloud.valid, 2], 1.25)
    corner = cloud.points.reshape(h, w, 3)[0, 0]
    np.testing.assert_allclose(corner[:2], [-322.5 * 1.25 / 615.0, -238.25 * 1.25 / 615.5],
                               rtol=1e-5)
    mm = depth_to_cloud(np.full((4, 4), 2, np.uint16), np.eye(3) * 2 + np.diag([0, 0, -1]),
                        depth_scale=0.5)
    np.testing.assert_allclose(mm.points[:, 2], 1.0)


def _image_msg(arr, encoding, big=False, pad=0):
    h, w = arr.shape[:2]
    a = arr.astype(arr.dtype.newbyteorder('>' if big else '<'))
    row = a.reshape(h, -1).view(np.uint8).reshape(h, -1)
    data = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1).tobytes()
    return SimpleNamespace(header=SimpleNamespace(frame_id='cam', stamp=SimpleNamespace(
        sec=1, nanosec=2)), height=h, width=w, encoding=encoding, is_bigendian=int(big),
        step=row.shape[1] + pad, data=data)


@pytest.mark.parametrize('big', [False, True])
def test_depth_image_message_with_color(big):
    h, w = 6, 8
    depth = RNG.integers(500, 1500, (h, w)).astype(np.uint16)
    rgb = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    info = SimpleNamespace(height=h, width=w, k=[5.0, 0, 4.0, 0, 5.0, 3.0, 0, 0, 1])
    cloud = depth_image_to_cloud(_image_msg(depth, '16UC1', big, pad=4), info,
                                 _image_msg(rgb[:, :, ::-1].copy(), 'bgr8', pad=3))
    assert cloud.frame_id == 'cam' and cloud.stamp_ns == 1_000_000_002
    np.testing.assert_allclose(cloud.points[:, 2], depth.reshape(-1) / 1000.0, rtol=1e-6)
    np.testing.assert_array_equal(cloud.colors, rgb.reshape(-1, 3))
    f32 = depth_image_to_cloud(_image_msg(depth.astype(np.float32) / 1000, '32FC1', big), info)
    np.testing.assert_allclose(f32.points, cloud.points, rtol=1e-6)


def test_depth_bad_input_raises():
    with pytest.raises(CloudError, match='focal'):
        depth_to_cloud(np.ones((4, 4), np.uint16), np.zeros((3, 3)))
    with pytest.raises(CloudError, match='9 values'):
        depth_to_cloud(np.ones((4, 4), np.uint16), np.eye(2))
    with pytest.raises(CloudError, match='non-empty'):
        depth_to_cloud(np.ones((0, 4), np.uint16), K_D435)
    info = SimpleNamespace(height=4, width=4, k=[1.0, 0, 2, 0, 1, 2, 0, 0, 1])
    with pytest.raises(CloudError, match='unsupported depth encoding'):
        depth_image_to_cloud(_image_msg(np.ones((4, 4), np.uint8), 'mono8'), info)
    with pytest.raises(CloudError, match='CameraInfo is'):
        depth_image_to_cloud(_image_msg(np.ones((5, 4), np.uint16), '16UC1'), info)
    short = _image_msg(np.ones((4, 4), np.uint16), '16UC1')
    short.data = short.data[:-2]
    with pytest.raises(CloudError, match='expected height\\*step'):
        depth_image_to_cloud(short, info)


GOOD_K = [100.0, 0, 2, 0, 100.0, 2, 0, 0, 1]


def _depth_msgs(h=4, w=5, data=bytes(40), encoding='16UC1', step=None, K=GOOD_K):
    img = SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=False,
                          step=w * 2 if step is None else step, data=data,
                          header=SimpleNamespace(frame_id='d', stamp=SimpleNamespace(
                              sec=1, nanosec=2)))
    return img, SimpleNamespace(height=h, width=w, k=K)


@pytest.mark.parametrize('case', [
    {'data': bytes(4 * 5 * 2 + 2)}, {'step': 2 ** 40}, {'h': 2 ** 40}, {'h': None},
    {'K': ['a'] * 9}, {'K': [0.0] * 9}, {'K': None}, {'encoding': b'16UC1'},
    {'data': 'text'}, {'step': -10}])
def test_malformed_depth_images_give_a_cloud_error(case):
    img, info = _depth_msgs(**case)
    with pytest.raises(CloudError) as exc:
        depth_image_to_cloud(img, info)
    assert str(exc.value) and 'unexpected' not in str(exc.value), str(exc.value)


def test_depth_overflow_becomes_invalid_not_inf():
    d = np.full((2, 3), 3e38, np.float32)
    d[0, 0] = 1.0
    img, info = _depth_msgs(2, 3, d.tobytes(), '32FC1', 12, [1e-3, 0, 1, 0, 1e-3, 1, 0, 0, 1])
    cloud = depth_image_to_cloud(img, info)
    assert (np.isfinite(cloud.points) | np.isnan(cloud.points)).all()   # never inf
    assert cloud.valid.tolist() == [True, False, False, False, True, False]
    with pytest.raises(CloudError, match='depth_scale'):
        depth_to_cloud(d, np.eye(3), depth_scale=float('nan'))


# ------------------------------------------------------------------ PCD

@pytest.mark.skipif(not MOSD.is_dir(), reason='mOSD scans not present')
def test_read_real_mosd_scan_keeps_label_field():
    cloud = read_pcd(MOSD / 'learn0.pcd')
    assert (cloud.height, cloud.width) == (480, 640) and cloud.is_organized
    label = cloud.fields['label']
    assert label.shape == (480 * 640,) and label.dtype == np.uint32
    # the README's convention: label 0 exactly where the point is invalid
    np.testing.assert_array_equal(label == 0, ~cloud.valid)
    assert set(np.unique(label // 10)) >= {0, 2, 3}
    assert cloud.colors is not None and cloud.colors[cloud.valid].std() > 10
    z = cloud.points[cloud.valid, 2]
    assert 0.3 < np.median(z) < 3.0  # Kinect metres, camera frame


def test_read_ascii_and_binary_pcd(tmp_path):
    header = ('# .PCD v0.7\nVERSION 0.7\nFIELDS x y z rgb label\nSIZE 4 4 4 4 4\n'
              'TYPE F F F F U\nCOUNT 1 1 1 1 1\nWIDTH 3\nHEIGHT 1\n'
              'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\n')
    rgb = struct.unpack('<f', struct.pack('<I', 0x00FF8001))[0]
    ascii_path = tmp_path / 'a.pcd'
    ascii_path.write_text(header + f'DATA ascii\n0 0 1 {rgb!r} 5\n1 2 3 {rgb!r} 6\n'
                          f'nan nan nan {rgb!r} 0\n')
    cloud = read_pcd(ascii_path)
    np.testing.assert_array_equal(cloud.points[:2], [[0, 0, 1], [1, 2, 3]])
    assert cloud.valid.tolist() == [True, True, False]
    np.testing.assert_array_equal(cloud.colors[0], [255, 128, 1])
    np.testing.assert_array_equal(cloud.fields['label'], [5, 6, 0])
    binary_path = tmp_path / 'b.pcd'
    body = np.zeros(3, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<u4'),
                              ('label', '<u4')])
    body['z'] = [1, 2, 3]
    body['label'] = [7, 8, 9]
    binary_path.write_bytes((header + 'DATA binary\n').encode() + body.tobytes())
    cloud = read_pcd(binary_path)
    np.testing.assert_array_equal(cloud.points[:, 2], [1, 2, 3])
    np.testing.assert_array_equal(cloud.fields['label'], [7, 8, 9])


def test_read_pcd_errors(tmp_path):
    with pytest.raises(CloudError, match='not found'):
        read_pcd(tmp_path / 'missing.pcd')
    bad = tmp_path / 'bad.pcd'
    bad.write_text('this is not a pcd file\n')
    with pytest.raises(CloudError, match='not a PCD file'):
        read_pcd(bad)


def test_cloud_from_points_validates():
    c = Cloud.from_points(np.zeros((2, 3, 3)), colors=np.ones((2, 3, 3)))
    assert (c.height, c.width) == (2, 3) and c.colors.max() == 255
    with pytest.raises(CloudError):
        Cloud.from_points(np.zeros((5, 4)))
    with pytest.raises(CloudError, match='does not match'):
        Cloud(np.zeros((6, 3), np.float32), None, 2, 2)


# ------------------------------------------------------------------ PCD: the project's reader

MOSD_CLUTTER = MOSD.parent / 'mosd_clutter'
PCD_KEYS = ('VERSION', 'FIELDS', 'SIZE', 'TYPE', 'COUNT', 'WIDTH', 'HEIGHT', 'VIEWPOINT',
            'POINTS', 'DATA')
PCD_HEADER = {'VERSION': '0.7', 'FIELDS': 'x y z label', 'SIZE': '4 4 4 4', 'TYPE': 'F F F U',
              'COUNT': '1 1 1 1', 'WIDTH': '3', 'HEIGHT': '1', 'VIEWPOINT': '0 0 0 1 0 0 0',
              'POINTS': '3', 'DATA': 'binary'}
PCD_BODY = np.zeros(3, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('label', '<u4')])
PCD_BODY['z'], PCD_BODY['label'] = [1, 2, 3], [4, 5, 6]


def _pcd(tmp_path, body=None, name='t.pcd', **header):
    """A PCD file from PCD_HEADER with some lines changed (None drops a line)."""
    lines = {**PCD_HEADER, **header}
    text = ''.join(f'{k} {lines[k]}\n' for k in PCD_KEYS if lines.get(k) is not None)
    path = tmp_path / name
    path.write_bytes(text.encode() + (PCD_BODY.tobytes() if body is None else body))
    return path


def _same_cloud(a, b):
    assert (a.height, a.width) == (b.height, b.width)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.colors, b.colors)
    assert a.fields.keys() == b.fields.keys()
    for k in a.fields:
        assert a.fields[k].dtype == b.fields[k].dtype
        np.testing.assert_array_equal(a.fields[k], b.fields[k])


@pytest.mark.parametrize('scan', ['mosd_learn/learn0.pcd', 'mosd_learn/learn17.pcd',
                                  'mosd_clutter/test56.pcd'])
def test_real_scans_read_as_pypcd4_read_them(scan):
    pypcd4 = pytest.importorskip('pypcd4')
    from p3d_perception.cloud import _structured_to_cloud
    path = MOSD.parent / scan
    if not path.is_file():
        pytest.skip(f'{path} not present')
    ref = pypcd4.PointCloud.from_path(path)
    h, w = int(ref.metadata.height), int(ref.metadata.width)
    _same_cloud(read_pcd(path), _structured_to_cloud(ref.pc_data, h, w))


def test_pcd_round_trip_every_data_kind_and_count_fields(tmp_path):
    from p3d_perception.pcd import encode_pcd
    arr = np.zeros(5, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<u4'),
                             ('t', '<f8'), ('i', '<i2')])
    arr['x'], arr['z'], arr['t'] = np.arange(5) / 7, [1, 2, np.nan, 4, 5], np.pi
    arr['rgb'], arr['i'] = 0x0A0B0C, [-3, 2, 1, 0, 32767]
    clouds = []
    for kind in ('ascii', 'binary', 'binary_compressed'):
        path = tmp_path / f'{kind}.pcd'
        path.write_bytes(encode_pcd(arr, kind))
        clouds.append(read_pcd(path))
    for c in clouds[1:]:
        _same_cloud(clouds[0], c)
    c = clouds[0]
    np.testing.assert_array_equal(c.points[[0, 1, 3, 4], 0], arr['x'][[0, 1, 3, 4]])
    assert c.valid.tolist() == [True, True, False, True, True]
    assert c.colors[0].tolist() == [10, 11, 12] and c.fields['t'].dtype == np.float64
    # COUNT 3 is one (N, 3) field, as a PointField with count 3; '_' pads are dropped
    text = ('VERSION 0.7\nFIELDS x y z n _\nSIZE 4 4 4 4 1\nTYPE F F F F U\nCOUNT 1 1 1 3 4\n'
            'WIDTH 2\nHEIGHT 1\nPOINTS 2\nDATA ascii\n0 0 1 1 2 3 0 0 0 0\n'
            '0 0 2 4 5 6 9 9 9 9\n')
    (tmp_path / 'n.pcd').write_text(text)
    c = read_pcd(tmp_path / 'n.pcd')
    assert list(c.fields) == ['n'] and c.fields['n'].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_a_huge_count_in_a_huge_header_is_refused_before_allocating(tmp_path):
    # pypcd4 grew to 5.5 GB on this file before any size check
    path = _pcd(tmp_path, COUNT='1 1 1 1000000000',
                VERSION='0.7\n' + '# padding\n' * 24_000)
    assert path.stat().st_size > 240_000
    with pytest.raises(CloudError, match='bytes per point.*SIZE or COUNT'):
        read_pcd(path)


def test_an_lzf_block_claiming_60m_points_is_refused_before_decoding(tmp_path):
    # pypcd4 decoded 2.2 GB before max_points refused this 8 MB file
    n = 60_000_000
    block = b'\xff\xff\x00' * (8_000_000 // 3)   # long back-references: a zip bomb
    body = struct.pack('<II', len(block), n * 16) + block
    path = _pcd(tmp_path, body, WIDTH=str(n), POINTS=str(n), DATA='binary_compressed')
    with pytest.raises(CloudTooLargeError, match='60000000 points.*max_points'):
        read_pcd(path)
    with pytest.raises(CloudError, match='cannot hold'):
        read_pcd(path, max_points=10 ** 8)


BAD_PCD = {
    'POINTS lies': ({'POINTS': '2'}, None, 'POINTS 2 differs from WIDTH x HEIGHT'),
    'WIDTH x HEIGHT lie': ({'WIDTH': '2', 'HEIGHT': '2', 'POINTS': '4'}, None,
                           '48 bytes of point data, the header needs'),
    'points and width lie low': ({'WIDTH': '2', 'POINTS': '2'}, None, 'bytes after'),
    'no FIELDS': ({'FIELDS': None}, None, 'no FIELDS line'),
    'no DATA': ({'DATA': None}, b'', 'no DATA line'),
    'SIZE too short': ({'SIZE': '4 4 4'}, None, 'SIZE has 3 value'),
    'TYPE X': ({'TYPE': 'F F F X'}, None, "TYPE 'X'"),
    'SIZE 3': ({'SIZE': '4 4 4 3'}, None, 'SIZE 3'),
    'float of size 2': ({'TYPE': 'F F F F', 'SIZE': '4 4 4 2'}, None, 'SIZE 2'),
    'COUNT 0': ({'COUNT': '1 1 1 0'}, None, 'COUNT 0'),
    'COUNT text': ({'COUNT': '1 1 1 one'}, None, 'COUNT must be integers'),
    'negative WIDTH': ({'WIDTH': '-3', 'POINTS': '-3'}, None, 'negative WIDTH'),
    'no points': ({'WIDTH': '0', 'POINTS': '0'}, b'', 'holds no points'),
    'VERSION 9': ({'VERSION': '9.0'}, None, 'unsupported VERSION'),
    'duplicate fields': ({'FIELDS': 'x y z x'}, None, 'duplicate field name'),
    'twice WIDTH': ({'HEIGHT': '1\nWIDTH 3'}, None, 'WIDTH appears twice'),
    'bad VIEWPOINT': ({'VIEWPOINT': '0 0 nan 1 0 0 0'}, None, 'VIEWPOINT must be 7 finite'),
    'unknown DATA': ({'DATA': 'binary_lz4'}, None, 'unknown DATA'),
    'binary cut short': ({}, PCD_BODY.tobytes()[:-1], 'file cut short'),
    'binary with trailing data': ({}, PCD_BODY.tobytes() + b'\x01' * 16, 'bytes after'),
    'compressed without sizes': ({'DATA': 'binary_compressed'}, b'\x01\x00', 'no size fields'),
    'compressed size lies': ({'DATA': 'binary_compressed'},
                             struct.pack('<II', 10 ** 6, 48) + bytes(50), 'cut short'),
    'uncompressed size lies': ({'DATA': 'binary_compressed'},
                               struct.pack('<II', 2, 4) + b'\x01ab', 'declares 4 bytes'),
    'LZF reference before the start': ({'DATA': 'binary_compressed'},
                                       struct.pack('<II', 2, 48) + b'\x20\x05',
                                       'before the start'),
    'LZF cut inside a literal': ({'DATA': 'binary_compressed'},
                                 struct.pack('<II', 3, 48) + b'\x1fab', 'passes the end'),
    'LZF decodes short': ({'DATA': 'binary_compressed'},
                          struct.pack('<II', 3, 48) + b'\x01ab', 'decodes to 2 bytes'),
    'ascii with a missing value': ({'DATA': 'ascii'}, b'0 0 1 4\n0 0 2\n0 0 3 6\n', 'ascii'),
    'ascii with too many lines': ({'DATA': 'ascii'}, b'0 0 1 4\n' * 4, 'more than 3 lines'),
    'ascii with too few lines': ({'DATA': 'ascii'}, b'0 0 1 4\n' * 2 + b' ' * 40,
                                 '2 lines of points'),
    'ascii text in a number': ({'DATA': 'ascii'}, b'0 0 1 4\n0 zero 2 5\n0 0 3 6\n', 'zero'),
    'ascii negative unsigned': ({'DATA': 'ascii'}, b'0 0 1 4\n0 0 2 -5\n0 0 3 6\n', 'ascii'),
    'ascii non-text': ({'DATA': 'ascii'}, b'0 0 1 4\n0 0 2 \xff\n0 0 3 6\n', 'non-text'),
    'header not text': ({'VERSION': '0.7\n\x89\xfe\xff'}, None, 'is not text'),
    'huge field list': ({'FIELDS': ' '.join(f'f{i}' for i in range(5000))}, None,
                        'more than 4096'),
}


@pytest.mark.parametrize('case', sorted(BAD_PCD))
def test_malformed_pcd_files_name_what_is_wrong(tmp_path, case):
    header, body, reason = BAD_PCD[case]
    with pytest.raises(CloudError) as info:
        read_pcd(_pcd(tmp_path, body, **header))
    assert reason in str(info.value) and 'unexpected' not in str(info.value), str(info.value)


@pytest.mark.parametrize('content', [b'', b'\x00' * 100, b'VERSION 0.7', np.random.default_rng(
    3).bytes(5000), b'# only a comment\n'])
def test_garbage_is_not_a_pcd_file(tmp_path, content):
    path = tmp_path / 'g.pcd'
    path.write_bytes(content)
    with pytest.raises(CloudError) as info:
        read_pcd(path)
    assert str(info.value) and 'unexpected' not in str(info.value), str(info.value)


def test_pypcd4_is_not_in_the_runtime_path():
    import sys
    for name in [m for m in sys.modules if m.startswith(('pypcd4', 'lzf'))]:
        del sys.modules[name]
    read_pcd(MOSD / 'learn0.pcd') if MOSD.is_dir() else None
    assert 'pypcd4' not in sys.modules and 'lzf' not in sys.modules
