# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Unorganised clouds: the same cuts on a voxel graph with k-d tree neighbours."""

from __future__ import annotations

import time

import numpy as np

from p3d_perception.segmentation.config import SegmentationConfig


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
