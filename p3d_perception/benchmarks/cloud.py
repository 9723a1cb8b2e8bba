# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""PointCloud2 -> numpy conversion speed for a 640x480 organised xyz+rgb frame.

The node decodes every camera frame before anything else runs, so this cost is
paid 30 times a second; the per-point Python loop is what a naive
``read_points``-style reader does and is the baseline to beat.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from pathlib import Path

import numpy as np

from p3d_perception.cloud import pack_cloud, pointcloud2_to_cloud, read_pcd

MOSD = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'mosd_learn'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--repeats', type=int, default=50, help='timed decodes (default 50)')
    parser.add_argument('--python-repeats', type=int, default=2,
                        help='timed per-point Python decodes (default 2)')


def _frame() -> tuple[np.ndarray, np.ndarray, str]:
    scan = MOSD / 'learn0.pcd'
    if scan.is_file():
        c = read_pcd(scan)
        return c.points, c.colors, 'mOSD learn0 (real Kinect 640x480, 40% NaN)'
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (480 * 640, 3)).astype(np.float32)
    pts[rng.random(len(pts)) < 0.3] = np.nan
    return pts, rng.integers(0, 256, (len(pts), 3), dtype=np.uint8), 'random 640x480'


def _python_decode(pk) -> tuple[list, list]:
    """Per-point Python reference: struct.unpack for every point."""
    offs = {f.name: f.offset for f in pk.fields}
    fmt = '<fff'
    xyz, rgb = [], []
    data = pk.data
    for i in range(pk.height * pk.width):
        base = i * pk.point_step
        x, y, z = struct.unpack_from(fmt, data, base + offs['x'])
        (packed,) = struct.unpack_from('<I', data, base + offs['rgb'])
        xyz.append((x, y, z))
        rgb.append(((packed >> 16) & 255, (packed >> 8) & 255, packed & 255))
    return xyz, rgb


def run(args: argparse.Namespace) -> dict:
    pts, cols, source = _frame()
    pk = pack_cloud(pts, cols, height=480, width=640)
    cloud = pointcloud2_to_cloud(pk)
    assert np.array_equal(cloud.points, pts, equal_nan=True)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        pointcloud2_to_cloud(pk)
        times.append((time.perf_counter() - t) * 1e3)
    py = []
    for _ in range(max(1, args.python_repeats)):
        t = time.perf_counter()
        xyz, rgb = _python_decode(pk)
        py.append((time.perf_counter() - t) * 1e3)
    assert np.array_equal(np.asarray(rgb, np.uint8), cols)
    med, py_med = statistics.median(times), statistics.median(py)
    return {
        'frame': source, 'points': int(len(cloud)), 'point_step': pk.point_step,
        'layout': 'organised xyz + packed float rgb',
        'numpy_median_ms': round(med, 3),
        'numpy_p90_ms': round(float(np.percentile(times, 90)), 3),
        'python_loop_median_ms': round(py_med, 1), 'speedup': round(py_med / med, 1),
        'goal': 'median <= 2 ms, speed-up >= 20x',
    }
