# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Tabletop scenes and their organised depth frames, with per-pixel ground truth.

Segmentation, tracking and the node need whole scenes, not single objects:
a table (or floor) with several objects placed without interpenetration,
some touching, some stacked, all at random yaw, seen by a virtual depth
camera from where a robot would stand. Rendering casts one ray per pixel
with Open3D's RaycastingScene (built once per scene and reused across camera
poses), then applies the camera's sensor model; every pixel keeps the id of
the surface its ray truly hits, which is the instance ground truth.

Frames: the table frame has z up with the table top at z = 0; the camera
frame is the optical frame (x right, y down, z forward).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import numpy as np

from p3d_perception.training.synthetic.camera import (
    FRAME_ID, CameraModel, apply_depth_model, fast_noise, get_camera, orbit_pose, pixel_directions,
    rotate)
from p3d_perception.training.synthetic.catalogue import (
    CATEGORIES, ObjectMesh, box, make_distractor, make_object)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PlacedObject:
    """An object instance in a scene; ``pose`` maps object to table coordinates."""

    id: int                 # instance id, 1..K
    category: str           # 'unknown' for distractors
    mesh: ObjectMesh
    pose: np.ndarray        # (4, 4) T_table_object
    support: int = 0        # id of the object it stands on, 0 = the table

    @property
    def size(self) -> np.ndarray:
        return self.mesh.size


@dataclasses.dataclass
class Scene:
    """A support surface and the objects on it; renderable from any pose."""

    objects: list[PlacedObject]
    support: str                    # 'table' or 'floor'
    table_size: tuple[float, float]  # (x, y) extent of the support top, m
    table_color: np.ndarray         # (3,) uint8
    floor_color: np.ndarray         # (3,) uint8
    floor_z: float                  # floor height below the table top (m, <= 0)
    seed: int | None = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def categories(self) -> list[str]:
        return [o.category for o in self.objects]

    def centre(self) -> np.ndarray:
        """Where a camera should look: the middle of the objects (or the table)."""
        if not self.objects:
            return np.zeros(3)
        c = np.array([o.pose[:3, 3] for o in self.objects]).mean(0)
        c[2] = 0.05
        return c

    def raycasting(self):
        """(RaycastingScene, instance id per geometry, colour table, colour offsets)."""
        if 'rc' in self._cache:
            return self._cache['rc']
        import open3d as o3d
        rc = o3d.t.geometry.RaycastingScene()
        inst, colours, offsets = [], [], [0]

        def add(v, t, inst_id, tri_col):
            tm = o3d.t.geometry.TriangleMesh()
            tm.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(v, np.float32))
            tm.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(t, np.int32))
            gid = rc.add_triangles(tm)
            assert gid == len(inst)
            inst.append(inst_id)
            colours.append(np.broadcast_to(tri_col, (len(t), 3)))
            offsets.append(offsets[-1] + len(t))

        tx, ty = self.table_size
        if self.support == 'table':
            v, t = box(tx, ty, 0.03, -0.03)
            add(v, t, 0, self.table_color)
            # legs make the space under the table less empty for a low camera
            for sx in (-1, 1):
                for sy in (-1, 1):
                    v, t = box(0.05, 0.05, -self.floor_z - 0.03 - 0.002, self.floor_z + 0.001)
                    add(v + [sx * (tx / 2 - 0.05), sy * (ty / 2 - 0.05), 0], t, 0,
                        self.table_color)
            v, t = box(8.0, 8.0, 0.02, self.floor_z - 0.02)
            add(v, t, 0, self.floor_color)
        else:
            v, t = box(8.0, 8.0, 0.02, -0.02)
            add(v, t, 0, self.floor_color)
        for o in self.objects:
            add(o.mesh.transformed(o.pose), o.mesh.triangles, o.id, o.mesh.triangle_colors)
        self._cache['rc'] = (rc, np.asarray(inst, np.int32),
                             np.vstack(colours).astype(np.float32),
                             np.asarray(offsets, np.int64))
        return self._cache['rc']


