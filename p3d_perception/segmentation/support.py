# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""What is not an object: points out of range or crop, and the support surface."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from p3d_perception.segmentation.config import OPTICAL_UP_HINT, SegmentationConfig
from p3d_perception.segmentation.geometry import _dot3, _mean_rows, _plane_basis, _unit


def _refit(points: np.ndarray, n: np.ndarray, d: float, thr: float,
           rounds: int = 2) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares refinement on the inliers; keeps the normal's orientation."""
    inl = np.abs(points @ n + d) < thr
    for _ in range(rounds):
        if inl.sum() < 3:
            break
        q = np.compress(inl, points, axis=0)
        # the normal is the scatter matrix's least eigenvector: a 3x3 problem instead
        # of an SVD of every inlier, its sums as BLAS products
        c = _mean_rows(q)
        _, vec = np.linalg.eigh(q.T @ q / len(q) - np.outer(c, c))
        m = vec[:, 0] if vec[:, 0] @ n >= 0 else -vec[:, 0]
        n, d = m, float(-m @ c)
        inl = np.abs(points @ n + d) < thr
    return n, d, inl


def _ransac_planes(points: np.ndarray, cfg: SegmentationConfig, rng: np.random.Generator,
                   count: int, keep_after: int = 0,
                   min_share: float = 0.0) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Up to ``count`` horizontal-ish planes, largest first, each with its inlier mask.

    After ``keep_after`` planes, the search stops at the first plane with fewer
    than ``min_share`` of the largest one's inliers: the support choice ignores
    such planes, and each further plane costs a RANSAC round.
    """
    up = _unit(cfg.up) if cfg.up is not None else _unit(OPTICAL_UP_HINT)
    view = np.asarray(cfg.viewpoint, dtype=np.float64)
    cos_tol = math.cos(math.radians(cfg.up_tolerance_deg))
    remaining = np.ones(len(points), dtype=bool)
    planes = []
    for _ in range(count):
        idx = np.flatnonzero(remaining)
        if idx.size < max(3, cfg.plane_min_points):
            break
        sub = np.take(points, idx, axis=0)
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
        if len(planes) >= max(keep_after, 1) and inl_sub.sum() < min_share * planes[0][2].sum():
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


def _footprint(points: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust 2D bounds (5th-95th percentile) of points projected onto a plane."""
    lo, hi = np.percentile(points @ basis.T, [5, 95], axis=0)
    return lo, hi


def choose_support(found: list[tuple[np.ndarray, float, np.ndarray]], pts: np.ndarray,
                   cfg: SegmentationConfig) -> int:
    """Index of the support among RANSAC planes (largest first), by two readable rules.

    1. *Under the objects.* The largest horizontal plane is the support, unless a
       parallel, table-sized plane lies less than ``support_rise`` below it and
       reaches around it (its footprint holds the larger plane's centre): then
       the larger one is the top of something standing on the lower one (a big
       flat box, a tray's floor, lids of a row of tins) and the lower one wins.
    2. *A table above a floor* (``prefer_highest``): a parallel, table-sized plane
       at least ``support_rise`` above the current choice, with at least a tenth
       of the largest plane's points, replaces it; the lowest such plane wins,
       and the step repeats from there (floor, then table; the boards of a
       shelf closer than ``support_rise`` stay above the support, and what
       stands on them is kept). Objects on a table are rarely that tall and
       table-sized on top, which is what keeps box tops and lids 5-30 cm up
       from ever being chosen.

    Heights are offsets along the shared normal (``-d`` for a unit normal).
    """
    n0, d0, m0 = found[0]
    cos_par = math.cos(math.radians(10))
    basis = _plane_basis(n0)
    size0 = int(m0.sum())

    def table_sized(i: int) -> bool:
        n, _, m = found[i]
        return _plane_extent(pts[m], n) >= cfg.min_support_extent

    parallel = [i for i in range(len(found)) if found[i][0] @ n0 > cos_par]
    best = 0
    centre0 = None      # the largest plane's footprint, needed only with a plane below it
    for i in parallel[1:]:
        n, d, m = found[i]
        drop = (-d0) - (-d)
        if not 3 * cfg.min_height < drop < cfg.support_rise or m.sum() < 0.25 * size0:
            continue
        if centre0 is None:
            lo0, hi0 = _footprint(pts[m0], basis)
            centre0 = (lo0 + hi0) / 2
        lo, hi = _footprint(pts[m], basis)
        if ((lo <= centre0) & (centre0 <= hi)).all() and table_sized(i):
            if -d < -found[best][1]:
                best = i
    if cfg.prefer_highest:
        while True:     # step up level by level: floor -> table, never table -> box top
            h = -found[best][1]
            up = [i for i in parallel if -found[i][1] - h >= cfg.support_rise
                  and found[i][2].sum() >= 0.1 * size0 and table_sized(i)]
            if not up:
                break
            best = min(up, key=lambda i: -found[i][1])
    return best


