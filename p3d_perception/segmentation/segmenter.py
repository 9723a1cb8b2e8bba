# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The ``Segmenter`` facade: runs the stages in order on one cloud.

Stages, one module each: ``support`` (range, crop, support plane), ``grid`` or
``voxels`` (components cut at depth gaps and creases), ``merge`` (shards,
container insides, handles), ``boxes`` (cluster geometry).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from p3d_perception.cloud import Cloud, CloudError
from p3d_perception.segmentation.boxes import OrientedBox, oriented_box
from p3d_perception.segmentation.config import SegmentationConfig
from p3d_perception.segmentation.geometry import _label_groups, _mean_rows
from p3d_perception.segmentation.grid import (
    _organized_labels, _upsample_labels, compile_kernels)
from p3d_perception.segmentation.merge import (
    _absorb_fragments, _merge_occluded, _merge_parts)
from p3d_perception.segmentation.projection import (
    compile_kernels as compile_projection, labels_from_grid, project_single_view)
from p3d_perception.segmentation.support import (
    _keep_above, _range_mask, find_support_planes, plane_sample)
from p3d_perception.segmentation.voxels import _voxel_labels

log = logging.getLogger(__name__)


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


class Segmenter:
    """Callable segmentation with a fixed config (reuse one per camera stream)."""

    def __init__(self, config: SegmentationConfig | None = None) -> None:
        self.config = config or SegmentationConfig()
        self.config.validate()
        compile_kernels()
        compile_projection()

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
            sample = plane_sample(cloud, in_range, cfg, rng, organised)
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
            # colour only feeds the colour cut: no per-frame copy when it is off
            sub_col = (None if cloud.colors is None or not cfg.colour_cut
                       else np.ascontiguousarray(cloud.colors.reshape(h, w, 3)[::s, ::s]))
            sub_labels = _organized_labels(sub, sub_keep, sub_valid, cfg, s, timings, sub_col)
            t0 = time.perf_counter()
            if s == 1:
                labels = sub_labels.reshape(-1).astype(np.int32)
                labels[~keep] = -1
            else:
                labels = _upsample_labels(sub_labels, pts, keep, h, w, s,
                                          cfg.cluster_tolerance * s)
            timings['upsample'] = (time.perf_counter() - t0) * 1e3
        else:
            t0 = time.perf_counter()
            view = (project_single_view(pts, in_range, cfg.viewpoint, focus=keep)
                    if cfg.project_unorganised and keep.any() else None)
            timings['project'] = (time.perf_counter() - t0) * 1e3
            if view is not None:
                flat_keep = np.zeros(view.height * view.width, dtype=bool)
                shown = view.owner >= 0
                flat_keep[shown] = keep[view.owner[shown]]
                grid_col = None
                if cloud.colors is not None and cfg.colour_cut:
                    grid_col = np.zeros((view.height * view.width, 3), dtype=np.uint8)
                    grid_col[shown] = cloud.colors[view.owner[shown]]
                    grid_col = grid_col.reshape(view.height, view.width, 3)
                grid_labels = _organized_labels(
                    view.grid, flat_keep.reshape(view.height, view.width),
                    shown.reshape(view.height, view.width),
                    replace(cfg, viewpoint=(0.0, 0.0, 0.0)), 1, timings, grid_col)
                t0 = time.perf_counter()
                labels = labels_from_grid(view, grid_labels, pts, keep,
                                          cfg.cluster_tolerance, cfg.viewpoint)
                timings['upsample'] = (time.perf_counter() - t0) * 1e3
            else:
                idx = np.flatnonzero(keep)
                if idx.size:
                    labels[idx] = _voxel_labels(pts[idx].astype(np.float64), cfg, timings)

        t0 = time.perf_counter()
        labels = _absorb_fragments(pts, labels, keep, cfg)
        # sorted into groups once; a merge step that joins nothing passes them on
        groups = _label_groups(labels)
        kept: dict = {}
        if cfg.merge_containers and planes:
            labels, groups, kept = _merge_parts(pts, labels, groups, planes[0], cfg)
        if cfg.merge_occluded and planes:
            labels, groups = _merge_occluded(pts, labels, groups, planes[0], cfg, kept)
        timings['merge'] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        labels, clusters = self._finish(cloud, labels, groups, planes)
        timings['clusters'] = (time.perf_counter() - t0) * 1e3
        timings['total'] = (time.perf_counter() - t_all) * 1e3
        return Segmentation(labels, clusters, planes, timings)

    def _finish(self, cloud: Cloud, labels: np.ndarray, groups: list[np.ndarray],
                planes: list[np.ndarray]) -> tuple[np.ndarray, list[Cluster]]:
        """Size filters, consecutive ids (largest first) and cluster geometry."""
        cfg = self.config
        out = np.full(len(labels), -1, dtype=np.int32)
        if not groups:
            return out, []
        plane = planes[0] if planes else None
        clusters = []
        for g in groups:
            if len(g) < cfg.min_cluster_points:
                break  # sorted by size
            if cfg.max_cluster_points and len(g) > cfg.max_cluster_points:
                continue
            p = np.take(cloud.points, g, axis=0)
            box = oriented_box(p, plane)
            size = float(box.extent.max())
            if size < cfg.min_cluster_size or size > cfg.max_cluster_size:
                continue
            cid = len(clusters)
            out[g] = cid
            clusters.append(Cluster(
                id=cid, indices=g.astype(np.int64), points=np.ascontiguousarray(p),
                colors=None if cloud.colors is None else np.take(cloud.colors, g, axis=0),
                centroid=_mean_rows(p), box=box))
        return out, clusters


def segment(cloud: Cloud, config: SegmentationConfig | None = None) -> Segmentation:
    """One-shot segmentation of a cloud (see :class:`Segmenter`)."""
    return Segmenter(config)(cloud)
