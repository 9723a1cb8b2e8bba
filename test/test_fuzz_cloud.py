# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Fuzzed PointCloud2 layouts and depth images: a Cloud or a CloudError, nothing else.

The node drops a message on CloudError and treats anything else as a bug, so every
layout hypothesis can build (negative, huge or overlapping offsets, unknown
datatypes, counts of 0, duplicate names, big-endian, short or long data) must end in
one of the two. When a Cloud comes back, its points are checked against an
independent per-point decoder written with ``struct`` from the message's bytes.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np

from p3d_perception.cloud import (
    Cloud, CloudError, depth_image_to_cloud, pointcloud2_to_cloud, UNEXPECTED)
from p3d_perception.segmentation import SegmentationConfig, Segmenter

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STRUCT = {1: 'b', 2: 'B', 3: 'h', 4: 'H', 5: 'i', 6: 'I', 7: 'f', 8: 'd'}
NAMES = ['x', 'y', 'z', 'rgb', 'rgba', 'r', 'g', 'b', 'intensity', '', '_pad']
SEGMENTER = Segmenter(SegmentationConfig(min_cluster_points=3, plane_min_points=3))


def check_cloud(cloud, n: int | None = None) -> None:
    """What every consumer of a Cloud relies on."""
    assert isinstance(cloud, Cloud)
    assert cloud.points.dtype == np.float32 and cloud.points.ndim == 2
    assert cloud.points.shape == (cloud.height * cloud.width, 3)
    assert not np.isinf(cloud.points).any()
    assert (np.isnan(cloud.points).any(axis=1) == np.isnan(cloud.points).all(axis=1)).all()
    if n is not None:
        assert len(cloud) == n
    if cloud.colors is not None:
        assert cloud.colors.dtype == np.uint8 and cloud.colors.shape == (len(cloud), 3)
    for value in cloud.fields.values():
        assert value.shape[0] == len(cloud)


def check_error(exc: CloudError) -> None:
    assert str(exc) and UNEXPECTED not in str(exc), str(exc)


DAMAGE = ['none'] * 6 + [
    'point_step', 'offset', 'datatype', 'count', 'height', 'width', 'row_step', 'data+',
    'data-', 'fields', 'name', 'xyz count', 'overlap']


