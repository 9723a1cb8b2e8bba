# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Cluster geometry: boxes standing on the support plane, for grasping and markers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from p3d_perception.segmentation.geometry import _cross3, _outside_quad, _plane_basis, _unit


@dataclass
class OrientedBox:
    """A box: centre, full side lengths, and rotation whose columns are the box axes."""

    center: np.ndarray
    extent: np.ndarray
    rotation: np.ndarray


def _min_area_rect(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, size and angle of the minimum-area rectangle around 2D points."""
    from scipy.spatial import ConvexHull, QhullError
    pts = _outside_quad(uv if len(uv) <= 4000 else uv[::len(uv) // 2000])
    try:
        hull = pts[ConvexHull(pts).vertices] if len(pts) >= 3 else pts
    except (QhullError, ValueError):
        hull = pts
    if len(hull) < 2:
        return pts.mean(axis=0), np.zeros(2), 0.0
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    ang = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    c, s = np.cos(ang), np.sin(ang)
    rx = hull @ np.stack([c, s])        # (H, A)
    ry = hull @ np.stack([-s, c])
    w = rx.max(0) - rx.min(0)
    h = ry.max(0) - ry.min(0)
    i = int(np.argmin(w * h))
    ax = np.array([c[i], s[i]])
    ay = np.array([-s[i], c[i]])
    rx, ry = uv @ ax, uv @ ay  # exact bounds from every point
    mx, my = (rx.max() + rx.min()) / 2, (ry.max() + ry.min()) / 2
    size = np.array([rx.max() - rx.min(), ry.max() - ry.min()])
    return mx * ax + my * ay, size, float(ang[i])


def oriented_box(points: np.ndarray, plane: np.ndarray | None = None) -> OrientedBox:
    """Box standing on ``plane`` (axis 3 = plane normal) or, without one, a PCA box."""
    p = np.asarray(points, dtype=np.float64)
    if plane is None:
        c = p.mean(axis=0)
        _, _, vt = np.linalg.svd(p - c, full_matrices=False) if len(p) > 1 else (0, 0, np.eye(3))
        rot = vt.T.copy()
        if np.linalg.det(rot) < 0:
            rot[:, 2] *= -1
        loc = (p - c) @ rot
        lo, hi = loc.min(axis=0), loc.max(axis=0)
        return OrientedBox(c + rot @ ((lo + hi) / 2), hi - lo, rot)
    n = _unit(plane[:3])
    d = float(plane[3]) / np.linalg.norm(plane[:3])
    a, b = _plane_basis(n)
    uv = np.stack([p @ a, p @ b], axis=1)
    centre2, size2, ang = _min_area_rect(uv)
    ax1 = math.cos(ang) * a + math.sin(ang) * b
    ax2 = _cross3(n, ax1)
    h = p @ n + d
    top = max(float(h.max()), 0.0)
    bottom = 0.0 if h.min() > -0.05 else float(h.min())
    rot = np.stack([ax1, ax2, n], axis=1)
    on_plane = centre2[0] * a + centre2[1] * b - d * n  # point on the plane below the centre
    centre = on_plane + n * (top + bottom) / 2
    return OrientedBox(centre, np.array([size2[0], size2[1], top - bottom]), rot)