@dataclasses.dataclass
class Frame:
    """One organised depth frame with ground truth, as the camera driver sends it."""

    depth: np.ndarray           # (H, W) float32 m, 0 = missing
    points: np.ndarray          # (H*W, 3) float32 optical frame, NaN where missing
    colors: np.ndarray | None   # (H*W, 3) uint8
    instance: np.ndarray        # (H*W,) int32, 0 = table/background, 1..K objects
    objects: list[dict]         # {id, category, pose (4x4, camera frame), size (3,)}
    K: np.ndarray               # (3, 3)
    width: int
    height: int
    T_camera_table: np.ndarray  # (4, 4) maps table coordinates into the camera frame
    frame_id: str = FRAME_ID
    stamp_ns: int = 0
    camera: str = ''

    @property
    def T_table_camera(self) -> np.ndarray:  # noqa: N802
        return np.linalg.inv(self.T_camera_table)

    def valid(self) -> np.ndarray:
        return self.depth.reshape(-1) > 0


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if rng_or_seed is None or isinstance(rng_or_seed, (int, np.integer)):
        return np.random.default_rng(rng_or_seed)
    raise TypeError(f'expected a seed (int) or numpy Generator, got {type(rng_or_seed).__name__}')


def _yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = x, y, z
    return T


def _hull(mesh: ObjectMesh) -> np.ndarray:
    """Convex hull (k, 2) of the object's xy outline, in its own frame (cached)."""
    h = mesh.__dict__.get('_hull')
    if h is None:
        from scipy.spatial import ConvexHull
        xy = mesh.vertices[:, :2]
        h = xy[ConvexHull(xy).vertices]
        mesh.__dict__['_hull'] = h
    return h


def _footprint(mesh: ObjectMesh, T: np.ndarray) -> np.ndarray:
    """The object's convex xy outline under pose T (table frame)."""
    return _hull(mesh) @ T[:2, :2].T + T[:2, 3]


