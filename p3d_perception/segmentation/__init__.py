# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Tabletop segmentation: support surface out, one cluster per object.

The recogniser downstream can only name what this stage hands it, so the goal is
one cluster per physical object, including touching and stacked ones, at camera
frame rate on a CPU. Two paths share the same stages:

* organised clouds (depth cameras) work on the pixel grid: neighbours are free,
  depth discontinuities and concave creases cut the grid, and connected
  components are a single ``scipy.ndimage.label`` call;
* unorganised clouds work on a voxel grid of the points above the support plane
  with a k-d tree neighbourhood, using the same cuts.

Concave creases are what separate stacked and touching objects (a box standing on
another meets it in a valley, while the box's own edges are ridges): a point is a
crease when the mean of its neighbourhood lies on the open side of its surface.
The same cuts break off noise shards and split open containers from their
insides and mugs from their handles; two merge steps undo that (shards join the
cluster they touch; an inside seen through a rim joins its wall, a handle its
nearest body).

Labels are always per input point, in input order (-1 = not an object), because
the node republishes them with the original cloud and evaluation compares them
with per-point ground truth.

Each stage lives in its own module (``config``, ``support``, ``grid``, ``voxels``,
``merge``, ``boxes``, ``metrics``) and ``Segmenter`` runs them in order.
"""

from p3d_perception.segmentation.boxes import OrientedBox, oriented_box
from p3d_perception.segmentation.config import OPTICAL_UP_HINT, SegmentationConfig
from p3d_perception.segmentation.metrics import (
    match_instances, mosd_ground_truth, overlap_scores, scene_kind)
from p3d_perception.segmentation.segmenter import Cluster, Segmentation, Segmenter, segment
from p3d_perception.segmentation.support import find_support_planes

__all__ = [
    'OPTICAL_UP_HINT', 'Cluster', 'OrientedBox', 'Segmentation', 'SegmentationConfig',
    'Segmenter', 'find_support_planes', 'match_instances', 'mosd_ground_truth',
    'oriented_box', 'overlap_scores', 'scene_kind', 'segment',
]
