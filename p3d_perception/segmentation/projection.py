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

import numba
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
    n_front, lo_a, hi_a, lo_b, hi_b = _ray_extent(q)
    if n_front < 0.98 * len(q):     # points all around the sensor: not one camera's view
        return None
    span = max(hi_a - lo_a, hi_b - lo_b, 1e-6)
    cell = span / 64
    occupied = _occupied_cells(q, np.float32(lo_a), np.float32(lo_b), np.float32(1 / cell))
    pitch = 1.1 * np.sqrt(occupied * cell * cell / n_front)
    w = int((hi_a - lo_a) / pitch) + 1
    h = int((hi_b - lo_b) / pitch) + 1
    if h * w > max_pixels or h < 2 or w < 2:
        return None
    # without focus (margin -1) the kernel never reads the mask; ``use`` stands in
    grid, owner, pixel, h, w, n_in = _fill_grid(
        q, idx, use if focus is None else focus, len(points),
        np.float32(lo_a), np.float32(lo_b), np.float32(1 / pitch), w, h,
        -1 if focus is None else CROP_MARGIN_PX + 2)
    # one view fills its own image: a kept point's right or lower neighbour is
    # usually there; merged or thinned clouds are mostly holes or piles
    shown = owner >= 0
    g = shown.reshape(h, w)
    inner = g[:-1, :-1]
    filled = (inner & (g[1:, :-1] | g[:-1, 1:])).sum() / max(inner.sum(), 1)
    if filled < 0.8 or shown.sum() < 0.6 * n_in:
        return None
    return GridView(grid.reshape(h, w, 3), owner, pixel, h, w)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the projection kernels now, on a few rays."""
    q = np.array([[0.0, 0.0, 1.0], [0.1, 0.1, 1.0]], np.float32)
    idx = np.arange(2)
    _ray_extent(q)
    _occupied_cells(q, np.float32(0), np.float32(0), np.float32(1))
    _fill_grid(q, idx, np.ones(2, bool), 2, np.float32(0), np.float32(0), np.float32(1),
               2, 2, 1)


# The passes below were some thirty numpy passes over every point (14 ms of a 300k
# frame); compiled, each is one loop. Arithmetic is float32 as numpy did it, so the
# pixels are the same.

@numba.njit(cache=True, nogil=True)
def _ray_extent(q):  # pragma: no cover
    """Points in front of the virtual camera, and the bounds of their image coordinates."""
    n = 0
    lo_a = lo_b = np.inf
    hi_a = hi_b = -np.inf
    for i in range(q.shape[0]):
        z = q[i, 2]
        if z > 1e-3:
            n += 1
            a, b = q[i, 0] / z, q[i, 1] / z
            lo_a, hi_a = min(lo_a, a), max(hi_a, a)
            lo_b, hi_b = min(lo_b, b), max(hi_b, b)
    return n, float(lo_a), float(hi_a), float(lo_b), float(hi_b)


@numba.njit(cache=True, nogil=True)
def _occupied_cells(q, lo_a, lo_b, inv_cell):  # pragma: no cover
    """How many cells of a 64x64 lattice over the image the points in front fall in."""
    seen = np.zeros(65 * 65, dtype=np.bool_)
    n = 0
    for i in range(q.shape[0]):
        z = q[i, 2]
        if z > 1e-3:
            k = int((q[i, 0] / z - lo_a) * inv_cell) * 65 + int((q[i, 1] / z - lo_b) * inv_cell)
            if not seen[k]:
                seen[k] = True
                n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _fill_grid(q, idx, focus, n_points, lo_a, lo_b, inv_pitch, w, h, margin):  # pragma: no cover
    """The range image of the points in front: pixels, owners, and per-point pixels.

    With ``margin`` >= 0 the image is cropped to the focus points' pixels plus that
    margin. Of the points sharing a pixel the last one shows it.
    """
    m = q.shape[0]
    u = np.empty(m, dtype=np.int32)     # -1: behind the camera
    v = np.empty(m, dtype=np.int32)
    fu0 = fv0 = 1 << 30
    fu1 = fv1 = -1
    for i in range(m):
        z = q[i, 2]
        if z > 1e-3:
            ui = int((q[i, 0] / z - lo_a) * inv_pitch)
            vi = int((q[i, 1] / z - lo_b) * inv_pitch)
            u[i], v[i] = ui, vi
            if margin >= 0 and focus[idx[i]]:
                fu0, fu1 = min(fu0, ui), max(fu1, ui)
                fv0, fv1 = min(fv0, vi), max(fv1, vi)
        else:
            u[i] = v[i] = -1
    u0, v0, u1, v1 = 0, 0, w - 1, h - 1
    if margin >= 0 and fu1 >= 0:
        u0, u1 = max(fu0 - margin, 0), min(fu1 + margin, w - 1)
        v0, v1 = max(fv0 - margin, 0), min(fv1 + margin, h - 1)
    w, h = u1 - u0 + 1, v1 - v0 + 1
    slot = np.full(h * w, -1, dtype=np.int64)
    pixel = np.full(n_points, -1, dtype=np.int64)
    n_in = 0
    for i in range(m):
        if u[i] >= u0 and u[i] <= u1 and v[i] >= v0 and v[i] <= v1:
            pix = (v[i] - v0) * w + (u[i] - u0)
            slot[pix] = i
            pixel[idx[i]] = pix
            n_in += 1
    owner = np.full(h * w, -1, dtype=np.int64)
    grid = np.full((h * w, 3), np.nan, dtype=np.float32)
    for k in range(h * w):
        i = slot[k]
        if i >= 0:
            owner[k] = idx[i]
            grid[k, 0], grid[k, 1], grid[k, 2] = q[i, 0], q[i, 1], q[i, 2]
    return grid, owner, pixel, h, w, n_in


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
