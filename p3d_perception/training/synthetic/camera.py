# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Virtual depth cameras: real intrinsics plus a sensor model of their failures.

Models trained on clean raycasts fail on real scans, so every synthetic depth
pixel goes through the same degradations a structured-light/stereo or
time-of-flight camera shows: depth noise that grows with distance (quadratic in
depth for disparity sensors, roughly linear for ToF), disparity quantisation,
spatially correlated noise, missing returns at grazing angles and at depth
edges, and "flying pixels" that sit between a foreground edge and the
background. The same function serves full organised frames and the small
windows rendered for single-object views, so both see one sensor.

Intrinsics are typical factory values for the 640x480-class depth modes
(units vary by about 1 %); noise figures follow the vendors' published RMS
figures (RealSense subpixel RMS ~0.08 px, Kinect v1 1/8 px disparity steps,
Azure Kinect ToF random error of a few mm) and are approximations, not
calibrations.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FRAME_ID = 'camera_depth_optical_frame'


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """A pinhole depth camera and the parameters of its sensor model."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    min_depth: float = 0.3
    max_depth: float = 6.0
    #: 'stereo' (structured light / active stereo: noise in disparity) or 'tof'
    depth_model: str = 'stereo'
    baseline: float = 0.05          # m, stereo only
    disparity_sigma: float = 0.08   # px RMS, stereo only
    disparity_step: float = 1.0 / 32.0  # px, stereo only
    tof_sigma0: float = 0.001       # m, tof only
    tof_sigma1: float = 0.0015      # m per m of depth, tof only
    correlated_fraction: float = 0.5   # share of noise variance that is spatially smooth
    correlated_cell: int = 8        # px size of the smooth noise cells
    grazing_start_deg: float = 72.0  # incidence angle where returns start to go missing
    grazing_end_deg: float = 86.0   # ... and where all are missing
    edge_threshold: float = 0.03    # relative depth jump that counts as a discontinuity
    edge_dropout: float = 0.35      # P(missing) for a pixel on a depth edge
    flying_pixel_prob: float = 0.25  # P(flying pixel) for a remaining edge pixel
    random_dropout: float = 0.003   # P(missing) anywhere
    stereo_shadow: bool = False     # occlusion shadow seen from the projector/second imager
    #: shadow found in the depth image itself when the caller has no occlusion rays
    #: (single-object view windows): a pixel is hidden from the emitter (+x side) by any
    #: nearer pixel to its right within the parallax f*b*(1/z_near - 1/z)
    image_shadow: bool = False
    #: IR absorbed by dark print: P(missing) rises linearly from 0 at this luminance
    #: (0..1) to dark_dropout at black; only where the caller passes an albedo
    dark_threshold: float = 0.0
    dark_dropout: float = 0.0
    #: radius (px) of the band around depth edges where depth is a window average, as a
    #: correlation-window (block-matching) sensor smears silhouettes laterally; 0 = off
    edge_smooth_px: int = 0
    colour_noise: float = 4.0       # std of colour noise (0-255 scale)
    depth_unit: float = 0.001       # m per step of the published 16UC1 depth image

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the conventional name
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def depth_sigma(self, z: np.ndarray | float) -> np.ndarray:
        """Per-pixel standard deviation of depth noise (m) at depth ``z``."""
        z = np.asarray(z, dtype=np.float64)
        if self.depth_model == 'stereo':
            return z * z * self.disparity_sigma / (self.fx * self.baseline)
        return self.tof_sigma0 + self.tof_sigma1 * z

    def depth_step(self, z: np.ndarray | float) -> np.ndarray:
        """Spacing (m) of the depth values a disparity sensor can report at depth ``z``."""
        z = np.asarray(z, dtype=np.float64)
        if self.depth_model == 'stereo' and self.disparity_step > 0:
            return np.maximum(z * z * self.disparity_step / (self.fx * self.baseline),
                              self.depth_unit)
        return np.full_like(z, self.depth_unit)

    def replace(self, **changes) -> 'CameraModel':
        return dataclasses.replace(self, **changes)


CAMERA_PRESETS: dict[str, CameraModel] = {
    # Intel RealSense D435, depth 640x480 (typical fx~383), 50 mm baseline,
    # subpixel RMS ~0.08, 1/32 px disparity resolution, shadows on one side.
    'd435': CameraModel(
        name='d435', width=640, height=480, fx=383.0, fy=383.0, cx=320.5, cy=240.0,
        min_depth=0.28, max_depth=6.0, depth_model='stereo', baseline=0.050,
        disparity_sigma=0.08, disparity_step=1.0 / 32.0, stereo_shadow=True,
        edge_dropout=0.35, flying_pixel_prob=0.2),
    # Microsoft Kinect (v1 / Xbox 360) structured light, depth 640x480 with the ROS
    # default calibration (fx=fy=525, principal point 319.5/239.5), 75 mm projector
    # baseline and 1/8 px disparity steps: the depth step is z^2 / (f b) / 8, 3.2 mm at
    # 1 m and 13 mm at 2 m (Khoshelham & Elberink 2012 measured ~7 cm at 5 m, i.e.
    # 2.8 mm/m^2). Disparity noise 0.07 px RMS gives 1.8 mm at 1 m and 7 mm at 2 m, close
    # to Nguyen et al. 2012 (1.2 mm + 1.9 mm (z - 0.4)^2: 1.9 / 6.1 mm). The projector
    # shadow falls on the background left of every object; dark print returns no
    # speckle pattern; the 9x9 correlation window smears edges over ~2 px.
    'kinect': CameraModel(
        name='kinect', width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5,
        min_depth=0.5, max_depth=4.5, depth_model='stereo', baseline=0.075,
        disparity_sigma=0.07, disparity_step=1.0 / 8.0, stereo_shadow=True,
        image_shadow=True, dark_threshold=0.16, dark_dropout=0.9, edge_smooth_px=2,
        edge_dropout=0.4, flying_pixel_prob=0.15, correlated_fraction=0.3),
    # Azure Kinect DK, NFOV unbinned 640x576 time-of-flight; flying pixels at
    # edges are the ToF signature, noise grows roughly linearly with depth.
    'azure_kinect': CameraModel(
        name='azure_kinect', width=640, height=576, fx=504.0, fy=504.0, cx=319.5, cy=287.5,
        min_depth=0.5, max_depth=3.86, depth_model='tof', tof_sigma0=0.001,
        tof_sigma1=0.0015, stereo_shadow=False, edge_dropout=0.2, flying_pixel_prob=0.5,
        correlated_fraction=0.2, grazing_start_deg=75.0, grazing_end_deg=88.0),
}


def get_camera(camera: 'CameraModel | str') -> CameraModel:
    """A preset by name, or the model itself; a clear error for unknown names."""
    if isinstance(camera, CameraModel):
        return camera
    if isinstance(camera, str) and camera in CAMERA_PRESETS:
        return CAMERA_PRESETS[camera]
    raise ValueError(f'unknown camera {camera!r}; presets: {", ".join(CAMERA_PRESETS)}')


def pixel_directions(cam: CameraModel, u0: int = 0, v0: int = 0, w: int | None = None,
                     h: int | None = None) -> np.ndarray:
    """Ray directions (h, w, 3) in the optical frame with z = 1, so t_hit is depth."""
    w = cam.width - u0 if w is None else w
    h = cam.height - v0 if h is None else h
    u = (np.arange(u0, u0 + w, dtype=np.float32) - cam.cx) / cam.fx
    v = (np.arange(v0, v0 + h, dtype=np.float32) - cam.cy) / cam.fy
    d = np.empty((h, w, 3), np.float32)
    d[..., 0] = u[None, :]
    d[..., 1] = v[:, None]
    d[..., 2] = 1.0
    return d


def _cross(a, b) -> list:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 pose of an optical frame (x right, y down, z forward) at ``eye``.

    In plain floats: numpy's cross and norm cost ~10 us each on 3-vectors, and
    object views take a pose per view.
    """
    eye = [float(x) for x in np.asarray(eye, np.float64).reshape(3)]
    f = [float(b) - a for a, b in zip(eye, np.asarray(target, np.float64).reshape(3))]
    n = math.sqrt(f[0] ** 2 + f[1] ** 2 + f[2] ** 2)
    f = [x / n for x in f]
    r = _cross(f, [float(x) for x in up])
    n = math.sqrt(r[0] ** 2 + r[1] ** 2 + r[2] ** 2)
    if n < 1e-6:  # looking straight down: any right vector
        r, n = [1.0, 0.0, 0.0], 1.0
    r = [x / n for x in r]
    d = _cross(f, r)
    T = np.eye(4)
    T[:3, :4] = np.array([r, d, f, eye]).T
    return T