def _hinted_plane(pts: np.ndarray, cfg: SegmentationConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """The user's support plane, refined on the points near it (or kept as given).

    A fixed table height or a plane measured once is exact in the robot's frame
    but drifts a little with calibration; a plane fitted to the points within a
    few centimetres of it (never more than 10 degrees off) absorbs that drift,
    and the hint itself is used when too few points lie there.
    """
    hint = np.asarray(cfg.support_plane, dtype=np.float64)
    scale = np.linalg.norm(hint[:3])
    n, d = hint[:3] / scale, hint[3] / scale
    band = np.abs(pts @ n + d) < max(0.03, 2 * cfg.plane_distance)
    near = pts[band]
    sub = replace(cfg, up=tuple(n), up_tolerance_deg=10.0, support_plane=None)
    found = _ransac_planes(near, sub, rng, 1) if len(near) >= cfg.plane_min_points else []
    if found:
        fn, fd, _ = found[0]
        return np.array([*fn, fd])
    return np.array([*n, d])


def find_support_planes(points: np.ndarray, cfg: SegmentationConfig,
                        rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Planes [a, b, c, d] (unit normal pointing up) to remove; the support plane first.

    ``support_plane``, when given, is the support (refined on nearby points);
    otherwise :func:`choose_support` picks it among the horizontal-ish planes.
    Further planes (``num_planes`` > 1) follow, largest first.
    """
    rng = rng or np.random.default_rng(cfg.seed)
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] > 1.5 * cfg.plane_sample_points:
        pts = pts[rng.integers(0, pts.shape[0], cfg.plane_sample_points)]
    if cfg.support_plane is not None:
        support = _hinted_plane(pts, cfg, rng)
        if cfg.num_planes == 1:
            return [support]
        rest = pts[np.abs(pts @ support[:3] + support[3]) >= cfg.plane_distance]
        others = _ransac_planes(rest, cfg, rng, cfg.num_planes - 1)
        return [support] + [np.array([*n, d]) for n, d, _ in others]
    found = _ransac_planes(pts, cfg, rng, max(cfg.num_planes, 5), keep_after=cfg.num_planes,
                           min_share=0.1)
    if not found:
        return []
    best = choose_support(found, pts, cfg)
    order = [best] + [i for i in range(len(found)) if i != best]
    return [np.array([*found[i][0], found[i][1]]) for i in order[:cfg.num_planes]]


def plane_sample(cloud, in_range: np.ndarray, cfg: SegmentationConfig,
                 rng: np.random.Generator, organised: bool) -> np.ndarray:
    """The points the plane fit sees: a regular pixel lattice, or a random subset.

    A lattice on the grid costs nothing and covers the image evenly; unorganised
    clouds have no order to rely on, so they are sampled at random.
    """
    pts = cloud.points
    if organised:
        grid = pts.reshape(cloud.height, cloud.width, 3)
        step = max(1, int(math.sqrt(len(pts) / cfg.plane_sample_points)))
        return grid[::step, ::step][in_range.reshape(grid.shape[:2])[::step, ::step]]
    idx = np.flatnonzero(in_range)
    if idx.size > cfg.plane_sample_points:
        idx = idx[rng.integers(0, idx.size, cfg.plane_sample_points)]
    return np.take(pts, idx, axis=0)


def _range_mask(points: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    """Finite points inside the range shell and the crop box."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    v = np.asarray(cfg.viewpoint, dtype=np.float32)
    rx, ry, rz = (x - v[0], y - v[1], z - v[2]) if v.any() else (x, y, z)
    r2 = rx * rx + ry * ry + rz * rz
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
    """Points between min_height and max_height above a removed plane, off all of them.

    With one plane this is the space above the support. With more (``num_planes``),
    what stands on any of them is kept: the boards of a shelf, a table and the
    floor beside it.
    """
    h = _heights(points, planes[0])
    keep = (h > cfg.min_height) & (h < cfg.max_height)  # NaN compares False
    for p in planes[1:]:
        hp = _heights(points, p)
        keep |= (hp > cfg.min_height) & (hp < cfg.max_height)
    for p in planes[1:]:
        keep &= np.abs(_heights(points, p)) > cfg.min_height
    return keep
