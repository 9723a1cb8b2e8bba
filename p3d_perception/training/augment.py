# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Augmentations that make clean synthetic views look like real depth-camera clusters.

Real, partial, noisy scans are where CLIP-aligned point encoders fail, so training
sees more damage than the generator already adds: extra occlusion cuts, point
dropout, metric depth jitter along the viewing ray, flying pixels at silhouettes,
yaw about the gravity axis, scale changes, colour jitter and colour dropped with
p=0.5 so one model serves xyz-only sensors. Real objects' colours are not the
synthetic palette, so colour can also be cast per channel, permuted or reduced
to grey: what survives is shading and print contrast, not hue. All metric
(before normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3d_perception.config import ConfigError

_AXES = {'x': 0, 'y': 1, 'z': 2, '-x': 0, '-y': 1, '-z': 2}


@dataclass
class AugmentConfig:
    """Probabilities and ranges of every augmentation (metres, radians)."""

    up_axis: str = 'z'              # gravity axis of the training views' frame
    #: direction the camera looks in the views' frame (synthetic 'gravity' frame: +x, down
    #: ~40 deg); all zeros = camera at the origin (optical frame)
    view_direction: tuple[float, float, float] = (0.77, 0.0, -0.64)
    yaw: float = 3.1416             # max |yaw| about up_axis
    tilt: float = 0.08              # max |rotation| about the other axes
    scale_range: tuple[float, float] = (0.85, 1.15)
    anisotropic: float = 0.08       # extra per-axis scale jitter
    occlusion_prob: float = 0.35    # cut by a random half-plane (keeps 50-90 %)
    dropout_range: tuple[float, float] = (0.0, 0.5)
    jitter_sigma: float = 0.003     # m, isotropic
    ray_noise_sigma: float = 0.004  # m, along the sensor ray (camera at the origin)
    flying_pixel_prob: float = 0.5  # chance a view gets flying pixels
    flying_pixel_fraction: float = 0.03
    outlier_fraction: float = 0.01  # stray points inside the box
    color_drop_prob: float = 0.5
    color_jitter: float = 0.12      # brightness/contrast jitter (fraction)
    #: per-channel gain jitter (fraction): a colour cast, as between a camera's white
    #: balance and another's, or the synthetic palette and real print
    channel_jitter: float = 0.0
    greyscale_prob: float = 0.0     # colour kept but reduced to its luminance
    channel_shuffle_prob: float = 0.0   # R, G, B permuted: hue cannot be relied on
    min_points: int = 24

    def validate(self) -> None:
        if self.up_axis not in _AXES:
            raise ConfigError(f'augment.up_axis must be one of {sorted(_AXES)}')
        for name in ('color_drop_prob', 'greyscale_prob', 'channel_shuffle_prob'):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f'augment.{name} must be in [0, 1]')
        if not 0 <= self.channel_jitter < 1:
            raise ConfigError('augment.channel_jitter must be in [0, 1)')


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def augment_view(points: np.ndarray, colors: np.ndarray | None, cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One randomly damaged copy of a view; colours may come back as None (dropped)."""
    pts = points.astype(np.float64)
    col = None if colors is None else colors.astype(np.float32)
    n = len(pts)
    centre = pts.mean(axis=0)
    # occlusion cut: random half-plane through a point near the centre
    if n > 4 * cfg.min_points and rng.random() < cfg.occlusion_prob:
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal) + 1e-9
        d = (pts - centre) @ normal
        thr = np.quantile(d, rng.uniform(0.5, 0.9))
        keep = d <= thr
        pts, col = pts[keep], None if col is None else col[keep]
    # point dropout
    keep_frac = 1.0 - rng.uniform(*cfg.dropout_range)
    m = max(cfg.min_points, int(len(pts) * keep_frac))
    if m < len(pts):
        idx = rng.choice(len(pts), m, replace=False)
        pts, col = pts[idx], None if col is None else col[idx]
    # sensor noise: along the ray from the camera (origin) and isotropic
    vd = np.asarray(cfg.view_direction, np.float64)
    if np.linalg.norm(vd) > 0:
        rays = np.broadcast_to(vd / np.linalg.norm(vd), pts.shape)
    else:
        rays = pts / (np.linalg.norm(pts, axis=1, keepdims=True) + 1e-9)
    pts = pts + rays * rng.normal(0, cfg.ray_noise_sigma, (len(pts), 1))
    pts = pts + rng.normal(0, cfg.jitter_sigma, pts.shape)
    # flying pixels: points smeared along the ray behind/in front of the silhouette
    if rng.random() < cfg.flying_pixel_prob:
        k = max(1, int(len(pts) * cfg.flying_pixel_fraction))
        src = rng.choice(len(pts), k)
        extra = pts[src] + rays[src] * rng.uniform(-0.08, 0.15, (k, 1))
        pts = np.concatenate([pts, extra])
        if col is not None:
            col = np.concatenate([col, col[src]])
    if cfg.outlier_fraction > 0:
        k = int(len(pts) * cfg.outlier_fraction)
        if k:
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            pts = np.concatenate([pts, rng.uniform(lo, hi, (k, 3))])
            if col is not None:
                col = np.concatenate([col, col[rng.choice(len(col), k)]])
    # geometry: rotate about the centre (yaw about gravity + small tilt), scale
    up = _AXES[cfg.up_axis]
    r = _rotation(up, rng.uniform(-cfg.yaw, cfg.yaw))
    for ax in range(3):
        if ax != up and cfg.tilt > 0:
            r = _rotation(ax, rng.uniform(-cfg.tilt, cfg.tilt)) @ r
    s = rng.uniform(*cfg.scale_range) * (1 + rng.uniform(-cfg.anisotropic, cfg.anisotropic, 3))
    c = pts.mean(axis=0)
    pts = ((pts - c) @ r.T) * s + c
    # colour: drop with p, else jitter
    if col is not None:
        if rng.random() < cfg.color_drop_prob:
            col = None
        else:
            gain = 1 + rng.uniform(-cfg.color_jitter, cfg.color_jitter)
            bias = rng.uniform(-cfg.color_jitter, cfg.color_jitter) * 255
            col = col * gain + bias + rng.normal(0, 3, col.shape)
            # the extra colour damage draws from the stream only when switched on, so
            # configs without it keep their augmentation sequence
            if cfg.channel_jitter > 0:
                col = col * (1 + rng.uniform(-cfg.channel_jitter, cfg.channel_jitter, 3))
            if cfg.channel_shuffle_prob > 0 and rng.random() < cfg.channel_shuffle_prob:
                col = col[:, rng.permutation(3)]
            if cfg.greyscale_prob > 0 and rng.random() < cfg.greyscale_prob:
                col = np.repeat(col @ np.array([[0.299], [0.587], [0.114]]), 3, axis=1)
            col = np.clip(col, 0, 255).astype(np.uint8)
    return pts.astype(np.float32), col


def render_points_image(points: np.ndarray, colors: np.ndarray | None, size: int,
                        up_axis: str = 'z') -> np.ndarray:
    """A crude orthographic splat (3, size, size) float32 in 0..1 for the image tower (CG3D).

    Looks along the first horizontal axis; colour if present, else shaded by depth.
    """
    up = _AXES[up_axis]
    side, depth_ax = [a for a in range(3) if a != up]
    p = points - points.mean(axis=0)
    r = np.abs(p).max() + 1e-6
    u = ((p[:, side] / r + 1) * 0.5 * (size - 1)).astype(np.int64)
    v = ((1 - (p[:, up] / r + 1) * 0.5) * (size - 1)).astype(np.int64)
    depth = p[:, depth_ax]
    order = np.argsort(-depth)           # far first, near overwrites
    img = np.ones((size, size, 3), np.float32)
    if colors is not None:
        val = colors.astype(np.float32) / 255.0
    else:
        shade = 0.2 + 0.6 * (depth - depth.min()) / (np.ptp(depth) + 1e-6)
        val = np.repeat(shade[:, None], 3, axis=1).astype(np.float32)
    img[v[order], u[order]] = val[order]
    return img.transpose(2, 0, 1)
