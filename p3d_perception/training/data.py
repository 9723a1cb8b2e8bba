# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Training data: synthetic single-object views (cached as .npz) -> augmented, grouped batches.

Views come from the synthetic world (``p3d_perception.training.synthetic``) or from
any ``.npz`` written by ``save_object_views`` (e.g. clusters extracted from bags).
Batches are grouped in the main process with the same batched FPS/kNN as inference
so training and deployment see identical tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from p3d_perception.config import ConfigError
from p3d_perception.model.config import GroupingConfig
from p3d_perception.model.grouping import PreparedBatch, prepare_batch
from p3d_perception.training.augment import AugmentConfig, augment_view, render_points_image

LOG = logging.getLogger(__name__)

#: module providing CATEGORIES / generate_object_views / save_ / load_object_views
SYNTHETIC_MODULE = 'p3d_perception.training.synthetic'


def synthetic():
    return importlib.import_module(SYNTHETIC_MODULE)


@dataclass
class DataConfig:
    """Which views to train on and which categories to hold out (open-vocabulary test)."""

    views: str = ''                       # .npz of object views; '' = generate synthetic
    categories: list[str] = field(default_factory=list)   # [] = all synthetic categories
    held_out: list[str] = field(default_factory=list)     # never trained; zero-shot test
    views_per_category: int = 200
    seed: int = 0
    #: a camera preset, or a list of them: each synthetic instance is seen by one,
    #: drawn per instance (one model for several sensors)
    camera: str | list[str] = 'd435'
    #: share of each category's instances made from scanned/modelled meshes (the
    #: training-time asset wheels, requirements-train.txt) instead of procedural ones
    mesh_share: float = 0.0
    mesh_sources: list[str] = field(default_factory=list)   # [] = every set
    poses: bool = False                   # objects also lie on a side / stand upside down
    val_views_per_category: int = 20
    val_seed: int = 1000
    cache_dir: str = '.p3d_cache/views'   # generated views cached here ('' = no cache)

    def validate(self) -> None:
        from p3d_perception.training.synthetic.camera import CAMERA_PRESETS
        if self.views_per_category < 1:
            raise ConfigError('data.views_per_category must be >= 1')
        cams = self.camera if isinstance(self.camera, list) else [self.camera]
        if not cams or not all(isinstance(c, str) for c in cams):
            raise ConfigError('data.camera must be a camera preset name or a list of them')
        unknown = [c for c in cams if c not in CAMERA_PRESETS]
        if unknown:
            raise ConfigError(f'data.camera: unknown presets {unknown}; known: '
                              f'{", ".join(CAMERA_PRESETS)}')
        if not 0.0 <= self.mesh_share <= 1.0:
            raise ConfigError('data.mesh_share must be in [0, 1]')

    def view_options(self) -> dict:
        """Arguments of :func:`generate_views` beyond categories, count and seed."""
        return dict(camera=self.camera, cache_dir=self.cache_dir, mesh_share=self.mesh_share,
                    mesh_sources=list(self.mesh_sources), poses=self.poses)


def all_categories(cfg: DataConfig) -> list[str]:
    if cfg.categories:
        return list(cfg.categories)
    if cfg.views:
        return list(load_views_file(cfg.views).categories)
    return list(synthetic().CATEGORIES)


