# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Single-object partial views: what the encoder sees on a robot, made in bulk.

A recognition model trained on complete, clean shapes meets partial, noisy
clusters at run time. Each view here is the cluster a segmentation stage
would hand over: one object on a table, seen from a random viewpoint
(0.5-2 m, looking down 20-70 deg) through the virtual camera's sensor model,
table points removed by a height threshold (so the object's foot is cut and a
few noisy table points stay), sometimes partly occluded.

Speed comes from batching: a batch of instances sits in one Open3D
raycasting scene (far apart, so no ray meets another instance first), only the
rays in each object's projected bounding box are cast, all in one call, and
the table is intersected analytically instead of being raycast.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from p3d_perception.training.synthetic.camera import (
    CameraModel, apply_depth_model, fast_noise, get_camera, orbit_pose)
from p3d_perception.training.synthetic.catalogue import CATEGORIES, make_object

log = logging.getLogger(__name__)

_SPACING = 100.0  # m between instances in one raycasting scene
_FORMAT_VERSION = 1


@dataclasses.dataclass
class ObjectViews:
    """Many single-object point clouds, concatenated, each with its own size."""

    points: np.ndarray          # (sum N_i, 3) float32
    colors: np.ndarray          # (sum N_i, 3) uint8
    offsets: np.ndarray         # (V + 1,) int64; view i is points[offsets[i]:offsets[i+1]]
    labels: np.ndarray          # (V,) int64 index into categories
    categories: tuple[str, ...]
    instance_seed: np.ndarray   # (V,) int64; make_object(cat, default_rng(seed)) rebuilds it
    distance: np.ndarray | None = None   # (V,) float32 camera distance (m)
    elevation: np.ndarray | None = None  # (V,) float32 camera elevation (deg)
    frame: str = 'gravity'      # 'gravity' (z up, x toward the view) or 'camera' (optical)
    #: (V,) str: '' for a procedural instance (rebuilt from instance_seed), else the name
    #: of the mesh asset it was made from (training.synthetic.meshes)
    source: np.ndarray | None = None
    camera: np.ndarray | None = None     # (V,) str: camera preset of each view

    def __post_init__(self):
        self.offsets = np.asarray(self.offsets, np.int64)
        n = len(self.offsets) - 1
        if n < 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.points) \
                or np.any(np.diff(self.offsets) < 0):
            raise ValueError('ObjectViews: offsets must start at 0, not decrease and end at '
                             f'len(points)={len(self.points)}')
        if len(self.labels) != n or len(self.instance_seed) != n:
            raise ValueError(f'ObjectViews: {n} views but {len(self.labels)} labels and '
                             f'{len(self.instance_seed)} instance seeds')
        if len(self.colors) != len(self.points):
            raise ValueError('ObjectViews: colors and points differ in length')
        self.categories = tuple(self.categories)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def view(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(points (N,3) float32, colors (N,3) uint8, label) of view ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f'view {i} out of range for {len(self)} views')
        i %= len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.points[a:b], self.colors[a:b], int(self.labels[i])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, indices: Iterable[int]) -> 'ObjectViews':
        """A new ObjectViews with the chosen views, same category list."""
        idx = np.asarray(list(indices), np.int64)
        parts = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        sel = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        offs = np.concatenate([[0], np.cumsum(self.counts[idx])]).astype(np.int64)
        pick = (lambda a: None if a is None else a[idx])
        return ObjectViews(self.points[sel], self.colors[sel], offs, self.labels[idx],
                           self.categories, self.instance_seed[idx], pick(self.distance),
                           pick(self.elevation), self.frame, pick(self.source),
                           pick(self.camera))

    @staticmethod
    def concatenate(items: Sequence['ObjectViews']) -> 'ObjectViews':
        """Join several sets that share one category list."""
        if not items:
            raise ValueError('nothing to concatenate')
        cats = items[0].categories
        if any(it.categories != cats or it.frame != items[0].frame for it in items):
            raise ValueError('ObjectViews.concatenate: category lists or frames differ')
        offs = [np.zeros(1, np.int64)]
        base = 0
        for it in items:
            offs.append(it.offsets[1:] + base)
            base += len(it.points)
        opt = (lambda name: None if any(getattr(it, name) is None for it in items)
               else np.concatenate([getattr(it, name) for it in items]))
        return ObjectViews(np.concatenate([it.points for it in items]),
                           np.concatenate([it.colors for it in items]), np.concatenate(offs),
                           np.concatenate([it.labels for it in items]), cats,
                           np.concatenate([it.instance_seed for it in items]),
                           opt('distance'), opt('elevation'), items[0].frame, opt('source'),
                           opt('camera'))