@st.composite
def layouts(draw):
    """A PointCloud2 stand-in: a valid layout, then (often) one kind of damage to it."""
    height, width = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    dt = draw(st.sampled_from([7, 8, 1, 4, 5]))
    size = struct.calcsize(STRUCT[dt])
    gap = draw(st.integers(0, 4))
    fields = [SimpleNamespace(name=c, offset=i * (size + gap), datatype=dt, count=1)
              for i, c in enumerate('xyz')]
    end = 3 * (size + gap)
    for _ in range(draw(st.integers(0, 4))):
        code = draw(st.integers(1, 8))
        count = draw(st.sampled_from([1, 1, 2, 3, 0]))
        fields.append(SimpleNamespace(name=draw(st.sampled_from(NAMES)), offset=end,
                                      datatype=code, count=count))
        end += struct.calcsize(STRUCT[code]) * max(count, 1)
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    step = end + draw(st.integers(0, 5))
    row_step = width * step + draw(st.sampled_from([0, 0, 3]))
    damage = draw(st.sampled_from(DAMAGE))
    f = draw(st.sampled_from(fields))
    extra = 0
    if damage == 'point_step':
        step = draw(st.sampled_from([0, -1, 2, 2 ** 31, 2 ** 40]))
    elif damage == 'offset':
        f.offset = draw(st.sampled_from([-4, step, step - 1, 2 ** 33]))
    elif damage == 'datatype':
        f.datatype = draw(st.sampled_from([0, 9, 255, -1]))
    elif damage == 'count':
        f.count = draw(st.sampled_from([-1, 10 ** 9, 50]))
    elif damage == 'height':
        height = draw(st.sampled_from([0, -1, 2 ** 40, None]))
    elif damage == 'width':
        width = draw(st.sampled_from([0, -3, 2 ** 33, 2.5]))
    elif damage == 'row_step':
        row_step = draw(st.sampled_from([0, -8, row_step - 1, 2 ** 50]))
    elif damage in ('data+', 'data-'):
        extra = draw(st.integers(1, 17)) * (1 if damage == 'data+' else -1)
    elif damage == 'fields':
        fields = draw(st.sampled_from([None, 7, 'xyz', [None], []]))
    elif damage == 'name':
        f.name = draw(st.sampled_from(['x', '', 'y', 7]))
    elif damage == 'xyz count':
        fields[0].count = 2
    elif damage == 'overlap':
        fields += [SimpleNamespace(name=f'o{i}', offset=0, datatype=2, count=step)
                   for i in range(5)]
    ok = all(isinstance(v, int) and v >= 0 for v in (height, width, row_step))
    n = max(0, min(height * row_step + extra, 8192)) if ok else 16
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    data = (rng.normal(0, 2, n // 4 + 1).astype(np.float32).tobytes()[:n]
            if draw(st.booleans()) else rng.bytes(n))
    return SimpleNamespace(
        header=SimpleNamespace(frame_id='f', stamp=SimpleNamespace(sec=1, nanosec=2)),
        height=height, width=width, fields=fields, is_bigendian=draw(st.booleans()),
        point_step=step, row_step=row_step, data=data, is_dense=False)


def reference_points(msg) -> np.ndarray:
    """x, y, z of every point, one struct.unpack_from per value (first name wins)."""
    first = {}
    for f in msg.fields:
        first.setdefault(f.name, f)
    order = '>' if msg.is_bigendian else '<'
    out = np.empty((msg.height * msg.width, 3), np.float64)
    for i in range(msg.height):
        for j in range(msg.width):
            base = i * msg.row_step + j * msg.point_step
            for k, c in enumerate('xyz'):
                f = first[c]
                (out[i * msg.width + j, k],) = struct.unpack_from(
                    order + STRUCT[f.datatype], msg.data, base + f.offset)
    with np.errstate(over='ignore'):
        pts = out.astype(np.float32)
    pts[~np.isfinite(pts).all(axis=1)] = np.nan
    return pts


@FUZZ
@given(layouts())
def test_fuzzed_pointcloud2_is_a_cloud_or_a_cloud_error(msg):
    try:
        cloud = pointcloud2_to_cloud(msg, require_valid=False)
    except CloudError as exc:
        check_error(exc)
        return
    check_cloud(cloud, msg.height * msg.width)
    np.testing.assert_array_equal(cloud.points, reference_points(msg))
    assert (cloud.height, cloud.width) == (msg.height, msg.width)
    with np.errstate(over='ignore', divide='ignore', invalid='ignore'):  # 1e38 coordinates
        seg = SEGMENTER(cloud)
    assert seg.labels.shape == (len(cloud),)


@st.composite
def colour_clouds(draw):
    """Valid layouts with colour as packed rgb/rgba or as r/g/b of one integer type."""
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    big = draw(st.booleans())
    o = '>' if big else '<'
    kind = draw(st.sampled_from(['rgb', 'rgba', 'r/g/b']))
    if kind == 'r/g/b':
        code = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7]))
        fmt = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4'}[code]
        names = ['x', 'y', 'z', 'r', 'g', 'b']
        formats = ['f4'] * 3 + [fmt] * 3
        codes = [7, 7, 7] + [code] * 3
    else:
        names, formats, codes = ['x', 'y', 'z', kind], ['f4', 'f4', 'f4', 'u4'], [7, 7, 7, 6]
    dt = np.dtype({'names': names, 'formats': [o + f for f in formats]})
    arr = np.zeros(n, dt)
    for c in 'xyz':
        arr[c] = rng.normal(0, 1, n)
    for name, f in zip(names[3:], formats[3:]):
        arr[name] = rng.integers(-400, 70000, n) if f[0] in 'iu' else rng.normal(0.5, 1, n)
    fields = [SimpleNamespace(name=nm, offset=dt.fields[nm][1], datatype=cd, count=1)
              for nm, cd in zip(names, codes)]
    return SimpleNamespace(header=None, height=1, width=n, fields=fields, is_bigendian=big,
                           point_step=dt.itemsize, row_step=dt.itemsize * n,
                           data=arr.tobytes(), is_dense=True), arr


