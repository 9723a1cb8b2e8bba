# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Unorganised single-view clouds back onto a pixel grid.

A depth camera's cloud stays a 2.5D image after a driver drops its invalid
points or shuffles it: every point is still one ray from the sensor. Projected
through a virtual pinhole at the viewpoint, it gets its pixel neighbours back,
and with them the grid path's depth-gap and crease cuts, which separate
touching and stacked objects far better than a voxel graph (mOSD test56 and
test58, the two unorganised scans: 11 of 30 objects on voxels, 21 on the grid).
Clouds that are not one view (merged maps, heavily thinned clouds) leave holes
or pile points into one pixel; they are detected and keep the voxel path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from p3d_perception.segmentation.geometry import _norm3, _unit
from p3d_perception.segmentation.grid import CROP_MARGIN_PX


class GridView(NamedTuple):
    """A virtual range image of an unorganised cloud."""

    grid: np.ndarray      # (H, W, 3) float32 points in the virtual camera frame, NaN = empty
    owner: np.ndarray     # (H*W,) index of the input point shown by each pixel, -1 = empty
    pixel: np.ndarray     # (N,) pixel of every input point, -1 = not projected
    height: int
    width: int


def _camera_axes(directions: np.ndarray) -> np.ndarray:
    """Rows x, y, z of a virtual camera looking along the mean viewing direction."""
    z = _unit(directions.mean(axis=0))
    ref = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = _unit(ref - (ref @ z) * z)
    return np.stack([x, np.cross(z, x), z])


def project_single_view(points: np.ndarray, use: np.ndarray, viewpoint,
                        max_pixels: int = 1_500_000,
                        focus: np.ndarray | None = None) -> GridView | None:
    """A grid for the ``use`` points as one camera would have seen them, or None.

    The pixel pitch comes from the point density in the image plane (x/z, y/z):
    the occupied area over the point count, made 10 % coarser so a camera's own
    lattice never leaves empty pixels between neighbours (a few points share a
    pixel instead; they take that pixel's label afterwards).

    With ``focus`` (a mask of the points that matter, the object candidates) the
    grid covers only their pixels and the context the grid stage reads around
    them: the same pixels as the whole image would give, without filling the rest.
    """
    idx = np.flatnonzero(use)
    if idx.size < 100:
        return None
    view = np.asarray(viewpoint, np.float32)
    probe = points[idx[:: max(1, idx.size // 5000)]].astype(np.float64) - view
    rot = _camera_axes(probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
    # np.take and a 3x3 matmul (BLAS) are several times faster than fancy indexing
    # and per-axis arithmetic on (N, 3) rows
    rel = np.take(points, idx, axis=0)
    if view.any():
        rel -= view
    q = rel @ rot.T
    qz = q[:, 2]
    front = qz > 1e-3
    if front.mean() < 0.98:     # points all around the sensor: not one camera's view
        return None
    if not front.all():
        idx, q = idx[front], q[front]
        qz = q[:, 2]
    a = q[:, 0] / qz
    b = q[:, 1] / qz
    lo_a, hi_a, lo_b, hi_b = float(a.min()), float(a.max()), float(b.min()), float(b.max())
    span = max(hi_a - lo_a, hi_b - lo_b, 1e-6)
    cell = span / 64
    ca = ((a - lo_a) * (1 / cell)).astype(np.int32)
    cb = ((b - lo_b) * (1 / cell)).astype(np.int32)
    occupied = int(np.count_nonzero(np.bincount(ca * 65 + cb, minlength=65 * 65)))
    pitch = 1.1 * np.sqrt(occupied * cell * cell / idx.size)
    w = int((hi_a - lo_a) / pitch) + 1
    h = int((hi_b - lo_b) / pitch) + 1
    if h * w > max_pixels or h < 2 or w < 2:
        return None
    u = ((a - lo_a) * (1 / pitch)).astype(np.int64)
    v = ((b - lo_b) * (1 / pitch)).astype(np.int64)
    if focus is not None:
        fm = np.take(focus, idx)
        fu, fv = np.compress(fm, u), np.compress(fm, v)
        if fu.size:
            m = CROP_MARGIN_PX + 2
            u0, u1 = max(int(fu.min()) - m, 0), min(int(fu.max()) + m, w - 1)
            v0, v1 = max(int(fv.min()) - m, 0), min(int(fv.max()) + m, h - 1)
            inside = (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)
            # np.compress: boolean indexing is several times slower on these
            idx, q = np.compress(inside, idx), np.compress(inside, q, axis=0)
            u, v = np.compress(inside, u) - u0, np.compress(inside, v) - v0
            w, h = u1 - u0 + 1, v1 - v0 + 1
    pix = v * w + u
    slot = np.full(h * w, -1, dtype=np.int64)
    slot[pix] = np.arange(idx.size)     # one of the points sharing a pixel shows it
    shown = slot >= 0
    safe = np.where(shown, slot, 0)
    owner = np.where(shown, np.take(idx, safe), -1)
    grid = np.take(q, safe, axis=0)
    grid[~shown] = np.nan
    pixel = np.full(len(points), -1, dtype=np.int64)
    pixel[idx] = pix
    # one view fills its own image: a kept point's right or lower neighbour is
    # usually there; merged or thinned clouds are mostly holes or piles
    g = shown.reshape(h, w)
    inner = g[:-1, :-1]
    filled = (inner & (g[1:, :-1] | g[:-1, 1:])).sum() / max(inner.sum(), 1)
    if filled < 0.8 or shown.sum() < 0.6 * idx.size:
        return None
    return GridView(grid.reshape(h, w, 3), owner, pixel, h, w)


def labels_from_grid(view: GridView, grid_labels: np.ndarray, points: np.ndarray,
                     keep: np.ndarray, tol: float, viewpoint) -> np.ndarray:
    """Per-point labels from the grid's labels.

    A pixel's label goes to its own point and to the kept points that share the
    pixel when they lie within the gap tolerance (scaled by range) of it.
    """
    out = np.full(len(points), -1, dtype=np.int32)
    flat = grid_labels.reshape(-1)
    shown = view.owner >= 0
    out[view.owner[shown]] = flat[shown]
    rest = np.flatnonzero(keep & (view.pixel >= 0) & (out < 0))
    if rest.size:
        pix = view.pixel[rest]
        own = view.owner[pix]
        mine = np.take(points, rest, axis=0)
        d = _norm3(mine - np.take(points, own, axis=0))
        rng_ = _norm3(mine - np.asarray(viewpoint, np.float32))
        ok = d <= tol * np.maximum(rng_, 0.5)
        out[rest[ok]] = flat[pix[ok]]
    # points that are not kept are labelled nowhere: their pixels are no candidates
    # of the grid stage, and ``rest`` holds kept points only
    return out
