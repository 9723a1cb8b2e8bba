# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Segmentation speed and quality against a plain Open3D pipeline, on real scans.

Speed only means something next to quality, so both pipelines run on the same
real Kinect frames (mOSD, per-point ground truth) in the same process: the
organised 640x480 frames as published, and an unorganised ~300k-point cloud made
from each frame by shuffling its points (NaNs included, as a driver would send).
The baseline is what most tabletop tutorials do: voxel_down_sample +
segment_plane (RANSAC) + cluster_dbscan.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from p3d_perception.cloud import Cloud, read_pcd
from p3d_perception.segmentation import Segmenter, match_instances, mosd_ground_truth

MOSD = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'mosd_learn'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--dir', default=str(MOSD), help='mOSD scans (default %(default)s)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per frame')
    parser.add_argument('--o3d-voxel', type=float, default=0.01)
    parser.add_argument('--o3d-plane-distance', type=float, default=0.01)
    parser.add_argument('--o3d-eps', type=float, default=0.02)
    parser.add_argument('--o3d-min-points', type=int, default=10)


def open3d_pipeline(points: np.ndarray, args) -> np.ndarray:
    """Voxel + RANSAC plane + DBSCAN (the timed part); ``open3d_labels`` maps it back."""
    import open3d as o3d
    valid = np.isfinite(points).all(axis=1)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[valid].astype(np.float64)))
    down = pcd.voxel_down_sample(args.o3d_voxel)
    plane, inliers = down.segment_plane(args.o3d_plane_distance, 3, 200)
    rest = down.select_by_index(inliers, invert=True)
    lab = np.asarray(rest.cluster_dbscan(args.o3d_eps, args.o3d_min_points))
    return plane, rest, lab, valid


#: The baseline's parameters (``p3d bench segmentation`` exposes them as options).
OPEN3D_DEFAULTS = {'o3d_voxel': 0.01, 'o3d_plane_distance': 0.01, 'o3d_eps': 0.02,
                   'o3d_min_points': 10}


def open3d_baseline_labels(points: np.ndarray, **params) -> np.ndarray:
    """Per-input-point labels of the plain Open3D pipeline (the eval command's baseline)."""
    import types
    args = types.SimpleNamespace(**{**OPEN3D_DEFAULTS, **params})
    return open3d_labels(points, open3d_pipeline(points, args))


def open3d_labels(points: np.ndarray, out) -> np.ndarray:
    """Map the baseline's voxel labels back to input points (not timed)."""
    from scipy.spatial import cKDTree
    plane, rest, lab, valid = out
    labels = np.full(len(points), -1, dtype=np.int32)
    if len(lab) == 0:
        return labels
    rp = np.asarray(rest.points)
    p = points[valid].astype(np.float64)
    d, j = cKDTree(rp).query(p, k=1)
    on_plane = np.abs(p @ np.asarray(plane[:3]) + plane[3]) < 0.01
    lv = np.where((d < 0.01) & ~on_plane, lab[j], -1)
    labels[np.flatnonzero(valid)] = lv
    return labels


def _time(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return out, times


def run(args: argparse.Namespace) -> dict:
    files = sorted(Path(args.dir).glob('*.pcd'))
    if not files:
        raise FileNotFoundError(f'no mOSD scans in {args.dir}')
    seg = Segmenter()
    rows = {k: {'times': [], 'matched': 0, 'objects': 0, 'ious': []}
            for k in ('ours_organised', 'ours_unorganised', 'open3d_organised_frame',
                      'open3d_unorganised')}
    rng = np.random.default_rng(0)
    n_unorg = []

    def score(key, labels, gt, times):
        m = match_instances(labels, gt)
        r = rows[key]
        r['times'] += times
        r['matched'] += m['matched']
        r['objects'] += m['objects']
        r['ious'] += list(m['best_iou'].values())

    for f in files:
        cloud = read_pcd(f)
        gt, _ = mosd_ground_truth(cloud.fields['label'])
        out, t = _time(lambda: seg(cloud), args.repeats)
        score('ours_organised', out.labels, gt, t)
        o3, t = _time(lambda: open3d_pipeline(cloud.points, args), args.repeats)
        score('open3d_organised_frame', open3d_labels(cloud.points, o3), gt, t)
        perm = rng.permutation(len(cloud))
        unorg = Cloud(cloud.points[perm], cloud.colors[perm], 1, len(cloud))
        n_unorg.append(len(unorg))
        out, t = _time(lambda: seg(unorg), args.repeats)
        score('ours_unorganised', out.labels, gt[perm], t)
        o3, t = _time(lambda: open3d_pipeline(unorg.points, args), args.repeats)
        score('open3d_unorganised', open3d_labels(unorg.points, o3), gt[perm], t)
    res = {}
    for k, r in rows.items():
        res[k] = {'median_ms': round(statistics.median(r['times']), 1),
                  'p90_ms': round(float(np.percentile(r['times'], 90)), 1),
                  'matched': r['matched'], 'objects': r['objects'],
                  'match_rate': round(r['matched'] / max(r['objects'], 1), 4),
                  'mean_iou': round(float(np.mean(r['ious'])), 4)}
    return {
        'frames': len(files), 'repeats': args.repeats,
        'organised': '640x480 real Kinect (mOSD learn), xyz+rgb',
        'unorganised_points': int(np.median(n_unorg)),
        'open3d_params': {'voxel': args.o3d_voxel, 'plane_distance': args.o3d_plane_distance,
                          'ransac_iterations': 200, 'dbscan_eps': args.o3d_eps,
                          'dbscan_min_points': args.o3d_min_points},
        'results': res,
        'speed_ratio_organised': round(res['open3d_organised_frame']['median_ms']
                                       / res['ours_organised']['median_ms'], 2),
        'speed_ratio_unorganised': round(res['open3d_unorganised']['median_ms']
                                         / res['ours_unorganised']['median_ms'], 2),
        'goal': 'organised <= 50 ms, unorganised 300k <= 120 ms',
    }
