# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Cluster -> fixed-size normalised cloud -> patches (FPS centres + kNN), outside the network.

Farthest-point sampling is a sequential loop that blocks ONNX export and, done
per cloud, is the CPU bottleneck of the whole recogniser. So it lives here, is
batched over all clusters of a frame (one ``(B, N)`` distance update per centre),
and the exported encoder only ever sees dense ``(B, G, K, C)`` patch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import torch

from p3d_perception.model.config import GroupingConfig


class InputError(ValueError):
    """A cluster given to the encoder is unusable (empty, wrong shape, non-finite)."""


@dataclass
class PreparedBatch:
    """Network inputs for a batch of clusters (all float32 tensors)."""

    patches: torch.Tensor   # (B, G, K, 6): xyz relative to centre (unit-sphere units), rgb 0..1
    centers: torch.Tensor   # (B, G, 3) on the unit sphere
    scale: torch.Tensor     # (B, 1) log10 of the metric radius (metres)

    def to(self, device) -> 'PreparedBatch':
        return PreparedBatch(self.patches.to(device), self.centers.to(device),
                             self.scale.to(device))


def _check_cloud(i: int, pts: np.ndarray, col: np.ndarray | None) -> tuple[np.ndarray, ...]:
    pts = np.asarray(pts)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f'cluster {i}: points must have shape (N, 3), got {pts.shape}')
    pts = pts.astype(np.float32, copy=False)
    finite = np.isfinite(pts).all(axis=1)
    if col is not None:
        col = np.asarray(col)
        if col.shape != pts.shape:
            raise InputError(f'cluster {i}: colors must have shape {pts.shape}, got {col.shape}')
    if not finite.all():
        pts = pts[finite]
        col = col[finite] if col is not None else None
    if len(pts) == 0:
        raise InputError(f'cluster {i}: no finite points')
    return pts, col


