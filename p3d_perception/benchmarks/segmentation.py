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
    parser.add_argument('--synthetic', default='4,8,16',
                        help='object counts of the synthetic dense-clutter scenes ("" = none)')
    parser.add_argument('--synthetic-scenes', type=int, default=6,
                        help='synthetic scenes per object count')


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


def synthetic_clutter(counts, scenes: int, args, seed: int = 0) -> dict:
    """Matched and F >= 0.75 on synthetic dense clutter, ours beside the Open3D baseline.

    The synthetic world knows every instance exactly, so it is a development set
    that does not run out: touching objects (touch_prob 0.6), objects on books,
    plates and boxes (stack_prob 0.35), boxes and cylinders in their catalogue
    rest poses (standing, flat, on a side, lying), seen by the Kinect sensor
    model from 0.8-1.3 m. Objects with fewer than 300 visible points are left out
    of the score (a sliver behind another object is no object to a camera).
    """
    from p3d_perception.segmentation import overlap_scores
    from p3d_perception.training.synthetic import generate_scene, render, sample_camera_pose
    seg = Segmenter()
    out = {}
    for n in counts:
        tot = {k: {'objects': 0, 'matched': 0, 'f075': 0, 'f': []} for k in ('ours', 'open3d')}
        for i in range(scenes):
            s = seed + 1000 * n + i
            scene = generate_scene(s, n_objects=n, clutter=True, touch_prob=0.6,
                                   stack_prob=0.35, distractors=(0, 0))
            rng = np.random.default_rng(s)
            pose = sample_camera_pose(scene, rng, distance=(0.8, 1.3), elevation=(40.0, 65.0))
            frame = render(scene, 'kinect', rng, pose=pose)
            cloud = Cloud(frame.points, frame.colors, frame.height, frame.width)
            gt = np.where(frame.instance > 0, frame.instance, -1)
            gt[~np.isfinite(frame.points[:, 2])] = -1
            ids, cnt = np.unique(gt[gt >= 0], return_counts=True)
            gt[np.isin(gt, ids[cnt < 300])] = -1
            for key, labels in (('ours', seg(cloud).labels),
                                ('open3d', open3d_labels(cloud.points,
                                                         open3d_pipeline(cloud.points, args)))):
                m = match_instances(labels, gt)
                o = overlap_scores(labels, gt)
                t = tot[key]
                t['objects'] += m['objects']
                t['matched'] += m['matched']
                t['f075'] += o['objects_f075']
                t['f'].append(o['f_measure'])
        out[str(n)] = {k: {'scenes': scenes, 'objects': t['objects'], 'matched': t['matched'],
                           'match_rate': round(t['matched'] / max(t['objects'], 1), 4),
                           'f075_rate': round(t['f075'] / max(t['objects'], 1), 4),
                           'f_measure': round(float(np.mean(t['f'])), 4)}
                       for k, t in tot.items()}
    return out


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
    stages: dict[str, list] = {}

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
        for k, v in out.timings_ms.items():
            stages.setdefault(k, []).append(v)
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
        'goal': 'organised 640x480 <= 35 ms median, unorganised 300k <= 60 ms (issue 14)',
        'stage_median_ms': {k: round(statistics.median(v), 2) for k, v in stages.items()},
        'synthetic_clutter': synthetic_clutter(
            [int(c) for c in args.synthetic.split(',') if c.strip()], args.synthetic_scenes,
            args) if args.synthetic else {},
    }
