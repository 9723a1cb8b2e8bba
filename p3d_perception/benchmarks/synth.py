# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Synthetic world rates: organised frames/s and single-object views/s.

Training data generation and the demo are only practical if the world is
cheap: the goals on a 2-core machine are >= 20 organised 640x480 frames/s and
>= 500 single-object views/s. Timed here, never in tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--camera', default='d435')
    parser.add_argument('--scenes', type=int, default=4, help='scenes to render')
    parser.add_argument('--frames', type=int, default=10, help='frames per scene')
    parser.add_argument('--views-per-category', type=int, default=16)
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    from p3d_perception.training.synthetic import (
        CATEGORIES, camera_trajectory, generate_object_views, generate_scene, get_camera,
        render)
    cam = get_camera(args.camera)
    # warm-up: imports, first raycasting scene, caches
    generate_object_views(CATEGORIES[:2], 2, args.seed + 99, camera=cam)
    render(generate_scene(args.seed + 99, n_objects=3), cam, 0)

    t0 = time.perf_counter()
    scenes = [generate_scene(args.seed + i, n_objects=(5, 12)) for i in range(args.scenes)]
    t_scene = (time.perf_counter() - t0) / args.scenes

    def frames_per_s(**kw) -> float:
        n, t = 0, 0.0
        for i, sc in enumerate(scenes):
            poses = camera_trajectory(sc, args.frames, args.seed + i)
            sc.raycasting()   # built once per scene, reused across poses
            t1 = time.perf_counter()
            for k, pose in enumerate(poses):
                render(sc, cam, k, pose=pose, **kw)
            t += time.perf_counter() - t1
            n += len(poses)
        return n / t

    fps_full = frames_per_s()
    fps_depth = frames_per_s(colour=False)
    fps_clean = frames_per_s(colour=False, noise=False)
    t1 = time.perf_counter()
    views = generate_object_views(CATEGORIES, args.views_per_category, args.seed, camera=cam)
    t_views = time.perf_counter() - t1
    vps = len(views) / t_views
    out = {
        'camera': cam.name, 'resolution': f'{cam.width}x{cam.height}',
        'scene_generation_ms': round(1000 * t_scene, 1),
        'frames_per_s': round(fps_full, 1),
        'frames_per_s_depth_only': round(fps_depth, 1),
        'frames_per_s_no_sensor_model': round(fps_clean, 1),
        'frame_goal_per_s': 20, 'frames_goal_met': bool(fps_full >= 20),
        'views': len(views), 'views_per_s': round(vps, 1),
        'view_points_median': int(np.median(views.counts)), 'views_goal_per_s': 500,
        'views_goal_met': bool(vps >= 500),
    }
    print(f'scenes: {1000 * t_scene:.1f} ms each; frames: {fps_full:.1f}/s full, '
          f'{fps_depth:.1f}/s depth only, {fps_clean:.1f}/s raycast only; '
          f'views: {vps:.0f}/s ({len(views)} views)')
    return out