def normalize_clouds(points: Sequence[np.ndarray],
                     colors: Sequence[np.ndarray | None] | None,
                     num_points: int,
                     rng: np.random.Generator | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample every cluster to ``num_points``, centre it and scale it into the unit sphere.

    Returns xyz (B, N, 3), rgb (B, N, 3) in 0..1 (zeros where a cluster has no colour)
    and log10 radius (B,). A fixed default seed keeps inference deterministic.
    """
    if isinstance(points, np.ndarray) and points.ndim == 2:
        points = [points]
    if len(points) == 0:
        raise InputError('no clusters given')
    if colors is None:
        colors = [None] * len(points)
    if len(colors) != len(points):
        raise InputError(f'{len(points)} point arrays but {len(colors)} color arrays')
    rng = rng if rng is not None else np.random.default_rng(0)
    b = len(points)
    xyz = np.empty((b, num_points, 3), np.float32)
    rgb = np.zeros((b, num_points, 3), np.float32)
    radius = np.empty(b, np.float32)
    for i, (pts, col) in enumerate(zip(points, colors)):
        pts, col = _check_cloud(i, pts, col)
        n = len(pts)
        idx = rng.choice(n, num_points, replace=n < num_points)
        p = pts[idx]
        centre = p.mean(axis=0)
        p = p - centre
        r = float(np.sqrt((p * p).sum(axis=1).max()))
        r = max(r, 1e-4)
        xyz[i] = p / r
        radius[i] = r
        if col is not None:
            c = col[idx]
            rgb[i] = c / 255.0 if c.dtype == np.uint8 or c.max(initial=0) > 1.0 else c
    return xyz, rgb, np.log10(radius)


def farthest_point_sample(xyz: torch.Tensor, num: int) -> torch.Tensor:
    """Batched FPS: (B, N, 3) -> (B, num) indices; starts at the point farthest from the mean."""
    if xyz.device.type == 'cpu' and not xyz.requires_grad:
        return torch.from_numpy(_fps_cpu(xyz.numpy(), num))
    return _fps_torch(xyz, num)


def _fps_torch(xyz: torch.Tensor, num: int) -> torch.Tensor:
    b, n, _ = xyz.shape
    arange = torch.arange(b, device=xyz.device)
    idx = torch.empty(b, num, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float('inf'), device=xyz.device, dtype=xyz.dtype)
    farthest = ((xyz - xyz.mean(dim=1, keepdim=True)) ** 2).sum(-1).argmax(-1)
    for i in range(num):
        idx[:, i] = farthest
        centre = xyz[arange, farthest].unsqueeze(1)
        dist = torch.minimum(dist, ((xyz - centre) ** 2).sum(-1))
        farthest = dist.argmax(-1)
    return idx


def _fps_cpu(xyz: np.ndarray, num: int) -> np.ndarray:
    """The same FPS on the CPU, compiled: one pass over a cloud's points per centre.

    In torch (or numpy) each of the ``num`` steps is a handful of small array
    operations whose dispatch costs more than the arithmetic. The compiled loop does
    the torch loop's float32 operations in the same order, so the indices are the same.
    """
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    # the start (the point farthest from the mean) stays in numpy: it is one pass, and
    # numpy's float32 mean is what the torch path's mean rounds like
    start = ((xyz - xyz.mean(axis=1, keepdims=True)) ** 2).sum(-1).argmax(-1)
    return _fps_kernel(xyz, start.astype(np.int64), num)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the FPS kernel now, not on the first frame."""
    _fps_kernel(np.zeros((1, 2, 3), np.float32), np.zeros(1, np.int64), 1)


@numba.njit(cache=True, nogil=True)
def _fps_kernel(xyz, start, num):  # pragma: no cover - compiled; tested against _fps_torch
    b, n = xyz.shape[0], xyz.shape[1]
    idx = np.empty((b, num), np.int64)
    dist = np.empty(n, np.float32)
    for c in range(b):
        pts = xyz[c]
        for j in range(n):
            dist[j] = np.inf
        far = start[c]
        for i in range(num):
            idx[c, i] = far
            cx, cy, cz = pts[far, 0], pts[far, 1], pts[far, 2]
            best = np.float32(-1.0)
            nxt = 0
            for j in range(n):
                dx = pts[j, 0] - cx
                dy = pts[j, 1] - cy
                dz = pts[j, 2] - cz
                d = dx * dx + dy * dy + dz * dz
                if d < dist[j]:
                    dist[j] = d
                if dist[j] > best:
                    best = dist[j]
                    nxt = j
            far = nxt
    return idx


def group(xyz: torch.Tensor, feats: torch.Tensor | None, num_groups: int,
          group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres + kNN patches: returns patches (B, G, K, 3 + C) and centres (B, G, 3)."""
    b = xyz.shape[0]
    centre_idx = farthest_point_sample(xyz, num_groups)
    arange = torch.arange(b, device=xyz.device)[:, None]
    centers = xyz[arange, centre_idx]                                  # (B, G, 3)
    d = torch.cdist(centers, xyz)                                      # (B, G, N)
    knn = d.topk(group_size, dim=-1, largest=False).indices            # (B, G, K)
    flat = knn.reshape(b, -1)
    neigh = xyz[arange, flat].reshape(b, num_groups, group_size, 3) - centers.unsqueeze(2)
    if feats is not None:
        f = feats[arange, flat].reshape(b, num_groups, group_size, feats.shape[-1])
        neigh = torch.cat([neigh, f], dim=-1)
    return neigh, centers


@torch.no_grad()
def prepare_batch(points: Sequence[np.ndarray], colors: Sequence[np.ndarray | None] | None,
                  cfg: GroupingConfig, rng: np.random.Generator | None = None,
                  device: str | torch.device = 'cpu') -> PreparedBatch:
    """Clusters (any sizes) -> dense network inputs, all in one batched pass."""
    xyz, rgb, logr = normalize_clouds(points, colors, cfg.num_points, rng)
    t_xyz = torch.from_numpy(xyz).to(device)
    t_rgb = torch.from_numpy(rgb).to(device)
    patches, centers = group(t_xyz, t_rgb, cfg.num_groups, cfg.group_size)
    scale = torch.from_numpy(logr).to(device).unsqueeze(1)
    return PreparedBatch(patches.contiguous(), centers.contiguous(), scale)
