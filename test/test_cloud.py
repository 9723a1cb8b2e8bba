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


def test_matches_sensor_msgs_py_when_available():
    pc2 = pytest.importorskip('sensor_msgs_py.point_cloud2',
                              reason='sensor_msgs_py is not installable here (no wheel)')
    pts, cols = rand_points(30), rand_colors(30)
    layout = XYZ + [('rgb', 16, FLOAT32, 1)]
    msg = make_msg({'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2],
                    'rgb': packed(cols).view(np.float32)}, layout, 32)
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
    with pytest.raises(CloudError, match='cannot read PCD'):
        read_pcd(bad)


def test_cloud_from_points_validates():
    c = Cloud.from_points(np.zeros((2, 3, 3)), colors=np.ones((2, 3, 3)))
    assert (c.height, c.width) == (2, 3) and c.colors.max() == 255
    with pytest.raises(CloudError):
        Cloud.from_points(np.zeros((5, 4)))
    with pytest.raises(CloudError, match='does not match'):
        Cloud(np.zeros((6, 3), np.float32), None, 2, 2)