def orbit_pose(target: np.ndarray, distance: float, elevation_deg: float,
               azimuth_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Camera pose on a sphere around ``target``, looking down at it."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = np.asarray(target, np.float64) + distance * np.array(
        [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    T = look_at(eye, target)
    if roll_deg:
        c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
        T[:3, :3] = T[:3, :3] @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return T


def rotate(p: np.ndarray, R: np.ndarray, t=None) -> np.ndarray:
    """``p @ R.T + t`` for (N, 3) float32 without BLAS.

    Numpy's threaded BLAS and Open3D's thread pool fight over the cores: an
    (N, 3) x (3, 3) product took 70 ms instead of 4 ms next to Open3D here.
    """
    p = np.asarray(p, np.float32)
    R = np.asarray(R, np.float32)
    out = np.empty(p.shape, np.float32)
    for j in range(3):
        o = out[:, j]
        np.multiply(p[:, 0], R[j, 0], out=o)
        o += p[:, 1] * R[j, 1]
        o += p[:, 2] * R[j, 2]
        if t is not None:
            o += np.float32(t[j])
    return out


# outward normals of a 16-sided outline around a group of image points (their
# convex hull grown to the sides of this polygon): tight to ~2 %
_DIRS = np.array([[math.cos(a), math.sin(a)] for a in np.arange(16) * (math.pi / 8)])
_RIGHT, _LEFT = _DIRS[:, 0] > 1e-9, _DIRS[:, 0] < -1e-9


def mark_outlines(need: np.ndarray, q: np.ndarray, starts: np.ndarray) -> None:
    """Mark in ``need`` (h, w) every pixel within a pixel of the outline of a point group.

    The rays worth casting: a convex part's image is the hull of its projected
    vertices ``q`` (u, v; groups begin at ``starts``), which lies in the 16-gon
    of lines n.q <= h (h: the most any point of the group reaches along n).
    Row r is marked between the widest bounds those lines allow over rows
    r - 1 .. r + 1 (each bound is linear in the row, so its ends decide), one
    more column each side: conservative by a pixel all round, ~20 us a group.
    """
    H, W = need.shape
    h = np.maximum.reduceat(q @ _DIRS.T, starts, axis=0)         # (groups, 16)
    v_lo, v_hi = np.minimum.reduceat(q[:, 1], starts), np.maximum.reduceat(q[:, 1], starts)
    nx, ny = np.where(_RIGHT | _LEFT, _DIRS[:, 0], 1.0), _DIRS[:, 1]
    cols = np.arange(W)
    for k in range(len(starts)):
        r0 = max(int(math.floor(v_lo[k])) - 1, 0)
        r1 = min(int(math.ceil(v_hi[k])) + 2, H)
        if r0 >= r1:
            continue
        y = np.arange(r0 - 1, r1 + 1, dtype=np.float64)
        u = (h[k] - ny * y[:, None]) / nx                # where each line crosses row y
        hi = np.maximum(u[:-2, _RIGHT], u[2:, _RIGHT]).min(1)
        lo = np.minimum(u[:-2, _LEFT], u[2:, _LEFT]).max(1)
        lo = np.clip(np.floor(lo) - 1, 0, W)
        hi = np.clip(np.ceil(hi) + 1, -1, W - 1)
        c0, c1 = int(lo.min()), int(hi.max()) + 1
        if c0 >= c1:
            continue
        c = cols[c0:c1]
        need[r0:r1, c0:c1] |= (c >= lo[:, None]) & (c <= hi[:, None])


_TABLE_SIZE = 1 << 22
_TABLES: dict = {}


def _table(kind: str) -> np.ndarray:
    t = _TABLES.get(kind)
    if t is None:
        g = np.random.default_rng(20260101 if kind == 'normal' else 20260102)
        t = (g.standard_normal(_TABLE_SIZE, dtype=np.float32) if kind == 'normal'
             else g.random(_TABLE_SIZE, dtype=np.float32))
        _TABLES[kind] = t
    return t


def fast_noise(rng: np.random.Generator, shape, kind: str = 'normal') -> np.ndarray:
    """Standard-normal or uniform float32 noise drawn from a fixed table at a random offset.

    Per-pixel RNG calls cost more than the raycast itself on a 640x480 frame; a
    4M-entry table read at an offset chosen by ``rng`` is deterministic for a
    seed and statistically fine for sensor noise (a window of the table is
    never reused within a frame).
    """
    n = int(np.prod(shape))
    t = _table(kind)
    if n > _TABLE_SIZE // 2:
        return (rng.standard_normal(shape, dtype=np.float32) if kind == 'normal'
                else rng.random(shape, dtype=np.float32))
    off = int(rng.integers(0, _TABLE_SIZE - n))
    step = 1 if n * 2 > _TABLE_SIZE else int(rng.integers(1, 3))
    if step > 1 and off + n * step > _TABLE_SIZE:
        step = 1
    return t[off:off + n * step:step].reshape(shape)


def _smooth_noise(shape: tuple[int, int], cell: int, rng: np.random.Generator,
                  scale: float = 1.0) -> np.ndarray:
    """Noise of std ~``scale`` that varies smoothly over ``cell`` pixels (bilinear cells).

    Interpolated separably, along rows on the coarse grid first: four per-pixel
    gathers of grid values cost about 8 ms on a 640x480 frame, one broadcast
    multiply-add costs a fraction of a millisecond.
    """
    h, w = shape
    gh, gw = h // cell + 2, w // cell + 2
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    # bilinear interpolation of unit-variance cells loses variance; restore ~1
    g *= np.float32(1.5 * scale)
    xs = np.arange(w, dtype=np.float32) / np.float32(cell)
    x0 = xs.astype(np.intp)
    fx = xs - x0
    gx = g[:, x0]
    gx += (g[:, x0 + 1] - gx) * fx                  # (gh, w): rows of the grid
    nb = -(-h // cell)                               # cell rows covering the image
    fy = np.arange(cell, dtype=np.float32) / np.float32(cell)
    out = np.empty((nb, cell, w), np.float32)
    np.multiply((gx[1:nb + 1] - gx[:nb])[:, None, :], fy[None, :, None], out=out)
    out += gx[:nb, None, :]
    return out.reshape(nb * cell, w)[:h]


def _shift_min(a: np.ndarray) -> np.ndarray:
    """Minimum over each pixel and its 4 neighbours (edges replicate)."""
    m = a.copy()
    np.minimum(m[1:], a[:-1], out=m[1:])
    np.minimum(m[:-1], a[1:], out=m[:-1])
    np.minimum(m[:, 1:], a[:, :-1], out=m[:, 1:])
    np.minimum(m[:, :-1], a[:, 1:], out=m[:, :-1])
    return m


def smooth_edges(cam: CameraModel, z: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Depth near discontinuities replaced by the window mean of the valid depths.

    A block-matching sensor correlates a window of the speckle image, so a pixel
    near a silhouette reports a blend of foreground and background: edges come
    out rounded and with intermediate depths, over about the window's half width.
    Only the band within ``edge_smooth_px`` of a jump changes; flat surfaces keep
    their depth.
    """
    r = int(cam.edge_smooth_px)
    if r <= 0:
        return z
    zk = np.where(keep, z, np.float32(np.inf))
    lo = zk
    hi = np.where(keep, z, np.float32(0.0))
    for _ in range(r):
        lo = _shift_min(lo)
        hi = -_shift_min(-hi)
    band = keep & ((hi - lo) > np.float32(cam.edge_threshold) * z)
    ys, xs = np.nonzero(band)
    if not len(ys):
        return z
    # the window mean at the band's pixels only (a few per cent of a frame): gathers
    # cost less there than an integral image over the whole frame
    zp = np.pad(np.where(keep, z, np.float32(0.0)), r)
    kp = np.pad(keep.astype(np.float32), r)
    acc = np.zeros(len(ys), np.float32)
    cnt = np.zeros(len(ys), np.float32)
    for dy in range(2 * r + 1):
        row = (ys + dy) * zp.shape[1] + xs
        for dx in range(2 * r + 1):
            acc += zp.reshape(-1)[row + dx]
            cnt += kp.reshape(-1)[row + dx]
    out = z.copy()
    out[ys, xs] = acc / np.maximum(cnt, np.float32(1.0))
    return out


def image_shadow(cam: CameraModel, z: np.ndarray, keep: np.ndarray,
                 max_shift: int = 64) -> np.ndarray:
    """Pixels the projector (on the camera's +x side, ``cam.baseline`` away) cannot light.

    Found in the depth image alone, for callers without occlusion rays (small
    view windows): the segment from a surface point at depth z to the emitter
    crosses the pixel ``k`` columns to its right at the depth where
    k = f b (1/z_seg - 1/z), so a nearer pixel there (depth z_k) blocks it
    when k < f b (1/z_k - 1/z). Surfaces the window does not contain cast no
    shadow, which is why full frames use raycast occlusion instead.
    """
    h, w = z.shape
    fb = np.float32(cam.fx * cam.baseline)
    inv = np.where(keep, np.float32(1.0) / np.maximum(z, np.float32(1e-3)), np.float32(0.0))
    if not keep.any():
        return np.zeros_like(keep)
    span = float(fb) * (float(inv.max()) - float(inv[keep].min()))
    kmax = int(min(max_shift, w - 1, math.ceil(span)))
    shadow = np.zeros((h, w), bool)
    for k in range(1, kmax + 1):
        near_inv = inv[:, k:]                        # the pixel k columns to the right
        block = near_inv - inv[:, :-k] > np.float32(k) / fb
        block &= keep[:, :-k]
        shadow[:, :-k] |= block
    return shadow & keep


def dark_holes(cam: CameraModel, albedo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels lost on dark print: the IR speckle is absorbed and no disparity is found."""
    if cam.dark_dropout <= 0 or cam.dark_threshold <= 0:
        return np.zeros(albedo.shape, bool)
    p = (np.float32(cam.dark_threshold) - albedo) * np.float32(
        cam.dark_dropout / cam.dark_threshold)
    return fast_noise(rng, albedo.shape, 'uniform') < p


def apply_depth_model(cam: CameraModel, z: np.ndarray, cos_incidence: np.ndarray,
                      rng: np.random.Generator, *, noise: bool = True,
                      shadow: np.ndarray | None = None,
                      albedo: np.ndarray | None = None) -> np.ndarray:
    """Degrade ideal depth ``z`` (h, w; inf = no return) like ``cam`` would.

    Returns float32 depth in metres with 0 for missing, quantised to the depth
    image unit. ``cos_incidence`` is |cos| of the angle between ray and surface
    normal; ``shadow`` marks pixels the second imager/projector cannot see (found
    from the image itself for cameras with ``image_shadow`` when not given);
    ``albedo`` (h, w, luminance 0..1) lets dark print lose its returns.

    Written for speed on full frames: random per-pixel masks are applied by
    multiplying with a boolean ``keep`` (branch-free; indexing with a random
    mask costs ~1 ms a frame) and edge effects are drawn only at the few edge
    pixels.
    """
    z = np.asarray(z, np.float32)
    h, w = z.shape
    keep = np.isfinite(z)
    keep &= z > 0
    out = np.where(keep, z, np.float32(cam.max_depth * 4.0))
    unit = np.float32(cam.depth_unit)
    if not noise:
        keep &= out >= np.float32(cam.min_depth)
        keep &= out <= np.float32(cam.max_depth)
        out *= keep
        np.divide(out, unit, out=out)
        np.round(out, out=out)
        out *= unit
        return out
    if cam.edge_smooth_px > 0:
        out = np.where(keep, smooth_edges(cam, out, keep), out)
    if shadow is None and cam.image_shadow and cam.depth_model == 'stereo':
        shadow = image_shadow(cam, out, keep)
    if albedo is not None and cam.dark_dropout > 0:
        keep &= ~dark_holes(cam, np.asarray(albedo, np.float32), rng)
    # depth discontinuities: the closest 4-neighbour; only the far side of an
    # edge goes missing or flies, as in real sensors. The pixel itself joins
    # the minimum (no padding needed): it is never below its own threshold.
    near = out.copy()
    np.minimum(near[1:], out[:-1], out=near[1:])
    np.minimum(near[:-1], out[1:], out=near[:-1])
    np.minimum(near[:, 1:], out[:, :-1], out=near[:, 1:])
    np.minimum(near[:, :-1], out[:, 1:], out=near[:, :-1])
    edge = np.flatnonzero(near < out * np.float32(1.0 - cam.edge_threshold))
    flat, near = out.reshape(-1), near.reshape(-1)
    edge = edge[keep.reshape(-1)[edge]]
    r = rng.random((3, len(edge)), dtype=np.float32)
    gone = r[0] < cam.edge_dropout
    flies = ~gone & (r[1] < cam.flying_pixel_prob)
    fly = edge[flies]
    zf = flat[fly]
    flat[fly] = zf + (0.15 + 0.7 * r[2, flies]) * (near[fly] - zf)
    keep.reshape(-1)[edge[gone]] = False
    # grazing incidence (linear in cos between the two angles) and random misses:
    # missing if u < (c0 - cos) / (c0 - c1) + p_random, i.e. cos * k + u < c0 * k + p
    c0 = math.cos(math.radians(cam.grazing_start_deg))
    c1 = math.cos(math.radians(cam.grazing_end_deg))
    k = 1.0 / max(c0 - c1, 1e-3)
    graze = np.multiply(cos_incidence, np.float32(k), dtype=np.float32)
    graze += fast_noise(rng, (h, w), 'uniform')
    keep &= ~(graze < np.float32(c0 * k + cam.random_dropout))   # NaN cos: kept, as before
    if shadow is not None:
        keep &= ~shadow
    # depth noise: white + spatially correlated part, in disparity for stereo
    c = cam.correlated_fraction
    sigma = cam.disparity_sigma if cam.depth_model == 'stereo' else 1.0
    n = fast_noise(rng, (h, w)) * np.float32(math.sqrt(1.0 - c) * sigma)
    if c > 0:
        n += _smooth_noise((h, w), cam.correlated_cell, rng, math.sqrt(c) * sigma)
    if cam.depth_model == 'stereo':
        fb = cam.fx * cam.baseline
        disp = np.divide(np.float32(fb), out)
        disp += n
        step = cam.disparity_step if cam.disparity_step > 0 else 1.0
        if cam.disparity_step > 0:
            disp *= np.float32(1.0 / step)
            np.round(disp, out=disp)
        np.maximum(disp, np.float32(1e-3 / step), out=disp)
        out = np.divide(np.float32(fb / step), disp, out=disp)
    else:
        s = out * np.float32(cam.tof_sigma1)
        s += np.float32(cam.tof_sigma0)
        s *= n
        out += s
    np.divide(out, unit, out=out)
    np.round(out, out=out)
    out *= unit
    keep &= out >= np.float32(cam.min_depth)
    keep &= out <= np.float32(cam.max_depth)
    out *= keep
    return out


def depth_to_points(cam: CameraModel, depth: np.ndarray, u0: int = 0, v0: int = 0,
                    dirs: np.ndarray | None = None) -> np.ndarray:
    """Organised (h*w, 3) float32 points in the optical frame, NaN where depth is 0."""
    h, w = depth.shape
    if dirs is None:
        dirs = pixel_directions(cam, u0, v0, w, h)
    pts = dirs * depth[..., None]
    pts[depth <= 0] = np.nan
    return pts.reshape(-1, 3)
