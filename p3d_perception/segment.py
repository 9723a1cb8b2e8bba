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
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np
from scipy import ndimage

from p3d_perception.cloud import Cloud, CloudError
from p3d_perception.config import ConfigError, require_finite

log = logging.getLogger(__name__)

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
    prefer_highest: bool = True       #: prefer the highest table-sized plane (table > floor)
    min_support_extent: float = 0.35  #: a higher plane counts as the support above this size (m)
    min_height: float = 0.012         #: points lower than this above the support are removed (m)
    max_height: float = 0.7           #: points higher than this above the support are removed (m)
    viewpoint: tuple[float, float, float] = (0.0, 0.0, 0.0)  #: sensor origin in the cloud frame
    # --- clustering
    cluster_tolerance: float = 0.012  #: neighbour gap at 1 m range (m); grows linearly with range
    concave_cut: bool = True          #: cut at concave creases (splits stacked/touching objects)
    crease_radius: float = 0.012      #: neighbourhood radius of the crease test (m)
    crease_threshold: float = 0.12    #: crease when (mean - point).normal > this * radius
    min_cluster_points: int = 150     #: clusters with fewer input points are dropped
    max_cluster_points: int = 0       #: clusters with more input points are dropped (0 = off)
    min_cluster_size: float = 0.02    #: clusters whose largest side is shorter are dropped (m)
    max_cluster_size: float = 0.9     #: clusters whose largest side is longer are dropped (m)
    merge_containers: bool = True     #: rejoin container insides and handles to their object
    rim_tolerance: float = 0.01       #: rims of one container agree in height within this (m)
    seed: int = 0                     #: RANSAC random seed (results are deterministic)

    def validate(self) -> None:
        require_finite(self, 'segmentation.')

        def positive(name: str) -> None:
            if not getattr(self, name) > 0:
                raise ConfigError(f'segmentation.{name} must be > 0, got {getattr(self, name)}')

        for name in ('max_range', 'voxel_size', 'plane_distance', 'cluster_tolerance',
                     'crease_radius', 'crease_threshold', 'max_height', 'max_cluster_size',
                     'rim_tolerance'):
            positive(name)
        if self.min_range < 0 or self.min_range >= self.max_range:
            raise ConfigError(f'segmentation.min_range must be in [0, max_range), got '
                              f'{self.min_range}')
        # Each corner alone is a half-open box (set one at a time with `ros2 param set`).
        if self.crop_min is not None and self.crop_max is not None and any(
                a >= b for a, b in zip(self.crop_min, self.crop_max)):
            raise ConfigError(f'segmentation.crop_min {self.crop_min} must be below crop_max '
                              f'{self.crop_max} on every axis')
        if self.organized_stride < 1:
            raise ConfigError(f'segmentation.organized_stride must be >= 1, got '
                              f'{self.organized_stride}')
        if self.num_planes < 1:
            raise ConfigError(f'segmentation.num_planes must be >= 1, got {self.num_planes}')
        if self.up is not None and not np.linalg.norm(self.up) > 0:
            raise ConfigError('segmentation.up must be a non-zero vector (or null for auto)')
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


@dataclass
class OrientedBox:
    """A box: centre, full side lengths, and rotation whose columns are the box axes."""

    center: np.ndarray
    extent: np.ndarray
    rotation: np.ndarray


@dataclass
class Cluster:
    """One object candidate; ``indices`` point into the input cloud."""

    id: int
    indices: np.ndarray
    points: np.ndarray
    colors: np.ndarray | None
    centroid: np.ndarray
    box: OrientedBox


@dataclass
class Segmentation:
    """Per-input-point labels (-1 = not an object), the clusters and the removed planes."""

    labels: np.ndarray
    clusters: list[Cluster]
    planes: list[np.ndarray]
    timings_ms: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------ planes

