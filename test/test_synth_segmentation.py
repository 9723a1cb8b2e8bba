# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The segmentation core must recover ground-truth instances on easy synthetic scenes.

Easy means separated, upright objects of one piece (>= 6 cm apart, nothing
stacked or touching, no flat things lower than the plane-removal height) seen
from 0.7-1.2 m by the D435 model, sensor noise included. Handles and the
insides of mugs, cups and kettles count as part of their object. Objects made
of parts joined at concave creases (drill, teddy bear, spray-bottle trigger,
plant in a flower pot) are left out: the crease cut that separates stacked
objects splits them by design (README, segmentation limits). The clouds go
through a real rosbag2 file and ``pointcloud2_to_cloud``, as on the robot.
Every object with at least 300 visible points must get a cluster with
IoU >= 0.8 against its ground-truth pixels.
"""

import numpy as np
import pytest

from p3d_perception import bagio
from p3d_perception.segmentation import segment
from p3d_perception.training.synthetic import generate_scene, render, sample_camera_pose

EASY = ('mug', 'cup', 'bottle', 'can', 'jar', 'cereal box', 'tissue box',
        'milk carton', 'teapot', 'kettle', 'pitcher', 'ball', 'apple', 'orange', 'vase',
        'candle')
SEEDS = range(6)


@pytest.fixture(scope='module')
def easy_bag(tmp_path_factory):
    frames = []
    for seed in SEEDS:
        scene = generate_scene(seed, categories=EASY, n_objects=(3, 5), clutter=False)
        rng = np.random.default_rng(seed)
        pose = sample_camera_pose(scene, rng, distance=(0.7, 1.2), elevation=(35.0, 60.0))
        frames.append(render(scene, 'd435', rng, pose=pose))
    path = bagio.write_scene_bag(tmp_path_factory.mktemp('seg') / 'easy', frames)
    return path, frames


def test_segmentation_recovers_separated_objects(easy_bag):
    path, frames = easy_bag
    clouds = list(bagio.iter_clouds(path))
    truth = bagio.read_ground_truth(path, instances=True)
    assert len(clouds) == len(frames) == len(truth)
    results, failures = [], []
    for (_, cloud), gt in zip(clouds, truth):
        labels = segment(cloud).labels
        inst = gt['instance'].reshape(-1)
        valid = np.isfinite(cloud.points[:, 2])
        for obj in gt['objects']:
            mask = (inst == obj['id']) & valid
            if mask.sum() < 300:
                continue
            best = 0.0
            for lab in np.unique(labels[mask]):
                if lab < 0:
                    continue
                pred = labels == lab
                best = max(best, float((pred & mask).sum() / (pred | mask).sum()))
            results.append(best)
            if best < 0.8:
                failures.append(f'frame {gt["stamp_ns"]} {obj["category"]}: IoU {best:.2f} '
                                f'({int(mask.sum())} points)')
    assert len(results) >= 15
    assert not failures, (f'{len(failures)} of {len(results)} objects below IoU 0.8 '
                          f'(mean IoU {np.mean(results):.3f}): ' + '; '.join(failures))
