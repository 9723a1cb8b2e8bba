# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""What is not an object: points out of range or crop, and the support surface."""

from __future__ import annotations

import math

import numpy as np

from p3d_perception.segmentation.config import OPTICAL_UP_HINT, SegmentationConfig
from p3d_perception.segmentation.geometry import _dot3, _plane_basis, _unit


def _refit(points: np.ndarray, n: np.ndarray, d: float, thr: float,
           rounds: int = 2) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares refinement on the inliers; keeps the normal's orientation."""
    inl = np.abs(points @ n + d) < thr
    for _ in range(rounds):
        if inl.sum() < 3:
            break
        q = points[inl]
        c = q.mean(axis=0)
        _, _, vt = np.linalg.svd(q - c, full_matrices=False)
        m = vt[2] if vt[2] @ n >= 0 else -vt[2]
        n, d = m, float(-m @ c)
        inl = np.abs(points @ n + d) < thr
    return n, d, inl


def _ransac_planes(points: np.ndarray, cfg: SegmentationConfig, rng: np.random.Generator,
                   count: int) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Up to ``count`` horizontal-ish planes, largest first, each with its inlier mask."""
    up = _unit(cfg.up) if cfg.up is not None else _unit(OPTICAL_UP_HINT)
    view = np.asarray(cfg.viewpoint, dtype=np.float64)
    cos_tol = math.cos(math.radians(cfg.up_tolerance_deg))
    remaining = np.ones(len(points), dtype=bool)
    planes = []
    for _ in range(count):
        idx = np.flatnonzero(remaining)
        if idx.size < max(3, cfg.plane_min_points):
            break
        sub = points[idx]
        tri = sub[rng.integers(0, idx.size, size=(cfg.plane_iterations, 3))]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(n, axis=1)
        ok = norm > 1e-12
        n = n[ok] / norm[ok, None]
        d = -(n * tri[ok, 0]).sum(axis=1)
        if cfg.up is not None:
            sign = np.where(n @ up >= 0, 1.0, -1.0)
        else:  # the sensor sees a support surface from above
            sign = np.where(n @ view + d >= 0, 1.0, -1.0)
        n, d = n * sign[:, None], d * sign
        keep = n @ up >= cos_tol
        n, d = n[keep], d[keep]
        if n.shape[0] == 0:
            break
        # preemptive scoring: every hypothesis on a few points, the best few on more
        pre = sub[rng.integers(0, idx.size, size=min(idx.size, 256))]
        votes = (np.abs(pre @ n.T + d) < cfg.plane_distance).sum(axis=0)
        top = np.argsort(-votes, kind='stable')[:16]
        score_idx = rng.integers(0, idx.size, size=min(idx.size, 2000))
        dist = np.abs(sub[score_idx] @ n[top].T + d[top])
        best = int(top[np.argmax((dist < cfg.plane_distance).sum(axis=0))])
        bn, bd, inl_sub = _refit(sub, n[best], float(d[best]), cfg.plane_distance)
        if bn @ up < cos_tol or inl_sub.sum() < cfg.plane_min_points:
            break
        mask = np.zeros(len(points), dtype=bool)
        mask[idx[inl_sub]] = True
        planes.append((bn, bd, mask))
        remaining &= ~mask
    return planes


def _plane_extent(points: np.ndarray, n: np.ndarray) -> float:
    """Robust largest in-plane size (5th-95th percentile) of a plane's inliers."""
    uv = points @ _plane_basis(n).T
    lo, hi = np.percentile(uv, [5, 95], axis=0)
    return float((hi - lo).max())


def find_support_planes(points: np.ndarray, cfg: SegmentationConfig,
                        rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Planes [a, b, c, d] (unit normal pointing up) to remove; the support plane first.

    The support is the dominant horizontal-ish plane, or - with ``prefer_highest`` -
    a higher parallel plane of table size (a table seen above a larger floor).
    """
    rng = rng or np.random.default_rng(cfg.seed)
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] > 1.5 * cfg.plane_sample_points:
        pts = pts[rng.integers(0, pts.shape[0], cfg.plane_sample_points)]
    want = max(cfg.num_planes, 3 if cfg.prefer_highest else 1)
    found = _ransac_planes(pts, cfg, rng, want)
    if not found:
        return []
    order = list(range(len(found)))
    if cfg.prefer_highest and len(found) > 1:
        n0, d0, m0 = found[0]
        best = 0
        for i in range(1, len(found)):
            n, d, m = found[i]
            higher = -d - (-d0) > cfg.min_height * 3  # offset along the shared up direction
            parallel = n @ n0 > math.cos(math.radians(10))
            if (parallel and higher and m.sum() >= 0.1 * m0.sum()
                    and _plane_extent(pts[m], n) >= cfg.min_support_extent):
                if -d > -found[best][1]:
                    best = i
        order.remove(best)
        order.insert(0, best)
    return [np.array([*found[i][0], found[i][1]]) for i in order[:cfg.num_planes]]


def _range_mask(points: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    """Finite points inside the range shell and the crop box."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    v = np.asarray(cfg.viewpoint, dtype=np.float32)
    r2 = (x - v[0]) ** 2 + (y - v[1]) ** 2 + (z - v[2]) ** 2
    mask = (r2 >= cfg.min_range ** 2) & (r2 <= cfg.max_range ** 2)  # NaN compares False
    if cfg.crop_min is not None:
        lo = cfg.crop_min
        mask &= (x >= lo[0]) & (y >= lo[1]) & (z >= lo[2])
    if cfg.crop_max is not None:
        hi = cfg.crop_max
        mask &= (x <= hi[0]) & (y <= hi[1]) & (z <= hi[2])
    return mask


def _heights(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Signed height of points above a plane [a, b, c, d] (NaN for NaN points)."""
    return _dot3(points, plane[:3].astype(np.float32)) + np.float32(plane[3])


def _keep_above(points: np.ndarray, planes: list[np.ndarray],
                cfg: SegmentationConfig) -> np.ndarray:
    """Points between min_height and max_height above the support, off any extra plane."""
    h = _heights(points, planes[0])
    keep = (h > cfg.min_height) & (h < cfg.max_height)  # NaN compares False
    for p in planes[1:]:
        keep &= np.abs(_heights(points, p)) > cfg.min_height
    return keep