def _norm3(a: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis of size 3 (much faster than linalg.norm there)."""
    x, y, z = a[..., 0], a[..., 1], a[..., 2]
    return np.sqrt(x * x + y * y + z * z)


def _dot3(a: np.ndarray, n) -> np.ndarray:
    """a . n over the last axis, by columns (matmul with a 3-vector is slow in numpy)."""
    return a[..., 0] * n[0] + a[..., 1] * n[1] + a[..., 2] * n[2]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


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


def _plane_basis(n: np.ndarray) -> np.ndarray:
    """Two unit in-plane axes (rows) for 2D footprints on a plane with normal ``n``."""
    a = _unit(np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0]))
    return np.stack([a, np.cross(n, a)])


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


# ------------------------------------------------------------------ helpers

def _label_groups(labels: np.ndarray) -> list[np.ndarray]:
    """Input indices of each label >= 0, largest group first (ties keep label order)."""
    idx = np.flatnonzero(labels >= 0)
    if idx.size == 0:
        return []
    lab = labels[idx]
    order = np.argsort(lab, kind='stable')
    idx, lab = idx[order], lab[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    groups = np.split(idx, starts[1:])
    groups.sort(key=len, reverse=True)
    return groups


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


# ------------------------------------------------------------------ organised path

def _shift(a: np.ndarray, dv: int, du: int, fill) -> np.ndarray:
    """a shifted so that out[v, u] = a[v + dv, u + du] (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape[:2]
    if abs(dv) >= h or abs(du) >= w:  # a shift past the whole grid (a small ROI) is all fill
        return out
    vs = slice(max(0, -dv), min(h, h - dv))
    us = slice(max(0, -du), min(w, w - du))
    vs2 = slice(max(0, dv), min(h, h + dv))
    us2 = slice(max(0, du), min(w, w + du))
    out[vs, us] = a[vs2, us2]
    return out


def _box_mean(grid: np.ndarray, valid: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of valid points in a (2r+1)^2 window, and the window's valid count."""
    size = 2 * radius + 1
    w = valid.astype(np.float32)
    cnt = ndimage.uniform_filter(w, size=size, mode='constant')
    out = np.empty_like(grid)
    for k in range(3):
        out[..., k] = ndimage.uniform_filter(np.where(valid, grid[..., k], 0).astype(np.float32),
                                             size=size, mode='constant')
    with np.errstate(invalid='ignore', divide='ignore'):
        out /= cnt[..., None]
    return out, cnt * size * size


def _organized_labels(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray,
                      cfg: SegmentationConfig, stride: int,
                      timings: dict) -> np.ndarray:
    """Connected components on the pixel grid cut at depth gaps and concave creases.

    Work happens inside the bounding box of the candidate pixels (plus a margin for
    the neighbourhood filters): objects usually cover a small part of the image.
    """
    labels_full = np.full(cand.shape, -1, dtype=np.int32)
    if not cand.any():
        return labels_full
    rows, cols = np.flatnonzero(cand.any(axis=1)), np.flatnonzero(cand.any(axis=0))
    m = 12
    box = (slice(max(rows[0] - m, 0), rows[-1] + m + 1), slice(max(cols[0] - m, 0),
                                                               cols[-1] + m + 1))
    labels_full[box] = _grid_labels(np.ascontiguousarray(grid[box]), cand[box], valid[box],
                                    cfg, stride, timings)
    return labels_full


def _grid_labels(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray,
                 cfg: SegmentationConfig, stride: int, timings: dict) -> np.ndarray:
    """Components of the candidate pixels; cut pixels rejoin a close neighbour after.

    Depth-gap tests become two edge masks (right, down) computed once by slicing, and
    the rejoin sweeps reuse them, so no full-grid shifted copies are made per sweep.
    """
    t0 = time.perf_counter()
    grid = grid.astype(np.float32, copy=False)
    rng_ = _norm3(grid)
    thr = (np.float32(cfg.cluster_tolerance * max(1.0, stride / 2.0))
           * np.maximum(rng_, np.float32(0.5)))
    # edge masks: ok_r[v, u] links (v, u)-(v, u+1), ok_d[v, u] links (v, u)-(v+1, u);
    # an invalid end (NaN) counts as a gap
    with np.errstate(invalid='ignore'):
        ok_r = _norm3(grid[:, 1:] - grid[:, :-1]) <= thr[:, :-1]
        ok_d = _norm3(grid[1:] - grid[:-1]) <= thr[:-1]
        ok_r &= valid[:, 1:] & valid[:, :-1]
        ok_d &= valid[1:] & valid[:-1]
    cut = ~valid.copy()
    cut[:, :-1] |= ~ok_r
    cut[:, -1] = True
    cut[:-1] |= ~ok_d
    cut[-1] = True
    if cfg.concave_cut:
        cut |= _creases(grid, cand, valid, rng_, cfg, stride)
    core = cand & ~cut
    timings['cuts'] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    labels, num = ndimage.label(core)
    labels -= 1  # -1 background
    # give cut candidate pixels the label of a close 4-neighbour (a few sweeps)
    todo = cand & (labels < 0)
    h, w = labels.shape
    # (target slice, source slice, edge mask) for right, down, left, up neighbours
    moves = ((np.s_[:, :-1], np.s_[:, 1:], ok_r), (np.s_[:-1], np.s_[1:], ok_d),
             (np.s_[:, 1:], np.s_[:, :-1], ok_r), (np.s_[1:], np.s_[:-1], ok_d))
    for _ in range(3 * max(1, 4 // stride)):
        if not todo.any():
            break
        changed = False
        for dst, src, edge in moves:
            nl = labels[src]
            ok = todo[dst] & (nl >= 0) & edge
            if ok.any():
                labels[dst][ok] = nl[ok]
                todo[dst] &= ~ok
                changed = True
        if not changed:
            break
    timings['components'] = (time.perf_counter() - t0) * 1e3
    return labels


def _creases(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray, rng_: np.ndarray,
             cfg: SegmentationConfig, stride: int) -> np.ndarray:
    """Concave-crease pixels: the neighbourhood mean lies on the open side of the surface."""
    # pixel radius matching crease_radius at the candidates' median range
    med = float(np.nanmedian(rng_[cand])) if cand.any() else 1.0
    focal_px = _focal_estimate(grid, valid) / stride
    r_px = int(np.clip(round(cfg.crease_radius * focal_px / max(med, 1e-3)), 1, 8))
    big, cnt = _box_mean(grid, valid, r_px)
    small, _ = _box_mean(grid, valid, 1)
    dx = _shift(small, 0, r_px, np.nan) - _shift(small, 0, -r_px, np.nan)
    dy = _shift(small, r_px, 0, np.nan) - _shift(small, -r_px, 0, np.nan)
    n = np.cross(dx, dy)
    with np.errstate(invalid='ignore', divide='ignore'):
        n /= _norm3(n)[..., None]
        # orient toward the sensor
        nt = n.transpose(2, 0, 1)
        flip = _dot3(np.asarray(cfg.viewpoint, np.float32) - small, nt) < 0
        n[flip] *= -1
        conc = _dot3(big - small, nt) / cfg.crease_radius
        return (conc > cfg.crease_threshold) & (cnt > 0.5 * (2 * r_px + 1) ** 2)


def _focal_estimate(grid: np.ndarray, valid: np.ndarray) -> float:
    """Focal length in pixels of this grid, from neighbouring valid points (x/z steps)."""
    h, w = valid.shape
    rows = slice(h // 4, 3 * h // 4, max(1, h // 40))
    x, z = grid[rows, :, 0], grid[rows, :, 2]
    v = valid[rows]
    ok = v[:, 1:] & v[:, :-1]
    du = (x[:, 1:] / z[:, 1:] - x[:, :-1] / z[:, :-1])[ok]
    if du.size < 10:
        return 525.0
    step = float(np.median(np.abs(du)))
    return 1.0 / step if step > 0 else 525.0


def _upsample_labels(sub_labels: np.ndarray, points: np.ndarray, keep: np.ndarray,
                     h: int, w: int, s: int, tol: float) -> np.ndarray:
    """Full-resolution labels from a stride-s grid: the nearest labelled sub-pixel nearby.

    Only the kept (object candidate) pixels are visited.
    """
    full = np.full(h * w, -1, dtype=np.int32)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return full
    sh, sw = sub_labels.shape
    v, u = idx // w, idx % w
    p = points[idx]
    # the gap allowed grows with range, as in the grid cuts
    thr = tol * np.maximum(np.sqrt((p * p).sum(axis=1)), 0.5)
    best = np.full(idx.size, np.inf, dtype=np.float32)
    sub_pts = points.reshape(h, w, 3)[::s, ::s]
    for ov in (0, 1):
        for ou in (0, 1):
            iv = np.minimum(v // s + ov, sh - 1)
            iu = np.minimum(u // s + ou, sw - 1)
            lab = sub_labels[iv, iu]
            d = _norm3(p - sub_pts[iv, iu])
            with np.errstate(invalid='ignore'):
                ok = (lab >= 0) & (d < best) & (d <= thr)
            full[idx[ok]] = lab[ok]
            best[ok] = d[ok]
    return full


# ------------------------------------------------------------------ unorganised path

def _voxel_labels(points: np.ndarray, cfg: SegmentationConfig,
                  timings: dict) -> np.ndarray:
    """Per-point cluster labels for (already filtered) points via a voxel graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    t0 = time.perf_counter()
    vs = cfg.voxel_size
    keys = np.floor(points / vs).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    lin = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, inv, counts = np.unique(lin, return_inverse=True, return_counts=True)
    nv = counts.size
    cent = np.zeros((nv, 3), dtype=np.float64)
    np.add.at(cent, inv, points)
    cent /= counts[:, None]
    timings['voxelize'] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    tree = cKDTree(cent)
    k = min(16, nv)
    dist, nbr = tree.query(cent, k=k)
    rng_ = np.linalg.norm(cent - np.asarray(cfg.viewpoint), axis=1)
    tol = np.maximum(cfg.cluster_tolerance * np.maximum(rng_, 0.5), vs * 1.8)
    crease = np.zeros(nv, dtype=bool)
    if cfg.concave_cut and nv >= 4:
        within = dist <= cfg.crease_radius * 1.5
        q = cent[nbr]  # (nv, k, 3)
        wsum = within.sum(axis=1)
        mean = (q * within[..., None]).sum(axis=1) / np.maximum(wsum, 1)[:, None]
        d = (q - mean[:, None, :]) * within[..., None]
        cov = np.einsum('nki,nkj->nij', d, d) / np.maximum(wsum, 1)[:, None, None]
        _, vecs = np.linalg.eigh(cov)
        n = vecs[:, :, 0]
        flip = (n * (np.asarray(cfg.viewpoint) - cent)).sum(axis=1) < 0
        n[flip] *= -1
        conc = ((mean - cent) * n).sum(axis=1) / cfg.crease_radius
        crease = (conc > cfg.crease_threshold) & (wsum >= 6)
    src = np.repeat(np.arange(nv), k)
    dst = nbr.reshape(-1)
    ok = dist.reshape(-1) <= np.repeat(tol, k)
    ok &= ~crease[src] & ~crease[dst]
    graph = coo_matrix((np.ones(int(ok.sum()), dtype=np.int8), (src[ok], dst[ok])),
                       shape=(nv, nv))
    _, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.int32)
    comp[crease] = -1
    # crease voxels join the nearest non-crease neighbour within tolerance
    for _ in range(3):
        todo = np.flatnonzero(comp < 0)
        if todo.size == 0:
            break
        nl = comp[nbr[todo]]
        good = (nl >= 0) & (dist[todo] <= tol[todo, None])
        first = np.argmax(good, axis=1)
        has = good[np.arange(todo.size), first]
        comp[todo[has]] = nl[has, first[has]]
    timings['components'] = (time.perf_counter() - t0) * 1e3
    return comp[inv]


# ------------------------------------------------------------------ merge steps

class _Piece(NamedTuple):
    """A cluster candidate as the merge step sees it."""

    indices: np.ndarray
    points: np.ndarray      # (N, 3) float64
    heights: np.ndarray     # (N,) above the support plane
    top: float              # 99th percentile height: the rim, robust to flying pixels
    lo: np.ndarray          # bounding box corners
    hi: np.ndarray


def _merge_parts(points: np.ndarray, labels: np.ndarray, plane: np.ndarray,
                 cfg: SegmentationConfig) -> np.ndarray:
    """Rejoin what the cuts split off an object: a container's inside, a handle.

    The inner wall meets the floor of a container in a concave crease, and the
    front rim hides part of the inside, so the crease and gap cuts that separate
    stacked objects also split every cup, bowl and pot in two. Both pieces end at
    the same rim height, their rims together ring an empty middle, and the inside
    is seen *through the opening*: the ray from the sensor to an inner point
    crosses the rim's height inside the ring. Two separate objects of equal height
    side by side have solid tops that do not ring anything.

    A handle meets its body in two thin creases. It is a thin upright slab, much
    smaller than the body, no higher than it, and it joins only the nearest body.
    """
    from scipy.spatial import ConvexHull, QhullError, cKDTree

    groups = _label_groups(labels)
    if not groups:
        return labels
    n = np.asarray(plane[:3], dtype=np.float64)
    d = float(plane[3])
    view = np.asarray(cfg.viewpoint, dtype=np.float64)
    h_view = float(view @ n + d)
    basis = _plane_basis(n)
    rim = cfg.rim_tolerance
    pieces = []
    for g in [g for g in groups if len(g) >= 30][:64]:
        p = points[g].astype(np.float64)
        h = p @ n + d
        pieces.append(_Piece(g, p, h, float(np.percentile(h, 99)), p.min(axis=0),
                             p.max(axis=0)))
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def seen_through_opening(f: _Piece, other: _Piece) -> bool:
        top = max(f.top, other.top)
        if h_view <= top + rim:  # the sensor must look down into the opening
            return False
        ring = np.vstack([f.points[f.heights >= top - rim],
                          other.points[other.heights >= top - rim]]) @ basis.T
        if len(ring) < 10:
            return False
        try:
            hull = ConvexHull(ring)
        except (QhullError, ValueError):
            return False
        # a rim rings an empty middle: rim points all around (11 of 16 sectors), none
        # near the centre
        rel = ring - ring[hull.vertices].mean(axis=0)
        radius = np.hypot(rel[:, 0], rel[:, 1])
        sectors = np.unique((np.arctan2(rel[:, 1], rel[:, 0]) / (np.pi / 8)).astype(int))
        if len(sectors) < 11 or radius.min() < 0.4 * np.median(radius):
            return False
        low = f.heights < top - 2 * rim
        if low.sum() < 0.4 * len(f.heights):
            return False
        t = (top - h_view) / (f.heights[low] - h_view)
        q = (view + t[:, None] * (f.points[low] - view)) @ basis.T
        inside = (q @ hull.equations[:, :2].T + hull.equations[:, 2] <= -0.5 * rim).all(axis=1)
        return bool(inside.mean() >= 0.6)

    def is_handle(f: _Piece, body: _Piece) -> bool:
        if len(f.points) > 0.25 * len(body.points) or f.top > body.top + rim:
            return False
        c = f.points - f.points.mean(axis=0)
        var, vec = np.linalg.eigh(c.T @ c / len(c))
        sd = np.sqrt(np.maximum(var, 0))
        # thin across, and the thin axis lies flat (a phone or plate lying beside an
        # object is thin along the vertical)
        return bool(sd[0] < 0.25 * sd[2] and sd[0] < 0.006 and abs(vec[:, 0] @ n) < 0.5)

    trees: dict[int, cKDTree] = {}

    def gap(i: int, j: int, link: float) -> float:
        """Smallest distance between two pieces (on at most 1500 points each)."""
        if j not in trees:
            trees[j] = cKDTree(pieces[j].points[::max(1, len(pieces[j].points) // 1500)],
                               balanced_tree=False, compact_nodes=False)
        sub = pieces[i].points[::max(1, len(pieces[i].points) // 1500)]
        return float(trees[j].query(sub, k=1, distance_upper_bound=link)[0].min())

    handle_of: dict[int, tuple[float, int]] = {}   # handle -> (distance, nearest body)
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):     # sorted by size: i is the larger
            a, b = pieces[i], pieces[j]
            if abs(a.top - b.top) > rim and len(a.points) < 4 * len(b.points):
                continue
            # the rim between the pieces is thin and often lost, hence a generous gap
            link = max(4 * rim, 2.0 * cfg.cluster_tolerance * float(np.linalg.norm(a.lo - view)))
            if (a.lo > b.hi + link).any() or (b.lo > a.hi + link).any():
                continue
            dist = gap(i, j, link)
            if dist > link:
                continue
            if seen_through_opening(a, b) or seen_through_opening(b, a):
                parent[root(j)] = root(i)
            elif is_handle(b, a) and dist < handle_of.get(j, (np.inf, -1))[0]:
                handle_of[j] = (dist, i)
    for j, (_, i) in handle_of.items():
        parent[root(j)] = root(i)
    out = labels.copy()
    for i, piece in enumerate(pieces):
        r = root(i)
        if r != i:
            out[piece.indices] = labels[pieces[r].indices[0]]
    return out


def _absorb_fragments(points: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                      cfg: SegmentationConfig) -> np.ndarray:
    """Give crease shards and cut pixels to the object they touch.

    Sensor noise on curved or concave surfaces (a mug's inside, a bear's fur)
    breaks off many shards too small to be objects; they would be dropped, and
    the object they belong to would lose them. A shard within the gap tolerance
    of a real cluster joins it; one that touches none is left out as before.
    """
    from scipy.spatial import cKDTree

    lab = labels.copy()
    kept = np.flatnonzero(keep)
    kl = lab[kept]
    counts = np.bincount(kl[kl >= 0]) if (kl >= 0).any() else np.zeros(0, np.int64)
    small = counts < cfg.min_cluster_points
    is_loose = kl < 0
    is_loose[~is_loose] = small[kl[~is_loose]]
    if not is_loose.any() or is_loose.all():
        return lab
    loose_idx, big_idx = kept[is_loose], kept[~is_loose]
    q = points[loose_idx].astype(np.float64)
    lo, hi = q.min(axis=0) - 0.05, q.max(axis=0) + 0.05
    bp = points[big_idx]
    near = ((bp >= lo) & (bp <= hi)).all(axis=1)
    if not near.any():
        return lab
    big_idx, bp = big_idx[near], bp[near].astype(np.float64)
    rng_ = _norm3(q - np.asarray(cfg.viewpoint))
    link = cfg.cluster_tolerance * np.maximum(rng_, 0.5) * 2.0
    # an unbalanced tree builds twice as fast, and this one answers one query
    tree = cKDTree(bp, balanced_tree=False, compact_nodes=False)
    dist, nn = tree.query(q, k=1, distance_upper_bound=float(link.max()))
    ok = np.isfinite(dist) & (dist <= link)
    lab[loose_idx] = -1
    lab[loose_idx[ok]] = lab[big_idx[nn[ok]]]
    return lab


# ------------------------------------------------------------------ cluster geometry

def _min_area_rect(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, size and angle of the minimum-area rectangle around 2D points."""
    from scipy.spatial import ConvexHull, QhullError
    pts = uv if len(uv) <= 4000 else uv[::len(uv) // 2000]
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
    ax2 = np.cross(n, ax1)
    h = p @ n + d
    top = max(float(h.max()), 0.0)
    bottom = 0.0 if h.min() > -0.05 else float(h.min())
    rot = np.stack([ax1, ax2, n], axis=1)
    on_plane = centre2[0] * a + centre2[1] * b - d * n  # point on the plane below the centre
    centre = on_plane + n * (top + bottom) / 2
    return OrientedBox(centre, np.array([size2[0], size2[1], top - bottom]), rot)


# ------------------------------------------------------------------ segmenter

class Segmenter:
    """Callable segmentation with a fixed config (reuse one per camera stream)."""

    def __init__(self, config: SegmentationConfig | None = None) -> None:
        self.config = config or SegmentationConfig()
        self.config.validate()

    def __call__(self, cloud: Cloud) -> Segmentation:
        if not isinstance(cloud, Cloud):
            raise CloudError(f'segment() needs a p3d_perception.cloud.Cloud, got '
                             f'{type(cloud).__name__}')
        cfg = self.config
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        n = len(cloud)
        pts = cloud.points
        labels = np.full(n, -1, dtype=np.int32)
        rng = np.random.default_rng(cfg.seed)

        t0 = time.perf_counter()
        in_range = _range_mask(pts, cfg)
        timings['crop'] = (time.perf_counter() - t0) * 1e3
        if not in_range.any():
            log.debug('no point inside the range/crop limits')
            timings['total'] = (time.perf_counter() - t_all) * 1e3
            return Segmentation(labels, [], [], timings)

        organised = cfg.organized and cloud.is_organized and cloud.width > 1
        s = cfg.organized_stride if organised else 1
        t0 = time.perf_counter()
        planes: list[np.ndarray] = []
        if cfg.remove_support:
            if organised:
                grid = pts.reshape(cloud.height, cloud.width, 3)
                step = max(1, int(math.sqrt(n / cfg.plane_sample_points)))
                sample = grid[::step, ::step][in_range.reshape(grid.shape[:2])[::step, ::step]]
            else:
                idx = np.flatnonzero(in_range)
                if idx.size > cfg.plane_sample_points:
                    idx = idx[rng.integers(0, idx.size, cfg.plane_sample_points)]
                sample = pts[idx]
            planes = find_support_planes(sample, cfg, rng)
            if not planes:
                log.warning('no support plane found (up=%s, tolerance %.0f deg); clustering '
                            'everything in range', cfg.up, cfg.up_tolerance_deg)
        timings['plane'] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        keep = in_range & _keep_above(pts, planes, cfg) if planes else in_range
        timings['filter'] = (time.perf_counter() - t0) * 1e3

        if organised:
            h, w = cloud.height, cloud.width
            grid = pts.reshape(h, w, 3)
            sub = np.ascontiguousarray(grid[::s, ::s])
            sub_keep = keep.reshape(h, w)[::s, ::s]
            sub_valid = in_range.reshape(h, w)[::s, ::s]
            sub_labels = _organized_labels(sub, sub_keep, sub_valid, cfg, s, timings)
            t0 = time.perf_counter()
            if s == 1:
                labels = sub_labels.reshape(-1).astype(np.int32)
                labels[~keep] = -1
            else:
                labels = _upsample_labels(sub_labels, pts, keep, h, w, s,
                                          cfg.cluster_tolerance * s)
            timings['upsample'] = (time.perf_counter() - t0) * 1e3
        else:
            idx = np.flatnonzero(keep)
            if idx.size:
                labels[idx] = _voxel_labels(pts[idx].astype(np.float64), cfg, timings)

        t0 = time.perf_counter()
        labels = _absorb_fragments(pts, labels, keep, cfg)
        if cfg.merge_containers and planes:
            labels = _merge_parts(pts, labels, planes[0], cfg)
        timings['merge'] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        labels, clusters = self._finish(cloud, labels, planes)
        timings['clusters'] = (time.perf_counter() - t0) * 1e3
        timings['total'] = (time.perf_counter() - t_all) * 1e3
        return Segmentation(labels, clusters, planes, timings)

    def _finish(self, cloud: Cloud, labels: np.ndarray,
                planes: list[np.ndarray]) -> tuple[np.ndarray, list[Cluster]]:
        """Size filters, consecutive ids (largest first) and cluster geometry."""
        cfg = self.config
        out = np.full(len(labels), -1, dtype=np.int32)
        groups = _label_groups(labels)
        if not groups:
            return out, []
        plane = planes[0] if planes else None
        clusters = []
        for g in groups:
            if len(g) < cfg.min_cluster_points:
                break  # sorted by size
            if cfg.max_cluster_points and len(g) > cfg.max_cluster_points:
                continue
            p = cloud.points[g]
            box = oriented_box(p, plane)
            size = float(box.extent.max())
            if size < cfg.min_cluster_size or size > cfg.max_cluster_size:
                continue
            cid = len(clusters)
            out[g] = cid
            clusters.append(Cluster(
                id=cid, indices=g.astype(np.int64), points=np.ascontiguousarray(p),
                colors=None if cloud.colors is None else cloud.colors[g],
                centroid=p.mean(axis=0, dtype=np.float64), box=box))
        return out, clusters


def segment(cloud: Cloud, config: SegmentationConfig | None = None) -> Segmentation:
    """One-shot segmentation of a cloud (see :class:`Segmenter`)."""
    return Segmenter(config)(cloud)


# ------------------------------------------------------------------ evaluation

def match_instances(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5,
                    part_fraction: float = 0.2) -> dict:
    """Compare per-point cluster labels with per-point ground-truth instance ids.

    ``pred``: cluster id per point (-1 = none); ``gt``: instance id per point (< 0 = no
    object). A ground-truth object is *matched* when one cluster has IoU >= threshold
    with it. It is *over-segmented* when two or more clusters each lie mostly (>= 50%)
    inside it and each hold >= ``part_fraction`` of it; a cluster is *under-segmenting*
    when it holds >= ``part_fraction`` of two or more objects.
    """
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction has {pred.size} labels, ground truth {gt.size}')
    gt_ids, gt_idx = np.unique(np.where(gt >= 0, gt, -1), return_inverse=True)
    pr_ids, pr_idx = np.unique(np.where(pred >= 0, pred, -1), return_inverse=True)
    table = np.bincount(gt_idx * pr_ids.size + pr_idx,
                        minlength=gt_ids.size * pr_ids.size).reshape(gt_ids.size, pr_ids.size)
    g_obj = gt_ids >= 0
    p_obj = pr_ids >= 0
    inter = table[g_obj][:, p_obj].astype(np.float64)
    g_size = table[g_obj].sum(axis=1).astype(np.float64)
    p_size = table[:, p_obj].sum(axis=0).astype(np.float64)
    union = g_size[:, None] + p_size[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(g_obj.sum())
    mostly_inside = inter >= 0.5 * p_size[None, :]
    big_part = inter >= part_fraction * g_size[:, None]
    over = int(((mostly_inside & big_part).sum(axis=1) >= 2).sum())
    under = int((big_part.sum(axis=0) >= 2).sum()) if inter.size else 0
    return {
        'objects': int(g_obj.sum()),
        'clusters': int(p_obj.sum()),
        'matched': int((best >= iou_threshold).sum()),
        'mean_iou': float(best.mean()) if best.size else 0.0,
        'best_iou': {int(i): round(float(b), 4) for i, b in zip(gt_ids[g_obj], best)},
        'over_segmented': over,
        'under_segmented': under,
    }


def mosd_ground_truth(label: np.ndarray, parts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """mOSD ``label`` field -> (instance id per point, -1 = none; table mask).

    Objects are ``label // 10`` for labels >= 20 (``parts=True``: the label itself,
    i.e. disjoint visible parts of an occluded object count separately); 1-9 is table.
    """
    label = np.asarray(label).astype(np.int64)
    inst = np.where(label >= 20, label if parts else label // 10, -1)
    return inst, (label >= 1) & (label <= 9)