def instance_seed_for(seed: int, category: str, index: int) -> int:
    """Stable per-instance seed: independent of batch size and category order."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(category.encode()),
                                 int(index)])
    return int(ss.generate_state(1, np.uint64)[0] & np.uint64(0x7FFFFFFFFFFFFFFF))


@dataclasses.dataclass
class ViewConfig:
    """How single-object views are taken (defaults follow the robot's situation)."""

    distance: tuple[float, float] = (0.5, 2.0)        # m, camera to object
    elevation: tuple[float, float] = (20.0, 70.0)     # deg, looking down
    views_per_instance: int = 4                       # views sharing one mesh instance
    table_threshold: tuple[float, float] = (0.004, 0.01)  # m, plane-removal distance
    stray_margin: float = 0.02                        # m around the footprint for strays
    occlusion_prob: float = 0.2                       # P(a view is cut by an occluder)
    occlusion_max: float = 0.4                        # most of a view an occluder hides
    min_points: int = 48                              # fewer: view is re-taken closer
    batch_instances: int = 48                         # instances per raycasting scene

    def validate(self):
        if not (0.05 <= self.distance[0] <= self.distance[1]):
            raise ValueError(f'distance range {self.distance} is invalid')
        if not (0.0 < self.elevation[0] <= self.elevation[1] < 90.0):
            raise ValueError(f'elevation range {self.elevation} must lie in (0, 90) deg')
        if self.views_per_instance < 1 or self.batch_instances < 1:
            raise ValueError('views_per_instance and batch_instances must be >= 1')


_BOX = (('upright', 0.45), ('flat', 0.4), ('side', 0.15))
#: how objects of a category rest on a table besides upright: boxes lie flat (largest
#: face down) or on a side, books lie flat (as generated) or stand on an edge or end,
#: open vessels stand upside down, cylinders sometimes lie. Categories not listed
#: always stand as generated. The real scans show all of these.
POSES: dict[str, tuple[tuple[str, float], ...]] = {
    'cereal box': _BOX, 'snack box': _BOX, 'tea box': _BOX,
    'tissue box': (('upright', 0.7), ('flat', 0.2), ('side', 0.1)),
    'drink carton': (('upright', 0.6), ('flat', 0.3), ('side', 0.1)),
    'milk carton': (('upright', 0.7), ('flat', 0.2), ('side', 0.1)),
    'book': (('upright', 0.7), ('side', 0.15), ('end', 0.15)),
    'bowl': (('upright', 0.65), ('upside down', 0.35)),
    'cup': (('upright', 0.8), ('upside down', 0.2)),
    'mug': (('upright', 0.8), ('upside down', 0.2)),
    'plate': (('upright', 0.9), ('upside down', 0.1)),
    'tin': (('upright', 0.85), ('lying', 0.15)),
    'can': (('upright', 0.85), ('lying', 0.15)),
    'bottle': (('upright', 0.8), ('lying', 0.2)),
    'jar': (('upright', 0.9), ('lying', 0.1)),
}


def _axis_to_z(axis: int, rng: np.random.Generator) -> np.ndarray:
    """A rotation taking object axis ``axis`` onto the vertical, either way up."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if axis == 2:
        return np.eye(3) if sign > 0 else np.diag([1.0, -1.0, -1.0])
    if axis == 0:       # x -> +-z about y
        return np.array([[0.0, 0.0, -sign], [0.0, 1.0, 0.0], [sign, 0.0, 0.0]])
    return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -sign], [0.0, sign, 0.0]])   # y -> +-z


def pose_object(mesh, rng: np.random.Generator):
    """``mesh`` resting in one of its category's poses; returns (mesh, pose name).

    'flat' puts the smallest extent vertical, 'side' the middle one, 'end' the
    largest; 'lying' turns the (vertical) axis of a cylinder horizontal;
    'upside down' flips about x. The mesh is re-rested on z = 0, centred in xy.
    """
    from p3d_perception.training.synthetic.catalogue import ObjectMesh
    table = POSES.get(mesh.category)
    if not table:
        return mesh, 'upright'
    names = [n for n, _ in table]
    prob = np.array([q for _, q in table], np.float64)
    name = names[int(rng.choice(len(names), p=prob / prob.sum()))]
    if name == 'upright':
        return mesh, name
    order = np.argsort(mesh.size)          # smallest .. largest extent
    if name == 'upside down':
        R = np.diag([1.0, -1.0, -1.0])
    elif name == 'lying':
        R = _axis_to_z(int(rng.integers(2)), rng)
    else:
        R = _axis_to_z(int(order[{'flat': 0, 'side': 1, 'end': 2}[name]]), rng)
    v = mesh.vertices @ R.T
    lo, hi = v.min(0), v.max(0)
    v -= [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]
    return ObjectMesh(mesh.category, v, mesh.triangles, mesh.vertex_colors,
                      mesh.part_ids), name


def _shade(albedo: np.ndarray, cos_view: np.ndarray, n_up: np.ndarray, cam: CameraModel,
           rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
    """Lambert shading (headlight + overhead light) with sensor colour noise.

    ``albedo`` is (3, N) channel planes: numpy is slow on a last axis of
    length 3, and a view has a few thousand points. Returns (N, 3) uint8.
    """
    light = 0.35 + 0.4 * cos_view + 0.3 * np.clip(n_up, 0.0, 1.0)
    c = albedo * light
    c *= gain.astype(np.float32)[:, None]
    c += fast_noise(rng, c.shape) * np.float32(cam.colour_noise)
    np.clip(c, 0, 255, out=c)
    return np.ascontiguousarray(c.T, dtype=np.uint8)


def _table_albedo(x: np.ndarray, y: np.ndarray, base: np.ndarray, phase: float) -> np.ndarray:
    """Faint wood-grain-like stripes so the table is not a flat colour ((3, N) planes)."""
    g = 0.92 + 0.08 * np.sin(x * 60.0 + 3.0 * np.sin(y * 7.0 + phase))
    return base[:, None] * g


def _triangle_rgba(mesh) -> np.ndarray:
    """Each triangle's colour packed in one uint32 (cached): one cheap gather per point."""
    c = mesh.__dict__.get('_rgba')
    if c is None:
        c = np.zeros((len(mesh.triangles), 4), np.uint8)
        c[:, :3] = mesh.triangle_colors
        c = mesh.__dict__['_rgba'] = c.view(np.uint32)[:, 0]
    return c


def _take_views(batch, cam: CameraModel, cfg: ViewConfig, colour: bool, frame: str,
                n_points: int | None):
    """Render every (mesh, view rng) of a batch; returns per-view results or None."""
    import open3d as o3d
    scene = o3d.t.geometry.RaycastingScene()
    gids = []
    for k, (mesh, _) in enumerate(batch):
        v = (mesh.vertices + [k * _SPACING, 0.0, 0.0]).astype(np.float32)
        tm = o3d.t.geometry.TriangleMesh()
        tm.vertex.positions = o3d.core.Tensor(v)
        tm.triangle.indices = o3d.core.Tensor(mesh.triangles)
        gids.append(scene.add_triangles(tm))
    jobs = []
    start = 0
    for k, (mesh, rngs) in enumerate(batch):
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        # the silhouette's pixel box comes from (a subset of) the vertices: much
        # tighter than the projected bounding box for round or rotated objects
        step = max(1, len(mesh.vertices) // 400)
        corners = mesh.vertices[::step]
        corners = np.vstack([corners, mesh.vertices[np.argmin(mesh.vertices, 0)],
                             mesh.vertices[np.argmax(mesh.vertices, 0)]])
        for rng in rngs:
            for attempt in range(4):
                d_hi = cfg.distance[1] if attempt == 0 else cfg.distance[0] + (
                    cfg.distance[1] - cfg.distance[0]) / (2 ** attempt)
                dist = float(rng.uniform(cfg.distance[0], max(cfg.distance[0], d_hi)))
                el = float(rng.uniform(*cfg.elevation))
                az = float(rng.uniform(0.0, 360.0))
                target = np.array([rng.normal(0, 0.01), rng.normal(0, 0.01),
                                   hi[2] * rng.uniform(0.25, 0.6)])
                T = orbit_pose(target, dist, el, az, roll_deg=float(rng.normal(0.0, 3.0)))
                # image shift: the object is not always at the image centre
                R, eye = T[:3, :3], T[:3, 3]
                pc = (corners - eye) @ R
                if np.any(pc[:, 2] <= 0.05):
                    continue
                u = cam.fx * pc[:, 0] / pc[:, 2] + cam.cx
                vv = cam.fy * pc[:, 1] / pc[:, 2] + cam.cy
                umin, umax, vmin, vmax = float(u.min()), float(u.max()), float(vv.min()), \
                    float(vv.max())
                shift = rng.uniform(-0.3, 0.3, 2) * [cam.width, cam.height]
                # np.clip on scalars, in plain floats
                su = min(max(float(shift[0]), -umin), cam.width - 1 - umax) \
                    if umax - umin < cam.width else 0.0
                sv = min(max(float(shift[1]), -vmin), cam.height - 1 - vmax) \
                    if vmax - vmin < cam.height else 0.0
                u0 = int(max(0, math.floor(umin + su) - 3))
                u1 = int(min(cam.width, math.ceil(umax + su) + 4))
                v0 = int(max(0, math.floor(vmin + sv) - 3))
                v1 = int(min(cam.height, math.ceil(vmax + sv) + 4))
                if u1 - u0 < 4 or v1 - v0 < 4:
                    continue
                # principal point shifted = the camera looked slightly beside the object;
                # camera-frame ray (u, v, 1) per column / row, world ray R @ (u, v, 1)
                ur = (np.arange(u0, u1, dtype=np.float32) - np.float32(cam.cx + su)) \
                    / np.float32(cam.fx)
                vr = (np.arange(v0, v1, dtype=np.float32) - np.float32(cam.cy + sv)) \
                    / np.float32(cam.fy)
                n = (u1 - u0) * (v1 - v0)
                jobs.append(dict(k=k, rng=rng, T=T, dist=dist, el=el, u=ur, v=vr,
                                 shape=(v1 - v0, u1 - u0), sl=(start, start + n),
                                 attempt=attempt, lo=lo, hi=hi))
                start += n
                break
            else:
                jobs.append(None)
    if not start:
        return [None] * len(jobs)
    # all rays in one buffer, written in place (origin, R @ (u, v, 1) per view)
    rays = np.empty((start, 6), np.float32)
    for job in jobs:
        if job is None:
            continue
        a, b = job['sl']
        R32 = job['T'][:3, :3].astype(np.float32)
        o = (job['T'][:3, 3] + [job['k'] * _SPACING, 0.0, 0.0]).astype(np.float32)
        grid = rays[a:b].reshape(*job['shape'], 6)
        ur, vr = job['u'], job['v']
        for j in range(3):
            rays[a:b, j] = o[j]
            np.add((R32[j, 0] * ur)[None, :], (R32[j, 1] * vr + R32[j, 2])[:, None],
                   out=grid[..., 3 + j])
    hit = scene.cast_rays(o3d.core.Tensor.from_numpy(rays))
    t_all = hit['t_hit'].numpy()
    g_all = hit['geometry_ids'].numpy()
    p_all = hit['primitive_ids'].numpy()
    n_all = hit['primitive_normals'].numpy()
    out = []
    for job in jobs:
        if job is None:
            out.append(None)
            continue
        out.append(_finish_view(job, batch[job['k']][0], gids[job['k']], rays, t_all, g_all,
                                p_all, n_all, cam, cfg, colour, frame, n_points))
    return out


def _finish_view(job, mesh, gid, rays, t_all, g_all, p_all, n_all, cam, cfg, colour, frame,
                 n_points):
    """One view from its rays' hits: sensor model, table cut, occlusion, colour.

    Past the sensor model everything works on the valid pixels only (about a
    third of the window), one coordinate at a time: a view costs about as
    much in numpy call overhead as in arithmetic.
    """
    a, b = job['sl']
    h, w = job['shape']
    rng = job['rng']
    T = job['T']
    R, eye = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    t = t_all[a:b]
    obj = g_all[a:b] == gid                 # misses carry an invalid id
    dx, dy, dz = rays[a:b, 3], rays[a:b, 4], rays[a:b, 5]
    # rays that miss the object meet the (infinite) table plane z = 0
    down = dz < -1e-6
    t_tab = -eye[2] / np.where(down, dz, np.float32(-1.0))
    t_tab[~down] = np.inf
    z = np.where(obj, t, t_tab)
    nrm = n_all[a:b]
    cos = np.abs(nrm[:, 0] * dx + nrm[:, 1] * dy + nrm[:, 2] * dz)
    cos = np.where(obj, cos, -dz)
    u, v = job['u'], job['v']
    cos *= (1.0 / np.sqrt(u[None, :] ** 2 + v[:, None] ** 2 + 1.0)).ravel()   # 1 / |ray|
    albedo = None
    if cam.dark_dropout > 0:        # dark print loses returns: the sensor needs the albedo
        albedo = np.full(h * w, 0.45, np.float32)           # the table's wood
        oi = np.flatnonzero(obj)
        rgba = np.take(_triangle_rgba(mesh), p_all[a:b][oi]).view(np.uint8).reshape(-1, 4)
        albedo[oi] = rgba[:, :3].astype(np.float32) @ np.array(
            [0.299, 0.587, 0.114], np.float32) / np.float32(255.0)
        albedo = albedo.reshape(h, w)
    depth = apply_depth_model(cam, z.reshape(h, w), cos.reshape(h, w), rng,
                              albedo=albedo).reshape(-1)
    vi = np.flatnonzero(depth > 0)
    row, col = np.divmod(vi, w)
    pz = depth[vi]
    px, py = u[col] * pz, v[row] * pz                      # camera frame
    wx, wy, wz = (R[i, 0] * px + R[i, 1] * py + R[i, 2] * pz + eye[i] for i in range(3))
    thr = float(rng.uniform(*cfg.table_threshold))
    thr = min(thr + float(cam.depth_sigma(job['dist'])), 0.4 * float(job['hi'][2]))
    lo, hi = job['lo'], job['hi']
    m = cfg.stray_margin
    near = (wx > lo[0] - m) & (wx < hi[0] + m) & (wy > lo[1] - m) & (wy < hi[1] + m)
    keep = (wz > thr) & (obj[vi] | near)
    if cfg.occlusion_prob > 0 and rng.random() < cfg.occlusion_prob and keep.any():
        # an occluder in front: a random straight edge hides up to occlusion_max of the view
        ang = rng.uniform(0, 2 * np.pi)
        s = col * math.cos(ang) + row * math.sin(ang)
        frac = rng.uniform(0.05, cfg.occlusion_max)
        # np.quantile(s[keep], frac) (linear), from a partial sort: 3x faster
        sk = s[keep]
        q = frac * (len(sk) - 1)
        k0 = int(math.floor(q))
        k1 = min(k0 + 1, len(sk) - 1)
        part = np.partition(sk, (k0, k1))
        cut = part[k0] + (part[k1] - part[k0]) * (q - k0)
        keep &= s > cut
    j = np.flatnonzero(keep)
    if len(j) < cfg.min_points:
        return dict(n=len(j), attempt=job['attempt'])
    if n_points is not None and len(j) > n_points:
        j = np.sort(rng.choice(j, n_points, replace=False))
    idx = vi[j]
    if colour:
        gain = rng.normal(1.0, 0.05, 3)
        ob = obj[idx]
        alb = np.empty((3, len(idx)), np.float32)      # channel planes
        rgba = np.take(_triangle_rgba(mesh), p_all[a:b][idx[ob]]).view(np.uint8)
        for c in range(3):
            alb[c, ob] = rgba[c::4]
        tab = ~ob                               # strays: table albedo, for them only
        alb[:, tab] = _table_albedo(wx[j[tab]], wy[j[tab]],
                                    np.array([150.0, 120.0, 90.0], np.float32), 0.0)
        n_up = np.where(ob, nrm[idx, 2], np.float32(1.0))
        cols = _shade(alb, cos[idx], n_up, cam, rng, gain)
    else:
        cols = np.zeros((len(idx), 3), np.uint8)
    if frame == 'camera':
        pts = np.stack([px[j], py[j], pz[j]], 1)
    else:
        # gravity frame: z up, x = viewing direction on the table, origin under the object
        f = R[:, 2]
        yaw = math.atan2(f[1], f[0])
        c, s = math.cos(yaw), math.sin(yaw)
        pts = np.stack([c * wx[j] + s * wy[j], c * wy[j] - s * wx[j], wz[j]], 1)
    return dict(points=pts.astype(np.float32), colors=cols, dist=job['dist'], el=job['el'])


def generate_object_views(categories: Sequence[str] | None = None, views_per_category: int = 8,
                          seed: int = 0, *, camera: CameraModel | str | Sequence = 'd435',
                          n_points: int | None = None, colour: bool = True,
                          frame: str = 'gravity', config: ViewConfig | None = None,
                          progress: bool = False, mesh_share: float = 0.0,
                          mesh_sources: Sequence[str] | None = None,
                          poses: bool = False) -> ObjectViews:
    """Partial, noisy single-object views, ``views_per_category`` of each category.

    Deterministic for ``seed`` (and independent of the order of ``categories``
    for each category's instances). ``n_points`` caps a view's point count by
    random subsampling; views keep their own counts otherwise.

    ``camera`` may be a list: each instance is then seen by one of them, drawn
    per instance, so one training set covers several sensors. ``mesh_share``
    of the instances of every category with mesh assets (``meshes.ASSETS``,
    from ``mesh_sources`` or all sets) are scanned/modelled meshes instead of
    procedural ones; ``poses`` lets objects lie on their side or stand upside
    down as :data:`POSES` says. With the defaults the views are those of
    earlier versions, seed for seed.
    """
    cats = tuple(CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f'unknown categories {unknown}; known: {", ".join(CATEGORIES)}')
    if len(set(cats)) != len(cats):
        raise ValueError('categories must not repeat')
    if views_per_category < 1:
        raise ValueError('views_per_category must be >= 1')
    if frame not in ('gravity', 'camera'):
        raise ValueError(f"frame must be 'gravity' or 'camera', got {frame!r}")
    if not 0.0 <= mesh_share <= 1.0:
        raise ValueError(f'mesh_share must be in [0, 1], got {mesh_share}')
    cfg = config or ViewConfig()
    cfg.validate()
    cams = [get_camera(c) for c in (
        camera if isinstance(camera, (list, tuple)) else [camera])]
    if not cams:
        raise ValueError('camera: need at least one camera')
    assets: dict[str, tuple] = {}
    if mesh_share > 0:
        from p3d_perception.training.synthetic import meshes
        for asset in meshes.available_assets(mesh_sources, cats):
            assets[asset.category] = assets.get(asset.category, ()) + (asset,)
    vpi = cfg.views_per_instance
    # work list: (label, category, instance index, views wanted from it)
    work = []
    for ci, c in enumerate(cats):
        n_inst = math.ceil(views_per_category / vpi)
        for k in range(n_inst):
            work.append((ci, c, k, min(vpi, views_per_category - k * vpi)))
    pts, cols, counts, labels, seeds, dists, els, srcs, camn = [], [], [], [], [], [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cats) * views_per_category, unit='view', desc='views')
    failed = 0
    for b0 in range(0, len(work), cfg.batch_instances):
        chunk = work[b0:b0 + cfg.batch_instances]
        batch, meta, inst_cam = [], [], []
        for ci, c, k, nv in chunk:
            s = instance_seed_for(seed, c, k)
            # instance-level choices come from their own stream, so with one camera, no
            # meshes and no poses nothing else draws from it and old views stay as they were
            irng = np.random.default_rng([s, 0x5EED])
            cam = cams[int(irng.integers(len(cams)))] if len(cams) > 1 else cams[0]
            src = ''
            if c in assets and irng.random() < mesh_share:
                from p3d_perception.training.synthetic.meshes import make_mesh_object
                asset = assets[c][int(irng.integers(len(assets[c])))]
                mesh = make_mesh_object(asset, irng)
                src = asset.name
            else:
                mesh = make_object(c, np.random.default_rng(s))
            if poses:
                mesh, _ = pose_object(mesh, irng)
            rngs = [np.random.default_rng([s, v]) for v in range(nv)]
            meta += [(ci, s, len(batch), src, cam)] * nv
            batch.append((mesh, rngs))
            inst_cam.append(cam)
        # one raycasting scene per camera in the chunk; results back in work order
        results: list = [None] * len(meta)
        for cam in {id(c): c for c in inst_cam}.values():
            ks = [k for k, c in enumerate(inst_cam) if c is cam]
            sub = _take_views([batch[k] for k in ks], cam, cfg, colour, frame, n_points)
            pos = [i for i, m in enumerate(meta) if m[4] is cam]
            for i, r in zip(pos, sub):
                results[i] = r
        # views that came out too small are re-taken closer, one retry round per view
        for i, r in enumerate(results):
            tries = 0
            cam = meta[i][4]
            while (r is None or 'points' not in r) and tries < 3:
                tries += 1
                k = meta[i][2]
                rng = np.random.default_rng([meta[i][1], 1000 + 10 * i + tries])
                near_cfg = dataclasses.replace(
                    cfg, distance=(cfg.distance[0], cfg.distance[0] + (
                        cfg.distance[1] - cfg.distance[0]) / (2 ** tries)),
                    occlusion_prob=0.0)
                r = _take_views([(batch[k][0], [rng])], cam, near_cfg, colour, frame,
                                n_points)[0]
            if r is None or 'points' not in r:
                failed += 1
                continue
            ci, s, _, src, _ = meta[i]
            pts.append(r['points'])
            cols.append(r['colors'])
            counts.append(len(r['points']))
            labels.append(ci)
            seeds.append(s)
            dists.append(r['dist'])
            els.append(r['el'])
            srcs.append(src)
            camn.append(cam.name)
        if bar is not None:
            bar.update(len(results))
    if bar is not None:
        bar.close()
    if failed:
        log.warning('%d views had fewer than %d points and were dropped', failed,
                    cfg.min_points)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ObjectViews(
        np.concatenate(pts) if pts else np.zeros((0, 3), np.float32),
        np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8), offsets,
        np.asarray(labels, np.int64), cats, np.asarray(seeds, np.int64),
        np.asarray(dists, np.float32), np.asarray(els, np.float32), frame,
        np.asarray(srcs, dtype='U64'), np.asarray(camn, dtype='U32'))


