# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The synthetic tabletop world: objects, scenes, a virtual depth camera, views.

No 3D dataset can be downloaded where this project is built, so training,
tests, benchmarks and the demo all draw from this procedural world. Import the
public API from here; the submodules are implementation detail.
"""

#: bumped whenever generated data changes, so caches keyed on it are rebuilt
__version__ = '3'

from p3d_perception.training.synthetic.camera import CAMERA_PRESETS, CameraModel, get_camera
from p3d_perception.training.synthetic.catalogue import (
    CATEGORIES, ObjectMesh, make_distractor, make_object)
from p3d_perception.training.synthetic.scene import (
    Frame, PlacedObject, Scene, camera_trajectory, generate_scene, render, sample_camera_pose)
from p3d_perception.training.synthetic.views import (
    ObjectViews, ViewConfig, generate_object_views, instance_seed_for, load_object_views,
    save_object_views)

__all__ = [
    'CAMERA_PRESETS', 'CATEGORIES', 'CameraModel', 'ObjectMesh', 'get_camera',
    'make_distractor', 'make_object', 'ObjectViews', 'ViewConfig', 'generate_object_views',
    'instance_seed_for', 'Frame', 'PlacedObject', 'Scene', 'camera_trajectory',
    'generate_scene', 'render', 'sample_camera_pose', 'load_object_views', 'save_object_views',
]
