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
    FRAME_ID, CameraModel, apply_depth_model, fast_noise, get_camera, mark_outlines, orbit_pose,
    pixel_directions)
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
        """(RaycastingScene, instance id per geometry, colour table, colour offsets).

        The lookups are laid out for one cheap gather per pixel in ``render``:
        instance ids and colour offsets have one extra entry (index = number of
        geometries, T triangles) for rays that hit nothing, and the colour table
        holds one RGBA uint32 per triangle plus two black entries those rays
        reach: T + 1 + primitive 0 (misses found analytically) and, as uint32
        sums wrap, T + 1 + (2**32 - 1) = T (misses Open3D reports).

        ``render`` also needs the table top and floor as axis-aligned slabs
        (their tops are intersected analytically) and the convex hull of every
        other part (only rays inside their outlines are cast); both are kept in
        the cache.
        """
        if 'rc' in self._cache:
            return self._cache['rc']
        import open3d as o3d
        rc = o3d.t.geometry.RaycastingScene()
        inst, colours, offsets, slabs, parts = [], [], [0], [], []

        def add(v, t, inst_id, tri_col, slab=False):
            tm = o3d.t.geometry.TriangleMesh()
            tm.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(v, np.float32))
            tm.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(t, np.int32))
            gid = rc.add_triangles(tm)
            assert gid == len(inst)
            inst.append(inst_id)
            colours.append(np.broadcast_to(tri_col, (len(t), 3)))
            offsets.append(offsets[-1] + len(t))
            if slab:    # (geometry, top z, bottom z, x range, y range)
                lo, hi = np.min(v, 0), np.max(v, 0)
                slabs.append((gid, hi[2], lo[2], lo[0], hi[0], lo[1], hi[1]))
            else:
                parts.append(_hull_points(v))

        tx, ty = self.table_size
        if self.support == 'table':
            v, t = box(tx, ty, 0.03, -0.03)
            add(v, t, 0, self.table_color, slab=True)
            # legs make the space under the table less empty for a low camera
            for sx in (-1, 1):
                for sy in (-1, 1):
                    v, t = box(0.05, 0.05, -self.floor_z - 0.03 - 0.002, self.floor_z + 0.001)
                    add(v + [sx * (tx / 2 - 0.05), sy * (ty / 2 - 0.05), 0], t, 0,
                        self.table_color)
            v, t = box(8.0, 8.0, 0.02, self.floor_z - 0.02)
            add(v, t, 0, self.floor_color, slab=True)
        else:
            v, t = box(8.0, 8.0, 0.02, -0.02)
            add(v, t, 0, self.floor_color, slab=True)
        for o in self.objects:
            add(o.mesh.transformed(o.pose), o.mesh.triangles, o.id, o.mesh.triangle_colors)
        rgba = np.zeros((offsets[-1] + 2, 4), np.uint8)
        rgba[:-2, :3] = np.clip(np.rint(np.vstack(colours)), 0, 255)
        offsets[-1] += 1        # misses: see the docstring
        self._cache['bounds'] = (sorted(slabs, key=lambda s: -s[1]), parts)
        self._cache['rc'] = (rc, np.asarray(inst + [0], np.int32), rgba.view(np.uint32)[:, 0],
                             np.asarray(offsets, np.uint32))
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