def save_object_views(path: str | Path, views: ObjectViews) -> Path:
    """Write a compact .npz (no pickles): float16 would lose mm detail, so float32."""
    path = Path(path)
    if path.suffix != '.npz':
        path = path.with_suffix(path.suffix + '.npz') if path.suffix else path.with_suffix('.npz')
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(
        format_version=np.int64(_FORMAT_VERSION), points=views.points.astype(np.float32),
        colors=views.colors.astype(np.uint8), offsets=views.offsets.astype(np.int64),
        labels=views.labels.astype(np.int64), categories=np.asarray(views.categories, dtype='U'),
        instance_seed=views.instance_seed.astype(np.int64), frame=np.asarray(views.frame))
    if views.distance is not None:
        arrays['distance'] = views.distance.astype(np.float32)
    if views.elevation is not None:
        arrays['elevation'] = views.elevation.astype(np.float32)
    for name in ('source', 'camera'):
        if getattr(views, name) is not None:
            arrays[name] = np.asarray(getattr(views, name), dtype='U')
    np.savez_compressed(path, **arrays)
    return path


def load_object_views(path: str | Path) -> ObjectViews:
    """Read a file written by :func:`save_object_views` (``allow_pickle=False``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'object views file not found: {path}')
    with path.open('rb') as f:
        if f.read(4) != b'PK\x03\x04':
            raise ValueError(f'{path}: cannot read object views (not an .npz archive)')
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {'points', 'colors', 'offsets', 'labels', 'categories',
                       'instance_seed'} - set(z.files)
            if missing:
                raise ValueError(f'{path}: not an object-views file (missing {sorted(missing)})')
            version = int(z['format_version']) if 'format_version' in z.files else 1
            if version > _FORMAT_VERSION:
                raise ValueError(f'{path}: format version {version} is newer than this code')
            return ObjectViews(
                z['points'], z['colors'], z['offsets'], z['labels'],
                tuple(str(c) for c in z['categories']), z['instance_seed'],
                z['distance'] if 'distance' in z.files else None,
                z['elevation'] if 'elevation' in z.files else None,
                str(z['frame']) if 'frame' in z.files else 'gravity',
                z['source'] if 'source' in z.files else None,
                z['camera'] if 'camera' in z.files else None)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f'{path}: cannot read object views ({exc})') from exc
