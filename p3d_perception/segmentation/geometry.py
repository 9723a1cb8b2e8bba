# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Small vector helpers shared by the stages.

Per-element products go column by column; a product with one vector goes to
BLAS, which is faster than either numpy's column arithmetic or einsum.
"""

from __future__ import annotations

import math

import numpy as np


def _norm3(a: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis of size 3 (much faster than linalg.norm there)."""
    x, y, z = a[..., 0], a[..., 1], a[..., 2]
    return np.sqrt(x * x + y * y + z * z)


def _dot3(a: np.ndarray, n) -> np.ndarray:
    """a . n over the last axis; ``n`` one 3-vector, or three per-element arrays.

    One vector goes to BLAS (a matrix-vector product, several times faster than
    column arithmetic on (N, 3) rows); per-element normals are summed by columns.
    """
    if isinstance(n, np.ndarray) and n.ndim == 1:
        return a @ n.astype(a.dtype, copy=False)
    return a[..., 0] * n[0] + a[..., 1] * n[1] + a[..., 2] * n[2]


def _bounds(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column min and max of (N, 3) rows.

    Column by column: numpy's axis-0 reductions over rows of three run ten times slower.
    """
    cols = [p[:, k] for k in range(p.shape[1])]
    return np.array([c.min() for c in cols]), np.array([c.max() for c in cols])


def _mean_rows(p: np.ndarray) -> np.ndarray:
    """Mean of (N, k) rows in float64, as one BLAS product (see ``_bounds``)."""
    p = np.asarray(p, dtype=np.float64)
    return np.ones(len(p)) @ p / len(p)


def _in_box(p: np.ndarray, lo, hi) -> np.ndarray:
    """Mask of the (N, 3) rows inside the axis-aligned box [lo, hi], column by column."""
    m = (p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0])
    for k in (1, 2):
        m &= (p[:, k] >= lo[k]) & (p[:, k] <= hi[k])
    return m


def _outside_quad(pts: np.ndarray) -> np.ndarray:
    """The points not strictly inside the quadrilateral of the four axis extremes.

    No point inside it can be a hull vertex (Akl-Toussaint), and on a cluster's
    footprint it holds most points, so the hull is built on a few.
    """
    if len(pts) < 16:
        return pts
    quad = pts[[np.argmin(pts[:, 0]), np.argmin(pts[:, 1]), np.argmax(pts[:, 0]),
                np.argmax(pts[:, 1])]]        # counter-clockwise: left, bottom, right, top
    inside = np.ones(len(pts), dtype=bool)
    for k in range(4):
        a, b = quad[k], quad[(k + 1) % 4]
        inside &= ((b[0] - a[0]) * (pts[:, 1] - a[1]) - (b[1] - a[1]) * (pts[:, 0] - a[0])) > 0
    return pts[~inside]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(float(v @ v))


def _cross3(a, b) -> np.ndarray:
    """Cross product over the last axis of size 3: of two 3-vectors, or of two grids.

    np.cross costs several times the arithmetic, on grids and on single vectors alike.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b, np.float32)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    out = np.empty_like(a)
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    np.subtract(ay * bz, az * by, out=out[..., 0])
    np.subtract(az * bx, ax * bz, out=out[..., 1])
    np.subtract(ax * by, ay * bx, out=out[..., 2])
    return out


def _plane_basis(n: np.ndarray) -> np.ndarray:
    """Two unit in-plane axes (rows) for 2D footprints on a plane with normal ``n``."""
    a = _unit(_cross3(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0]))
    return np.stack([a, _cross3(n, a)])


def _label_groups(labels: np.ndarray) -> list[np.ndarray]:
    """Input indices of each label >= 0, largest group first (ties keep label order)."""
    idx = np.flatnonzero(labels >= 0)
    if idx.size == 0:
        return []
    lab = labels[idx]
    if lab.max() < np.iinfo(np.int16).max:
        lab = lab.astype(np.int16)      # numpy sorts 16-bit keys by radix: same order, faster
    order = np.argsort(lab, kind='stable')
    idx, lab = idx[order], lab[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    groups = np.split(idx, starts[1:])
    groups.sort(key=len, reverse=True)
    return groups