def _hull_points(v: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of points ``v`` (all of them if it is degenerate)."""
    from scipy.spatial import ConvexHull, QhullError
    v = np.asarray(v, np.float64)
    try:
        return v[ConvexHull(v).vertices]
    except (QhullError, ValueError):
        return v


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


def solid(parts: Sequence[tuple[np.ndarray, np.ndarray]], colour, category: str = 'unknown',
          colours: Sequence | None = None) -> ObjectMesh:
    """One object from (vertices, triangles) parts, e.g. ``catalogue.box`` slabs.

    Tests and the segmentation benchmarks need objects whose shape they state
    exactly (a flat box, a tray, a shelf board); the catalogue's random
    proportions are for training. ``colours`` gives each part its own colour
    (a printed box with a differently coloured face).
    """
    vs, ts, cs, ids, off = [], [], [], [], 0
    for k, (v, t) in enumerate(parts):
        vs.append(np.asarray(v, np.float64))
        ts.append(np.asarray(t, np.int32) + off)
        c = colour if colours is None else colours[k]
        cs.append(np.tile(np.asarray(c, np.float64), (len(v), 1)))
        ids.append(np.full(len(t), k, np.int32))
        off += len(v)
    return ObjectMesh(category, np.vstack(vs), np.vstack(ts),
                      np.clip(np.vstack(cs), 0, 255).astype(np.uint8), np.concatenate(ids))


def arranged_scene(objects: Sequence[tuple[ObjectMesh, np.ndarray]], *,
                   table_size: tuple[float, float] = (1.2, 0.8), floor_z: float = -0.75,
                   table_colour=(150, 110, 70), support: str = 'table') -> Scene:
    """A scene from meshes and their T_table_object poses, ids 1..K in the given order."""
    placed = [PlacedObject(i + 1, m.category, m, np.asarray(T, np.float64))
              for i, (m, T) in enumerate(objects)]
    return Scene(placed, support, (float(table_size[0]), float(table_size[1])),
                 np.asarray(table_colour, np.uint8), np.array([110, 105, 100], np.uint8),
                 float(floor_z) if support == 'table' else 0.0)


def yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """T_table_object of an object at (x, y, z) turned by ``yaw`` radians about z."""
    return _yaw_pose(x, y, z, yaw)


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


_RAYS_CACHE: dict = {}


def _camera_rays(cam: CameraModel) -> dict:
    """Per-camera constants of ``render``, computed once instead of every frame."""
    key = (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline, cam.min_depth)
    c = _RAYS_CACHE.get(key)
    if c is None:
        d = pixel_directions(cam)
        u, v = d[0, :, 0].copy(), d[:, 0, 1].copy()
        # rotation keeps lengths: 1/|ray| is the same in every pose
        inv_len = 1.0 / np.sqrt(u[None, :] ** 2 + v[:, None] ** 2 + 1.0)
        c = dict(u=u, v=v, inv_len=inv_len.astype(np.float32).ravel(),
                 # columns beyond an object where its stereo shadow can fall
                 reach=int(math.ceil(cam.fx * cam.baseline / max(cam.min_depth, 0.1))) + 2)
        _RAYS_CACHE.clear()
        _RAYS_CACHE[key] = c
    return c


def _part_pixels(parts: list, cam: CameraModel, R: np.ndarray, eye: np.ndarray,
                 need: np.ndarray) -> bool:
    """Mark the pixels whose rays may meet a part (convex hull vertices) in ``need``.

    Returns False, marking nothing, when a vertex is not in front of the
    camera: the image is then unbounded.
    """
    if not parts:
        return True
    pc = (np.concatenate(parts) - eye) @ R.astype(np.float64)   # ~1000 points: 1 BLAS thread
    z = pc[:, 2]
    if np.any(z <= 1e-3):
        return False
    q = np.column_stack([cam.fx * pc[:, 0] / z + cam.cx, cam.fy * pc[:, 1] / z + cam.cy])
    mark_outlines(need, q, np.cumsum([0] + [len(p) for p in parts[:-1]]))
    return True


def _trace(scene: Scene, cam: CameraModel, R: np.ndarray, eye: np.ndarray,
           colour: bool) -> dict:
    """First hit of every pixel's ray: depth t, geometry g, |cos incidence| (and more).

    Open3D costs ~100 ns a ray, most of a frame. But most rays see the table
    top or the floor, flat slabs: a ray that reaches a slab's top inside its
    outline, clear of everything else (legs and objects, whose convex hulls
    are projected into the image), hits that top, which takes a division. Only
    the remaining rays, typically a sixth, are cast; a camera below the top
    slab or behind a part's hull vertex casts all. Ray directions are (3, H*W)
    world-frame components with camera z = 1, so t is depth.
    """
    rc, inst_of, _, _ = scene.raycasting()
    slabs, parts = scene._cache['bounds']
    cr = _camera_rays(cam)
    H, W = cam.height, cam.width
    N = H * W
    miss = len(inst_of) - 1
    dw = np.empty((3, H, W), np.float32)
    for j in range(3):     # R @ (u, v, 1): one broadcast sum per component
        np.add((R[j, 0] * cr['u'])[None, :], (R[j, 1] * cr['v'] + R[j, 2])[:, None],
               out=dw[j])
    dw = dw.reshape(3, N)
    t = np.full(N, np.inf, np.float32)
    g = np.full(N, miss, np.uint32)
    cos = np.abs(dw[2]) * cr['inv_len']             # slab tops: normal = z
    need = np.zeros((H, W), bool)                   # rays Open3D has to cast
    if not (_part_pixels(parts, cam, R, eye, need) and eye[2] > slabs[0][1] + 1e-3):
        need[:] = True
    need = need.reshape(-1)
    if not need.all():
        down = dw[2] < 0
        inv = np.float32(1.0) / np.minimum(dw[2], np.float32(-1e-12))   # up rays: gated
        sx, sy = dw[0] * inv, dw[1] * inv         # xy step per metre of descent
        free = down & ~need                       # rays still looking for their hit
        m = np.float32(1e-3)                      # rims are left to Open3D
        for k, (gid, ztop, zbot, x0, x1, y0, y1) in enumerate(slabs):
            a = np.float32(ztop - eye[2])
            px = sx * a
            px += eye[0]
            py = sy * a
            py += eye[1]
            top = (px > x0 + m) & (px < x1 - m)
            top &= py > y0 + m
            top &= py < y1 - m
            top &= free
            np.copyto(t, inv * a, where=top)
            np.copyto(g, np.uint32(gid), where=top)
            free &= ~top
            if k == len(slabs) - 1:     # beyond the lowest outline: its side or nothing
                need |= free
                break
            # rays through the slab's sides (the band between its top and bottom)
            b = np.float32(zbot - eye[2])
            qx = sx * b
            qx += eye[0]
            qy = sy * b
            qy += eye[1]
            side = np.maximum(px, qx) > x0 - m
            side &= np.minimum(px, qx) < x1 + m
            side &= np.maximum(py, qy) > y0 - m
            side &= np.minimum(py, qy) < y1 + m
            side &= free
            need |= side
            free &= ~side
    out = dict(t=t, g=g, cos=cos, dw=dw)
    if colour:
        out['prim'] = np.zeros(N, np.uint32)
        out['n_up'] = np.ones(N, np.float32)
    idx = np.flatnonzero(need)
    if len(idx):
        import open3d as o3d
        rays = np.empty((len(idx), 6), np.float32)
        for j in range(3):
            rays[:, j] = eye[j]
            rays[:, 3 + j] = dw[j, idx]
        hit = rc.cast_rays(o3d.core.Tensor.from_numpy(rays))
        t[idx] = hit['t_hit'].numpy()
        g[idx] = np.minimum(hit['geometry_ids'].numpy(), np.uint32(miss))   # misses: 2**32 - 1
        nrm = hit['primitive_normals'].numpy()        # zero for misses
        c = nrm[:, 0] * rays[:, 3]
        c += nrm[:, 1] * rays[:, 4]
        c += nrm[:, 2] * rays[:, 5]
        np.abs(c, out=c)
        c *= cr['inv_len'][idx]
        cos[idx] = c
        if colour:
            out['prim'][idx] = hit['primitive_ids'].numpy()
            out['n_up'][idx] = np.abs(nrm[:, 2])
    return out


def _any_within(mask: np.ndarray, n: int) -> np.ndarray:
    """``out[:, u]`` = any of ``mask[:, u:u + n]`` (rows), by doubling windows."""
    out = mask.copy()
    k = 1
    while 2 * k <= n:
        out[:, :-k] |= out[:, k:]       # out covers [u, u + 2k)
        k *= 2
    if k < n:
        out[:, :k - n] |= out[:, n - k:]
    return out


def _stereo_shadow(rc, cam: CameraModel, dw: np.ndarray, t: np.ndarray, instance: np.ndarray,
                   eye: np.ndarray, emitter: np.ndarray, reach: int) -> np.ndarray:
    """Pixels the projector / second imager cannot see (one side of every object).

    The emitter sits on the camera's +x axis, so the segment from a surface
    point to it projects onto the point's own image row, to the right of it,
    and ends within ``reach`` columns: only pixels with an object that close
    on their right need an occlusion ray.
    """
    import open3d as o3d
    H, W = cam.height, cam.width
    near = _any_within((instance > 0).reshape(H, W), reach + 1).reshape(-1)
    near &= t < np.inf
    idx = np.flatnonzero(near)
    ti = t[idx]
    srays = np.empty((len(idx), 6), np.float32)
    for j in range(3):
        p = srays[:, j]
        np.multiply(dw[j, idx], ti, out=p)
        p += eye[j]
        np.subtract(emitter[j], p, out=srays[:, 3 + j])
    occ = rc.test_occlusions(o3d.core.Tensor.from_numpy(srays), tnear=1e-3, tfar=0.999)
    shadow = np.zeros(H * W, bool)
    shadow[idx] = occ.numpy()
    return shadow.reshape(H, W)


def render(scene: Scene, camera: CameraModel | str = 'd435', rng_or_seed=None, *,
           pose: np.ndarray | None = None, colour: bool = True, noise: bool = True,
           stamp_ns: int = 0) -> Frame:
    """One organised frame of ``scene``; ``pose`` is T_table_camera (random if None).

    Per-pixel work is written as whole-frame float32 operations on one
    component at a time (numpy loops slowly over a last axis of length 3: 3 ms
    for a (H*W, 3) broadcast), without boolean-mask indexing (a random mask
    costs ~1 ms a frame) and with per-camera constants cached: the goal is 20
    frames/s on two cores.
    """
    cam = get_camera(camera)
    rng = _rng(rng_or_seed)
    if pose is None:
        pose = sample_camera_pose(scene, rng)
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError('pose must be a finite 4x4 matrix (T_table_camera)')
    rc, inst_of, rgba, col_off = scene.raycasting()
    cr = _camera_rays(cam)
    H, W = cam.height, cam.width
    R = pose[:3, :3].astype(np.float32)
    eye = pose[:3, 3].astype(np.float32)
    tr = _trace(scene, cam, R, eye, colour)
    t, g, cos, dw = tr['t'], tr['g'], tr['cos'], tr['dw']
    instance = np.take(inst_of, g)
    shadow = None
    if noise and cam.stereo_shadow and cam.depth_model == 'stereo':
        emitter = eye + R[:, 0] * np.float32(cam.baseline)
        shadow = _stereo_shadow(rc, cam, dw, t, instance, eye, emitter, cr['reach'])
    depth = apply_depth_model(cam, t.reshape(H, W), cos.reshape(H, W), rng, noise=noise,
                              shadow=shadow)
    d = depth.copy()
    np.copyto(d, np.float32(np.nan), where=d <= 0)
    pts = np.empty((H, W, 3), np.float32)            # NaN rows where depth is missing
    np.multiply(cr['u'][None, :], d, out=pts[..., 0])
    np.multiply(cr['v'][:, None], d, out=pts[..., 1])
    pts[..., 2] = d
    pts = pts.reshape(-1, 3)
    colors = None
    if colour:
        tri = np.take(col_off, g)
        tri += tr['prim']
        alb = np.take(rgba, tri).view(np.uint8).reshape(-1, 4)
        light = tr['n_up']
        light *= np.float32(0.3)
        light += np.float32(0.35)
        light += cos * np.float32(0.4)
        # table/floor texture: faint wood grain on geometry 0 (the table top or the
        # floor), as a factor 0.95 + 0.05 sin(...) on its light
        tz = np.minimum(t, np.float32(100.0))     # finite for misses: no warnings
        gy = dw[1] * tz
        gy += eye[1]
        gy *= np.float32(5.0)
        np.sin(gy, out=gy)
        gx = np.multiply(dw[0], tz, out=tz)
        gx += eye[0]
        gx *= np.float32(90.0)
        gy *= np.float32(2.0)
        gx += gy
        np.sin(gx, out=gx)
        gx -= np.float32(1.0)
        gx *= g == 0
        gx *= np.float32(0.05)
        gx += np.float32(1.0)
        light *= gx
        gain = rng.normal(1.0, 0.04, 3).astype(np.float32)
        hit = t < np.inf                                 # black where nothing was hit
        c = np.empty((H * W, 3), np.float32)
        for j in range(3):
            np.multiply(light, gain[j], out=c[:, j])
            c[:, j] *= alb[:, j]
        if cam.colour_noise > 0:                        # c += noise * sigma, no temporary
            noise_c = fast_noise(rng, c.shape)
            c *= np.float32(1.0 / cam.colour_noise)
            c += noise_c
            c *= np.float32(cam.colour_noise)
        np.clip(c, 0, 255, out=c)
        for j in range(3):
            c[:, j] *= hit
        colors = c.astype(np.uint8)
    T_ct = np.linalg.inv(pose)
    objects = [dict(id=o.id, category=o.category, pose=T_ct @ o.pose,
                    size=o.size.astype(np.float64), support=o.support)
               for o in scene.objects]
    return Frame(depth=depth, points=pts, colors=colors,
                 instance=instance, objects=objects, K=cam.K, width=W, height=H,
                 T_camera_table=T_ct, frame_id=FRAME_ID, stamp_ns=int(stamp_ns),
                 camera=cam.name)