def _overlap(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    """Separating-axis test for two convex polygons, grown by ``margin``."""
    for poly in (a, b):
        e = np.roll(poly, -1, axis=0) - poly
        n = np.column_stack([-e[:, 1], e[:, 0]])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        pa, pb = a @ n.T, b @ n.T
        sep = (pa.max(0) + margin <= pb.min(0)) | (pb.max(0) + margin <= pa.min(0))
        if sep.any():
            return False
    return True


def _support_top(o: PlacedObject) -> tuple[float, float, float] | None:
    """(z of the surface, half x, half y) an object can carry, in its own frame."""
    s = o.mesh.size
    if o.category in ('book', 'cereal box'):
        return float(s[2]), s[0] / 2 - 0.01, s[1] / 2 - 0.01
    if o.category == 'plate':
        return 0.008 + 0.001, s[0] * 0.22, s[1] * 0.22
    if o.category == 'laptop' and s[2] < 0.05:   # closed
        return float(s[2]), s[0] / 2 - 0.02, s[1] / 2 - 0.02
    if o.category == 'basket':                   # inside, on its floor
        return 0.06 * float(s[2]) + 0.001, s[0] * 0.42 - 0.01, s[1] * 0.42 - 0.01
    return None


def generate_scene(rng_or_seed=None, *, categories: Sequence[str] | None = None,
                   n_objects: tuple[int, int] | int = (1, 15), clutter: bool = True,
                   support: str = 'table', distractors: tuple[int, int] | None = None,
                   touch_prob: float = 0.3, stack_prob: float = 0.25,
                   min_gap: float | None = None,
                   table_size: tuple[float, float] | None = None) -> Scene:
    """A random tabletop scene.

    ``clutter=False`` keeps every object at least ``min_gap`` (default 6 cm)
    from the others with no stacking and no distractors: the easy case for
    segmentation checks. With clutter, objects may touch (``touch_prob``) or
    stand on books/plates/boxes (``stack_prob``) and 0-2 unlabelled distractor
    shapes (category 'unknown') are added.
    """
    rng = _rng(rng_or_seed)
    seed = rng_or_seed if isinstance(rng_or_seed, (int, np.integer)) else None
    cats = tuple(CATEGORIES if categories is None else categories)
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise ValueError(f'unknown or no categories {bad}; known: {", ".join(CATEGORIES)}')
    if support not in ('table', 'floor'):
        raise ValueError(f"support must be 'table' or 'floor', got {support!r}")
    lo_n, hi_n = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 0 <= lo_n <= hi_n:
        raise ValueError(f'n_objects must be a count or a (min, max) range, got {n_objects}')
    if table_size is None:
        table_size = ((float(rng.uniform(0.9, 1.6)), float(rng.uniform(0.6, 1.0)))
                      if support == 'table' else (2.0, 2.0))
    gap = (0.06 if min_gap is None else min_gap) if not clutter else (
        0.01 if min_gap is None else min_gap)
    n = int(rng.integers(lo_n, hi_n + 1))
    if distractors is None:
        distractors = (0, 2) if clutter else (0, 0)
    n_dis = int(rng.integers(distractors[0], distractors[1] + 1))
    tx, ty = table_size
    wood = np.array([[150, 110, 70], [190, 160, 120], [230, 230, 225], [90, 90, 95],
                     [120, 80, 50]])[rng.integers(5)]
    table_col = np.clip(wood + rng.normal(0, 10, 3), 0, 255)
    floor_col = np.clip(np.array([110, 105, 100]) + rng.normal(0, 20, 3), 0, 255)
    placed: list[PlacedObject] = []
    feet: list[np.ndarray] = []     # footprints of objects standing on the table
    specs = [(str(c), False) for c in rng.choice(cats, n)] + [('unknown', True)] * n_dis
    # things that can carry others go down first, so stacking has somewhere to go
    carriers_first = {'book', 'plate', 'cereal box', 'laptop', 'basket'}
    order = sorted(rng.permutation(len(specs)), key=lambda i: specs[i][0] not in carriers_first)
    for idx in order:
        cat, is_dis = specs[idx]
        mesh = make_distractor(rng) if is_dis else make_object(cat, rng)
        pose, sup = None, 0
        # stack on something flat?
        if clutter and not is_dis and rng.random() < stack_prob:
            carriers = [(o, _support_top(o)) for o in placed if o.support == 0]
            carriers = [(o, st) for o, st in carriers if st is not None]
            rng.shuffle(carriers)
            for o, (z, hx, hy) in carriers:
                for _ in range(8):
                    yaw = rng.uniform(0, 2 * np.pi)
                    local = _yaw_pose(rng.uniform(-hx, hx), rng.uniform(-hy, hy), z, yaw)
                    fp = _footprint(mesh, local)
                    if np.all(np.abs(fp[:, 0]) <= hx) and np.all(np.abs(fp[:, 1]) <= hy):
                        riders = [p for p in placed if p.support == o.id]
                        cand = o.pose @ local
                        if all(not _overlap(_footprint(mesh, cand), _footprint(p.mesh, p.pose),
                                            0.005) for p in riders):
                            pose, sup = cand, o.id
                            break
                if pose is not None:
                    break
        if pose is None:
            touch = clutter and feet and rng.random() < touch_prob
            for attempt in range(60):
                yaw = rng.uniform(0, 2 * np.pi)
                if touch and attempt < 20:
                    # slide toward a neighbour until just before contact
                    j = int(rng.integers(len(feet)))
                    c0 = feet[j].mean(0)
                    ang = rng.uniform(0, 2 * np.pi)
                    dirv = np.array([math.cos(ang), math.sin(ang)])
                    near, far = 0.0, 0.6
                    fp_far = _footprint(mesh, _yaw_pose(*(c0 + far * dirv), 0.0, yaw))
                    if any(_overlap(fp_far, f, 0.0) for f in feet):
                        continue
                    for _ in range(14):
                        mid = (near + far) / 2
                        fp = _footprint(mesh, _yaw_pose(*(c0 + mid * dirv), 0.0, yaw))
                        if _overlap(fp, feet[j], 0.002):
                            near = mid
                        else:
                            far = mid
                    xy = c0 + far * dirv
                else:
                    xy = np.array([rng.uniform(-tx / 2, tx / 2), rng.uniform(-ty / 2, ty / 2)])
                cand = _yaw_pose(xy[0], xy[1], 0.0, yaw)
                fp = _footprint(mesh, cand)
                if np.any(np.abs(fp[:, 0]) > tx / 2 - 0.03) or \
                        np.any(np.abs(fp[:, 1]) > ty / 2 - 0.03):
                    continue
                margin = 0.0015 if (touch and attempt < 20) else gap
                if any(_overlap(fp, f, margin) for f in feet):
                    continue
                pose = cand
                break
        if pose is None:
            log.debug('no room for a %s; skipped', cat)
            continue
        obj = PlacedObject(len(placed) + 1, cat, mesh, pose, sup)
        placed.append(obj)
        if sup == 0:
            feet.append(_footprint(mesh, pose))
    floor_z = -float(rng.uniform(0.7, 0.78)) if support == 'table' else 0.0
    return Scene(placed, support, (float(tx), float(ty)), table_col.astype(np.uint8),
                 floor_col.astype(np.uint8), floor_z, None if seed is None else int(seed))


def sample_camera_pose(scene: Scene, rng: np.random.Generator, *,
                       distance: tuple[float, float] = (0.6, 1.6),
                       elevation: tuple[float, float] = (25.0, 65.0)) -> np.ndarray:
    """T_table_camera of a camera looking down at the scene from a robot's height."""
    target = scene.centre() + np.r_[rng.normal(0, 0.05, 2), 0.0]
    return orbit_pose(target, float(rng.uniform(*distance)), float(rng.uniform(*elevation)),
                      float(rng.uniform(0, 360)), roll_deg=float(rng.normal(0, 2.0)))


def camera_trajectory(scene: Scene, n_frames: int, rng_or_seed=None, *,
                      distance: tuple[float, float] = (0.7, 1.5),
                      elevation: tuple[float, float] = (30.0, 60.0),
                      speed_deg: float = 2.0) -> list[np.ndarray]:
    """Poses of a slowly moving camera (a robot's head panning around the table)."""
    rng = _rng(rng_or_seed)
    target = scene.centre() + np.r_[rng.normal(0, 0.03, 2), 0.0]
    d = float(rng.uniform(*distance))
    el = float(rng.uniform(*elevation))
    az = float(rng.uniform(0, 360))
    daz = speed_deg * (1 if rng.random() < 0.5 else -1)
    poses = []
    for i in range(n_frames):
        wob = math.sin(i * 0.3)
        poses.append(orbit_pose(target, d * (1 + 0.03 * wob), el + 2.0 * wob, az + daz * i))
    return poses


_DIRS_CACHE: dict = {}


def _dirs(cam: CameraModel) -> np.ndarray:
    key = (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
    d = _DIRS_CACHE.get(key)
    if d is None:
        d = pixel_directions(cam).reshape(-1, 3)
        _DIRS_CACHE.clear()
        _DIRS_CACHE[key] = d
    return d


def render(scene: Scene, camera: CameraModel | str = 'd435', rng_or_seed=None, *,
           pose: np.ndarray | None = None, colour: bool = True, noise: bool = True,
           stamp_ns: int = 0) -> Frame:
    """One organised frame of ``scene``; ``pose`` is T_table_camera (random if None)."""
    import open3d as o3d
    cam = get_camera(camera)
    rng = _rng(rng_or_seed)
    if pose is None:
        pose = sample_camera_pose(scene, rng)
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError('pose must be a finite 4x4 matrix (T_table_camera)')
    rc, inst_of, tri_col, col_off = scene.raycasting()
    dirs_c = _dirs(cam)
    R = pose[:3, :3].astype(np.float32)
    eye = pose[:3, 3].astype(np.float32)
    dw = rotate(dirs_c, R)
    rays = np.empty((len(dw), 6), np.float32)
    rays[:, :3] = eye
    rays[:, 3:] = dw
    hit = rc.cast_rays(o3d.core.Tensor(rays))
    t = hit['t_hit'].numpy()
    gid = hit['geometry_ids'].numpy()
    hitm = np.isfinite(t)
    g = np.where(hitm, gid, 0).astype(np.int64)
    instance = np.where(hitm, inst_of[g], 0).astype(np.int32)
    nrm = hit['primitive_normals'].numpy()
    inv_len = 1.0 / np.sqrt(np.einsum('ij,ij->i', dw, dw))
    cos = np.abs(np.einsum('ij,ij->i', nrm, dw)) * inv_len
    shadow = None
    H, W = cam.height, cam.width
    if noise and cam.stereo_shadow and cam.depth_model == 'stereo':
        # pixels the projector / second imager cannot see (one side of every object)
        # only pixels within the widest possible shadow of an object need a ray
        emitter = eye + R[:, 0] * np.float32(cam.baseline)
        obj = (instance > 0).reshape(H, W)
        reach = int(math.ceil(cam.fx * cam.baseline / max(cam.min_depth, 0.1))) + 2
        cs = np.zeros((H, W + 2 * reach + 1), np.int32)
        np.cumsum(obj, axis=1, out=cs[:, reach + 1:W + reach + 1])
        cs[:, W + reach + 1:] = cs[:, W + reach:W + reach + 1]
        near = (cs[:, 2 * reach + 1:] - cs[:, :W]) > 0
        idx = np.flatnonzero(hitm & near.reshape(-1))
        p = eye + dw[idx] * t[idx, None]
        srays = np.empty((len(idx), 6), np.float32)
        srays[:, :3] = p
        srays[:, 3:] = emitter - p
        occ = rc.test_occlusions(o3d.core.Tensor(srays), tnear=1e-3, tfar=0.999).numpy()
        shadow = np.zeros(H * W, bool)
        shadow[idx] = occ
        shadow = shadow.reshape(H, W)
    depth = apply_depth_model(cam, np.where(hitm, t, np.inf).reshape(H, W), cos.reshape(H, W),
                              rng, noise=noise, shadow=shadow)
    pts = dirs_c * depth.reshape(-1, 1)
    pts[depth.reshape(-1) <= 0] = np.nan
    colors = None
    if colour:
        prim = hit['primitive_ids'].numpy()
        alb = tri_col[col_off[g] + np.where(hitm, prim, 0).astype(np.int64)]
        # table/floor texture: faint wood grain on the table top
        bg = hitm & (g == 0)      # geometry 0 is the table top (or the floor)
        if bg.any():
            pw = eye + dw[bg] * t[bg, None]
            grain = 0.95 + 0.05 * np.sin(pw[:, 0] * 90.0 + 2.0 * np.sin(pw[:, 1] * 5.0))
            alb[bg] *= grain[:, None]
        n_up = np.abs(nrm[:, 2])
        light = 0.35 + 0.4 * cos + 0.3 * n_up
        c = alb * light[:, None] * rng.normal(1.0, 0.04, 3).astype(np.float32)
        c += fast_noise(rng, c.shape) * np.float32(cam.colour_noise)
        c[~hitm] = 0
        colors = np.clip(c, 0, 255).astype(np.uint8)
    T_ct = np.linalg.inv(pose)
    objects = [dict(id=o.id, category=o.category, pose=T_ct @ o.pose,
                    size=o.size.astype(np.float64), support=o.support)
               for o in scene.objects]
    return Frame(depth=depth, points=pts.astype(np.float32, copy=False), colors=colors,
                 instance=instance, objects=objects, K=cam.K, width=W, height=H,
                 T_camera_table=T_ct, frame_id=FRAME_ID, stamp_ns=int(stamp_ns),
                 camera=cam.name)
