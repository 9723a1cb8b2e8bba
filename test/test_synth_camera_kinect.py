# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The structured-light (Kinect v1) sensor model fails where a real Kinect fails.

Real scans of the development data come from a Kinect; a model trained on
views without its disparity steps, projector shadows and holes on dark print
meets those artefacts for the first time on the robot. Depth comes from real
Open3D raycasts of boxes and walls, so the shadows are those of real geometry.
"""

import numpy as np
import open3d as o3d
import pytest

from p3d_perception.training.synthetic.camera import (
    CAMERA_PRESETS, apply_depth_model, get_camera, image_shadow, pixel_directions)

KINECT = CAMERA_PRESETS['kinect']


def _raycast(cam, meshes):
    """Ideal depth (h, w) and |cos incidence| of ``meshes`` seen from the origin looking +z."""
    scene = o3d.t.geometry.RaycastingScene()
    for m in meshes:
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))
    d = pixel_directions(cam)
    rays = np.concatenate([np.zeros_like(d), d], -1).reshape(-1, 6).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit['t_hit'].numpy().reshape(cam.height, cam.width)
    n = hit['primitive_normals'].numpy().reshape(cam.height, cam.width, 3)
    dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
    cos = np.abs((n * dn).sum(-1)).astype(np.float32)
    return t.astype(np.float32), cos


def _wall(z, half=4.0):
    m = o3d.geometry.TriangleMesh.create_box(2 * half, 2 * half, 0.01)
    m.translate([-half, -half, z])
    return m


def _box(x0, x1, y0, y1, z0, z1):
    m = o3d.geometry.TriangleMesh.create_box(x1 - x0, y1 - y0, z1 - z0)
    m.translate([x0, y0, z0])
    return m


def test_preset_is_a_kinect_v1():
    cam = get_camera('kinect')
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (
        640, 480, 525.0, 525.0, 319.5, 239.5)
    assert cam.baseline == pytest.approx(0.075) and cam.disparity_step == pytest.approx(1 / 8)
    # the depth step of 1/8 px disparity: z^2 / (f b) / 8
    assert cam.depth_step(1.0) == pytest.approx(1.0 / (525 * 0.075) / 8)
    assert cam.depth_step(2.0) == pytest.approx(4 * cam.depth_step(1.0))


def test_quantisation_step_and_noise_grow_with_range():
    cam = KINECT.replace(width=200, height=160, cx=99.5, cy=79.5)
    steps, sigmas = [], []
    for z in (0.8, 1.6, 3.2):
        t, cos = _raycast(cam, [_wall(z)])
        d = apply_depth_model(cam, t, cos, np.random.default_rng(1))
        v = d[d > 0]
        assert v.size > 0.9 * d.size
        levels = np.unique(v)
        gaps = np.diff(levels)
        step = float(np.median(gaps))
        steps.append(step)
        assert step == pytest.approx(float(cam.depth_step(z)), rel=0.12), (z, step)
        sigmas.append(float(np.std(v - z)))
        assert abs(float(np.median(v)) - z) < 2 * step
    assert steps[0] < steps[1] < steps[2]
    assert steps[2] > 10 * steps[0]          # quadratic in range: (3.2 / 0.8)^2 = 16
    assert sigmas[0] < sigmas[1] < sigmas[2]
    # a time-of-flight camera has no such steps: only the 1 mm unit of the depth image
    tof = CAMERA_PRESETS['azure_kinect']
    assert tof.depth_step(3.2) == pytest.approx(tof.depth_unit)


def test_projector_shadow_falls_left_of_a_box():
    cam = KINECT.replace(width=240, height=180, cx=119.5, cy=89.5)
    zb, zf = 1.2, 0.8
    t, cos = _raycast(cam, [_wall(zb), _box(-0.1, 0.1, -0.08, 0.08, zf, zf + 0.2)])
    d = apply_depth_model(cam, t, cos, np.random.default_rng(2))
    rows = slice(70, 110)                                  # inside the box's image rows
    cols = np.arange(cam.width)
    u_left = int(np.ceil(cam.cx + cam.fx * -0.1 / zf))     # box's left image edge
    u_right = int(np.floor(cam.cx + cam.fx * 0.1 / zf))
    width = cam.fx * cam.baseline * (1 / zf - 1 / zb)      # expected shadow, ~16 px
    left = (cols >= u_left - width + 3) & (cols <= u_left - 4)
    right = (cols >= u_right + 4) & (cols <= u_right + width - 3)
    far = (cols < u_left - width - 6)
    assert (d[rows][:, left] == 0).mean() > 0.9, 'shadow on the projector side'
    assert (d[rows][:, right] == 0).mean() < 0.1, 'no shadow on the other side'
    assert (d[rows][:, far] == 0).mean() < 0.05
    # the same shadow is found from the ideal depth alone
    sh = image_shadow(cam, t, np.isfinite(t))
    assert sh[rows][:, left].mean() > 0.95 and sh[rows][:, right].mean() == 0


def test_edges_are_smeared_laterally():
    cam = KINECT.replace(width=200, height=160, cx=99.5, cy=79.5)
    t, cos = _raycast(cam, [_wall(1.5), _box(-0.5, 0.0, -1, 1, 1.0, 1.1)])
    clean = apply_depth_model(cam.replace(edge_smooth_px=0, image_shadow=False,
                                          disparity_sigma=0.0, edge_dropout=0.0,
                                          flying_pixel_prob=0.0), t, cos,
                              np.random.default_rng(3))
    smooth = apply_depth_model(cam.replace(image_shadow=False, disparity_sigma=0.0,
                                           edge_dropout=0.0, flying_pixel_prob=0.0), t, cos,
                               np.random.default_rng(3))

    def mixed(d):                                          # neither plane's depth
        return ((d > 1.05) & (d < 1.45)).sum()

    assert mixed(clean) == 0
    assert mixed(smooth) > 2 * cam.height                  # a band of blended depths
    far = slice(0, 80)
    assert np.array_equal(clean[:, far], smooth[:, far])  # flat parts untouched


def test_dark_print_loses_its_returns():
    cam = KINECT.replace(width=200, height=160, cx=99.5, cy=79.5)
    t, cos = _raycast(cam, [_wall(1.0)])
    albedo = np.full(t.shape, 0.7, np.float32)
    albedo[:, :100] = 0.03                                 # black print on the left half
    d = apply_depth_model(cam, t, cos, np.random.default_rng(4), albedo=albedo)
    assert (d[:, 5:95] == 0).mean() > 0.6
    assert (d[:, 105:195] == 0).mean() < 0.05
    # without albedo, or on a camera without the effect, nothing is lost
    d2 = apply_depth_model(cam, t, cos, np.random.default_rng(4))
    assert (d2[:, 5:95] == 0).mean() < 0.05
    d435 = CAMERA_PRESETS['d435'].replace(width=200, height=160, cx=99.5, cy=79.5)
    d3 = apply_depth_model(d435, t, cos, np.random.default_rng(4), albedo=albedo)
    assert (d3[:, 5:95] == 0).mean() < 0.05