def split_categories(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(trained, held-out) category names; held-out must exist in the vocabulary."""
    cats = all_categories(cfg)
    unknown = [c for c in cfg.held_out if c not in cats]
    if unknown:
        raise ConfigError(f'data.held_out names not in the categories: {unknown}')
    train = [c for c in cats if c not in cfg.held_out]
    if len(train) < 2:
        raise ConfigError('need at least two training categories')
    return train, list(cfg.held_out)


def load_views_file(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'object views file not found: {path}')
    return synthetic().load_object_views(path)


def generate_views(categories: Sequence[str], views_per_category: int, seed: int,
                   camera: str | Sequence[str] = 'd435', cache_dir: str = '', *,
                   mesh_share: float = 0.0, mesh_sources: Sequence[str] = (),
                   poses: bool = False):
    """Synthetic views, cached on disk by their generation arguments."""
    syn = synthetic()
    camera = list(camera) if isinstance(camera, (list, tuple)) else camera
    parts = [list(categories), views_per_category, seed, camera,
             getattr(syn, '__version__', '')]
    if mesh_share > 0 or poses:     # keys of plain views stay as they were
        parts += [float(mesh_share), sorted(mesh_sources), bool(poses)]
    key = json.dumps(parts)
    cache = None
    if cache_dir:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f'views_{seed}_{views_per_category}_{digest}.npz'
        if cache.is_file():
            LOG.info('using cached views %s', cache)
            return syn.load_object_views(cache)
    LOG.info('generating %d views x %d categories (seed %d, camera %s)',
             views_per_category, len(categories), seed, camera)
    extra = {}
    if mesh_share > 0 or poses:     # the synthetic module may be a stand-in without them
        extra = dict(mesh_share=mesh_share, mesh_sources=list(mesh_sources) or None,
                     poses=poses)
    views = syn.generate_object_views(list(categories), views_per_category, seed,
                                      camera=camera, **extra)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + '.tmp.npz')
        syn.save_object_views(tmp, views)
        tmp.replace(cache)
    return views


def mesh_info(cfg: DataConfig, views) -> dict:
    """What the model card records about mesh-asset instances and poses.

    The share, how many views came from meshes, which meshes, and the licence of
    every set used: a model trained on third-party meshes must say whose they are.
    """
    if cfg.mesh_share <= 0 and not cfg.poses:
        return {}
    info: dict = {'mesh_share': cfg.mesh_share, 'poses': cfg.poses}
    source = getattr(views, 'source', None)
    if cfg.mesh_share > 0 and source is not None:
        from p3d_perception.training.synthetic.meshes import ASSETS
        used = {str(s) for s in source if s}
        by_name = {a.name: a for a in ASSETS}
        info['mesh_views'] = int(sum(1 for s in source if s))
        info['mesh_assets'] = sorted(used)
        info['mesh_licences'] = {a.source: a.licence for n in sorted(used)
                                 if (a := by_name.get(n)) is not None}
    return info


def view_arrays(views, class_names: Sequence[str]) -> tuple[list, list, np.ndarray]:
    """Split ObjectViews into per-view arrays; labels remapped to ``class_names`` (-1 = other)."""
    index = {c: i for i, c in enumerate(class_names)}
    remap = np.array([index.get(c, -1) for c in views.categories], np.int64)
    pts, cols = [], []
    off = views.offsets
    for i in range(len(views)):
        pts.append(views.points[off[i]:off[i + 1]])
        cols.append(views.colors[off[i]:off[i + 1]] if views.colors is not None else None)
    return pts, cols, remap[np.asarray(views.labels)]


@dataclass
class Batch:
    inputs: PreparedBatch
    labels: torch.Tensor
    images: torch.Tensor | None = None


class ViewBatcher:
    """Shuffled, augmented, grouped mini-batches over a list of views."""

    def __init__(self, points: list, colors: list, labels: np.ndarray, grouping: GroupingConfig,
                 augment: AugmentConfig | None, batch_size: int, seed: int,
                 image_size: int = 0):
        keep = np.flatnonzero(labels >= 0)
        self.points = [points[i] for i in keep]
        self.colors = [colors[i] for i in keep]
        self.labels = labels[keep]
        self.grouping = grouping
        self.augment = augment
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def batches(self, shuffle: bool = True) -> Iterator[Batch]:
        order = self.rng.permutation(len(self.labels)) if shuffle else np.arange(len(self.labels))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            pts, cols = [], []
            for i in idx:
                p, c = self.points[i], self.colors[i]
                if self.augment is not None:
                    p, c = augment_view(p, c, self.augment, self.rng)
                pts.append(p)
                cols.append(c)
            images = None
            if self.image_size:
                up = self.augment.up_axis if self.augment is not None else 'z'
                images = torch.from_numpy(np.stack([
                    render_points_image(p, c, self.image_size, up) for p, c in zip(pts, cols)]))
            yield Batch(prepare_batch(pts, cols, self.grouping, self.rng),
                        torch.from_numpy(self.labels[idx]), images)
