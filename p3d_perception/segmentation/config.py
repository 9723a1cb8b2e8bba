# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Every segmentation parameter in one dataclass, validated before the first frame.

The ROS node declares one parameter per field (ros/params.py reads the ``#:``
comments as descriptions), so a field added here is a documented parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from p3d_perception.config import ConfigError, require_finite

#: World "up" in a camera optical frame (z forward, y down) for a camera pitched
#: 45 degrees down; with the default tolerance it covers pitches of about 5-85 deg.
OPTICAL_UP_HINT = (0.0, -math.sqrt(0.5), -math.sqrt(0.5))


@dataclass
class SegmentationConfig:
    """Every parameter of the segmentation; defaults suit a tabletop RGB-D camera at 0.5-2 m."""

    # --- range / crop (metres, cloud frame)
    min_range: float = 0.2            #: points closer to the sensor origin are dropped
    max_range: float = 3.5            #: points farther than this are dropped
    crop_min: Optional[tuple[float, float, float]] = None  #: optional crop box corner
    crop_max: Optional[tuple[float, float, float]] = None  #: optional crop box corner
    # --- sampling
    organized: bool = True            #: use the pixel-grid path for organised clouds
    organized_stride: int = 1         #: pixel step of the grid path (2 = 4x fewer pixels)
    #: put an unorganised cloud seen from one viewpoint on a virtual pixel grid and use the
    #: grid path (clouds that are not one view keep the voxel path)
    project_unorganised: bool = True
    voxel_size: float = 0.006         #: voxel edge of the unorganised path (m)
    # --- support plane(s)
    remove_support: bool = True       #: find and remove the support plane
    num_planes: int = 1               #: how many horizontal planes to remove (>= 1)
    up: Optional[tuple[float, float, float]] = None  #: world up in the cloud frame if known
    up_tolerance_deg: float = 40.0    #: max angle between a support normal and up (or hint)
    plane_distance: float = 0.012     #: RANSAC inlier distance (m)
    plane_iterations: int = 256       #: RANSAC hypotheses
    plane_sample_points: int = 20000  #: points used to fit planes
    plane_min_points: int = 300       #: a plane needs this many inliers in the fit sample/1
    #: a table-sized plane at least support_rise above the largest plane is the support
    #: (a table seen above a floor; the lowest such level)
    prefer_highest: bool = True
    min_support_extent: float = 0.35  #: a plane is table-sized when its inliers span this (m)
    #: height gap that tells a table above a floor from box tops and lids on a table (m)
    support_rise: float = 0.4
    #: the support plane [a, b, c, d] (normal up) if known, e.g. [0, 0, 1, -h] for a table
    #: h m up in a z-up frame; refined on the points within 3 cm of it
    support_plane: Optional[tuple[float, float, float, float]] = None
    min_height: float = 0.012         #: points lower than this above the support are removed (m)
    max_height: float = 0.7           #: points higher than this above the support are removed (m)
    viewpoint: tuple[float, float, float] = (0.0, 0.0, 0.0)  #: sensor origin in the cloud frame
    # --- clustering
    cluster_tolerance: float = 0.012  #: neighbour gap at 1 m range (m); grows linearly with range
    concave_cut: bool = True          #: cut at concave creases (splits stacked/touching objects)
    crease_radius: float = 0.012      #: neighbourhood radius of the crease test (m)
    crease_threshold: float = 0.08    #: crease when (mean - point).normal > this * radius
    #: cut where a crease line runs into missing depth and the crease test cannot decide
    hole_cut: bool = True
    #: split where two object-sized pieces meet only in a corridor this many pixels wide
    #: (times two) between cuts; 0 = off
    neck_px: int = 1
    #: visible surface each piece a hole or neck cut separates must have to stay apart (m^2)
    hole_cut_min_area: float = 0.003
    crease_reach: int = 0             #: pixels a crease line is carried on to the outline it nears
    crease_dilate: int = 1            #: pixels the crease cut is widened by (closes gaps in it)
    #: shallow creases where the surface turns and the colour changes cut too (needs rgb;
    #: splits touching boxes of different print, and also jar lids of another colour)
    colour_cut: bool = False
    #: concavity (as crease_threshold) that cuts where the colour also changes
    colour_crease_threshold: float = 0.0
    colour_threshold: float = 0.35    #: RGB distance (0-1 scale) that counts as a colour change
    min_cluster_points: int = 150     #: clusters with fewer input points are dropped
    max_cluster_points: int = 0       #: clusters with more input points are dropped (0 = off)
    min_cluster_size: float = 0.02    #: clusters whose largest side is shorter are dropped (m)
    max_cluster_size: float = 0.9     #: clusters whose largest side is longer are dropped (m)
    merge_containers: bool = True     #: rejoin container insides and handles to their object
    #: rejoin the two sides of an object split by one in front of it (same top height, one
    #: side face running on across a gap that something nearer hides everywhere)
    merge_occluded: bool = True
    rim_tolerance: float = 0.01       #: rims of one container agree in height within this (m)
    seed: int = 0                     #: RANSAC random seed (results are deterministic)

    def validate(self) -> None:
        require_finite(self, 'segmentation.')

        def positive(name: str) -> None:
            if not getattr(self, name) > 0:
                raise ConfigError(f'segmentation.{name} must be > 0, got {getattr(self, name)}')

        for name in ('max_range', 'voxel_size', 'plane_distance', 'cluster_tolerance',
                     'crease_radius', 'crease_threshold', 'max_height', 'max_cluster_size',
                     'rim_tolerance', 'support_rise', 'hole_cut_min_area'):
            positive(name)
        if self.min_range < 0 or self.min_range >= self.max_range:
            raise ConfigError(f'segmentation.min_range must be in [0, max_range), got '
                              f'{self.min_range}')
        # Each corner alone is a half-open box (set one at a time with `ros2 param set`).
        if self.crop_min is not None and self.crop_max is not None and any(
                a >= b for a, b in zip(self.crop_min, self.crop_max)):
            raise ConfigError(f'segmentation.crop_min {self.crop_min} must be below crop_max '
                              f'{self.crop_max} on every axis')
        for name in ('crease_dilate', 'crease_reach', 'neck_px'):
            if getattr(self, name) < 0:
                raise ConfigError(f'segmentation.{name} must be >= 0, got '
                                  f'{getattr(self, name)}')
        if self.organized_stride < 1:
            raise ConfigError(f'segmentation.organized_stride must be >= 1, got '
                              f'{self.organized_stride}')
        if self.num_planes < 1:
            raise ConfigError(f'segmentation.num_planes must be >= 1, got {self.num_planes}')
        if self.up is not None and not np.linalg.norm(self.up) > 0:
            raise ConfigError('segmentation.up must be a non-zero vector (or null for auto)')
        hint = self.support_plane
        if hint is not None and (len(hint) != 4 or not np.linalg.norm(hint[:3]) > 0):
            raise ConfigError('segmentation.support_plane must be [a, b, c, d] with a non-zero '
                              'normal (or null to find the plane)')
        if not 0 < self.up_tolerance_deg <= 90:
            raise ConfigError(f'segmentation.up_tolerance_deg must be in (0, 90], got '
                              f'{self.up_tolerance_deg}')
        if self.plane_iterations < 1 or self.plane_sample_points < 3:
            raise ConfigError('segmentation.plane_iterations must be >= 1 and '
                              'plane_sample_points >= 3')
        if self.min_height < 0 or self.min_height >= self.max_height:
            raise ConfigError(f'segmentation.min_height must be in [0, max_height), got '
                              f'{self.min_height}')
        if self.min_cluster_points < 1 or self.max_cluster_points < 0:
            raise ConfigError('segmentation.min_cluster_points must be >= 1 and '
                              'max_cluster_points >= 0')
        if self.max_cluster_points and self.max_cluster_points < self.min_cluster_points:
            raise ConfigError('segmentation.max_cluster_points must be 0 or >= '
                              'min_cluster_points')
        if self.min_cluster_size < 0 or self.min_cluster_size >= self.max_cluster_size:
            raise ConfigError('segmentation.min_cluster_size must be in [0, max_cluster_size)')