@settings(max_examples=150, deadline=None, derandomize=True)
@given(colour_clouds())
def test_fuzzed_colours_match_an_independent_decoder(case):
    msg, arr = case
    cloud = pointcloud2_to_cloud(msg)
    check_cloud(cloud)
    names = arr.dtype.names
    if 'r' in names:
        ref = np.stack([arr[c] for c in 'rgb'], axis=1)
        if ref.dtype.kind == 'f':
            finite = ref[np.isfinite(ref)]
            ref = ref * 255.0 if finite.size and finite.max() <= 1.0 else ref
            ref = np.nan_to_num(ref)
        ref = np.clip(ref, 0, 255).astype(np.uint8)
    else:
        packed = arr[names[3]].astype(np.int64)
        ref = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1)
    np.testing.assert_array_equal(cloud.colors, ref)


@st.composite
def depth_images(draw):
    h = draw(st.one_of(st.integers(0, 6), st.sampled_from([-2, 2 ** 40])))
    w = draw(st.one_of(st.integers(0, 6), st.sampled_from([-1, 2 ** 35])))
    enc = draw(st.sampled_from(['16UC1', '32FC1', 'mono16', '8UC1', '', 'bgr8']))
    px = 4 if enc == '32FC1' else 2
    step = w * px + draw(st.sampled_from([0, 0, 0, 2, -2])) if draw(st.integers(0, 9)) else \
        draw(st.sampled_from([0, -4, 2 ** 45]))
    n = max(0, min(h * step, 2048)) if h >= 0 and step >= 0 else 4
    n += draw(st.sampled_from([0, 0, 0, 0, 1, -1, 8]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if enc == '32FC1' and draw(st.booleans()):
        vals = rng.choice([0.0, np.nan, np.inf, -1.0, 1.5, 3e38, 1e-40], max(n // 4 + 1, 1))
        data = vals.astype(np.float32).tobytes()[:max(n, 0)]
    else:
        data = rng.bytes(max(n, 0))
    fx = draw(st.sampled_from([525.0, 1e-3, 0.0, -5.0, float('nan'), 1e30]))
    K = [fx, 0, draw(st.sampled_from([2.0, 1e30, float('inf')])), 0, 525.0, 2.0, 0, 0, 1]
    if draw(st.integers(0, 19)) == 0:
        K = draw(st.sampled_from([[1.0] * 8, None, ['a'] * 9]))
    ih, iw = (h, w) if draw(st.integers(0, 5)) else (draw(st.integers(0, 3)),) * 2
    img = SimpleNamespace(height=h, width=w, step=step, encoding=enc,
                          is_bigendian=draw(st.booleans()), data=data, header=None)
    return img, SimpleNamespace(height=ih, width=iw, k=K)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(depth_images())
def test_fuzzed_depth_image_is_a_cloud_or_a_cloud_error(case):
    img, info = case
    try:
        cloud = depth_image_to_cloud(img, info)
    except CloudError as exc:
        check_error(exc)
        return
    check_cloud(cloud, img.height * img.width)
    order = '>' if img.is_bigendian else '<'
    fmt = order + ('f' if img.encoding == '32FC1' else 'H')
    size = struct.calcsize(fmt)
    z = np.array([struct.unpack_from(fmt, img.data, i * img.step + j * size)[0]
                  for i in range(img.height) for j in range(img.width)], np.float64)
    z = z * (1.0 if img.encoding == '32FC1' else 0.001)
    with np.errstate(over='ignore'):
        z = z.astype(np.float32)
    ok = np.isfinite(z) & (z > 0)
    assert not cloud.valid[~ok].any()                 # no depth, no point
    both = cloud.valid & ok
    np.testing.assert_array_equal(cloud.points[both, 2], z[both])
