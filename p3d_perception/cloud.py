# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Point clouds in and out of numpy: PointCloud2, depth images and PCD files.

Every other stage works on one plain type, :class:`Cloud`, so that the node, the
command line, training and tests share a single, well-tested conversion layer.
Conversions are vectorised (numpy structured views over the message buffer)
because a 640x480 camera at 30 Hz leaves no room for per-point Python. Invalid
points are kept as NaN rather than dropped so that per-point results (labels)
map 1:1 back onto the input message, which is what a segmented cloud publisher
and ground-truth evaluation both need.

Nothing here imports rclpy: messages are duck-typed, so rclpy messages and the
``rosbags`` library's deserialised messages both work.
"""

from __future__ import annotations

import logging
import operator
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

#: Clouds above this many points are refused (a 10M-point message is a bug upstream,
#: and decoding it would stall the perception loop). Override per call.
DEFAULT_MAX_POINTS = 5_000_000

# sensor_msgs/PointField datatype codes.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_DATATYPE_TO_NUMPY = {
    INT8: np.dtype('i1'), UINT8: np.dtype('u1'), INT16: np.dtype('i2'),
    UINT16: np.dtype('u2'), INT32: np.dtype('i4'), UINT32: np.dtype('u4'),
    FLOAT32: np.dtype('f4'), FLOAT64: np.dtype('f8'),
}
_NUMPY_TO_DATATYPE = {(dt.kind, dt.itemsize): code for code, dt in _DATATYPE_TO_NUMPY.items()}
_NATIVE_BIG = sys.byteorder == 'big'
_COLOR_FIELDS = ('rgb', 'rgba')

#: A point wider than this is a corrupt header, not a sensor (the widest real layouts,
#: descriptor clouds, take a few kB); it also keeps numpy's dtype size inside a C int.
MAX_POINT_STEP = 1 << 20
#: More fields than this is a corrupt header (real drivers publish a few dozen at most).
MAX_FIELDS = 4096
#: Fields may overlap (an ``rgb`` float and an ``rgba`` uint32 on the same bytes), but
#: each extra field is copied out of the message: more field bytes than this many
#: points' worth would let a small message claim gigabytes.
MAX_FIELD_BYTES_PER_POINT_STEP = 4
#: Coordinates beyond this (m) are no sensor's: a flipped exponent bit in a recording.
PLAUSIBLE_RANGE_M = 1000.0


class CloudError(ValueError):
    """The input cannot be turned into a usable cloud; the message says why."""


class EmptyCloudError(CloudError):
    """The input holds no points, or no valid (finite) points at all."""


class CloudTooLargeError(CloudError):
    """The input has more points than the configured ``max_points``."""


#: The prefix of a CloudError made from an exception no check anticipated: the fuzz
#: tests look for it, because each such case deserves its own clear reason.
UNEXPECTED = 'unexpected'


def _index(value: Any, what: str) -> int:
    """An integer header value; None, text, floats or NaN are a malformed message."""
    try:
        return operator.index(value)
    except TypeError:
        raise CloudError(f'{what} must be an integer, got {value!r:.60}') from None


def _guarded(kind: str, fn, *args, **kwargs):
    """Call a decoder so that any input gives a Cloud or a CloudError, never a crash.

    The explicit checks give each malformed layout its own reason; this net turns an
    unforeseen numpy/Python error into a CloudError too, because the node treats
    CloudError as "drop this message" and anything else as a bug that stops it.
    """
    try:
        return fn(*args, **kwargs)
    except CloudError:
        raise
    except (TypeError, ValueError, OverflowError, IndexError, KeyError, AttributeError,
            MemoryError) as exc:
        raise CloudError(f'malformed {kind} ({UNEXPECTED} {type(exc).__name__}: '
                         f'{str(exc)[:200]})') from exc


def _point_rows(points: Any, height: int, width: int | None
                ) -> tuple[np.ndarray, int, int | None]:
    """(N,3) rows of plain points; an (H,W,3) grid also gives the cloud's shape."""
    pts = np.asarray(points)
    if pts.ndim == 3 and pts.shape[2] == 3:
        height, width = pts.shape[:2]
        pts = pts.reshape(-1, 3)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CloudError(f'points must be (N, 3) or (H, W, 3), got shape {pts.shape}')
    return pts, height, width


@dataclass
class Cloud:
    """A point cloud in input order; invalid points are NaN rows, never dropped."""

    points: np.ndarray
    colors: np.ndarray | None
    height: int
    width: int
    frame_id: str = ''
    stamp_ns: int = 0
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.points.shape[0] if getattr(self.points, 'ndim', 0) == 2 else -1
        if n < 0 or self.points.shape[1] != 3:
            raise CloudError(f'Cloud.points must be (N, 3), got shape '
                             f'{getattr(self.points, "shape", None)}')
        if self.height * self.width != n:
            raise CloudError(f'Cloud height*width = {self.height}*{self.width} does not match '
                             f'{n} points')
        if self.colors is not None and self.colors.shape != (n, 3):
            raise CloudError(f'Cloud.colors must be (N, 3) uint8, got {self.colors.shape}')

    @classmethod
    def from_points(cls, points: Any, colors: Any = None, *, height: int = 1,
                    width: int | None = None, frame_id: str = '', stamp_ns: int = 0,
                    fields: Mapping[str, Any] | None = None) -> 'Cloud':
        """Wrap plain arrays ((N,3) or organised (H,W,3)) as a Cloud, validating them."""
        pts, height, width = _point_rows(points, height, width)
        if not np.issubdtype(pts.dtype, np.number):
            raise CloudError(f'points must be numeric, got dtype {pts.dtype}')
        pts = np.ascontiguousarray(pts, dtype=np.float32)
        if width is None:
            width = pts.shape[0] // max(height, 1)
        cols = None
        if colors is not None:
            cols = _as_colors(colors, pts.shape[0])
        extra = {k: np.asarray(v) for k, v in (fields or {}).items()}
        return cls(pts, cols, int(height), int(width), frame_id, int(stamp_ns), extra)

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: the point has finite x, y and z."""
        p = self.points
        return np.isfinite(p[:, 0]) & np.isfinite(p[:, 1]) & np.isfinite(p[:, 2])

    @property
    def is_organized(self) -> bool:
        return self.height > 1

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass
class PointField:
    """One sensor_msgs/PointField (datatype codes INT8=1 ... FLOAT64=8)."""

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass
class PackedCloud:
    """The payload of a sensor_msgs/PointCloud2, without the header."""

    height: int
    width: int
    fields: list[PointField]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes
    is_dense: bool


# --------------------------------------------------------------------------- helpers

def _as_colors(colors: Any, n: int) -> np.ndarray:
    cols = np.asarray(colors)
    if cols.ndim == 3:
        cols = cols.reshape(-1, cols.shape[-1])
    if cols.ndim != 2 or cols.shape[0] != n or cols.shape[1] not in (3, 4):
        raise CloudError(f'colors must be (N, 3) for N={n} points, got shape {cols.shape}')
    cols = cols[:, :3]
    if np.issubdtype(cols.dtype, np.floating):
        finite = cols[np.isfinite(cols)]
        if finite.size and finite.max() <= 1.0:
            cols = cols * 255.0
        cols = np.clip(np.nan_to_num(cols), 0, 255)
    elif cols.dtype != np.uint8:
        if not np.issubdtype(cols.dtype, np.integer):
            raise CloudError(f'colors must be numeric, got dtype {cols.dtype}')
        cols = np.clip(cols, 0, 255)  # a 16-bit or signed channel must not wrap (300 -> 44)
    return np.ascontiguousarray(cols, dtype=np.uint8)


def _buffer(data: Any) -> np.ndarray:
    """Any bytes-like message payload as a flat uint8 array (no copy when possible)."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise CloudError('point data must be bytes, got an object array')
        if data.dtype != np.uint8:
            data = np.ascontiguousarray(data).view(np.uint8)  # its bytes, not its values
        return data.reshape(-1)
    if isinstance(data, str):
        raise CloudError('point data must be bytes, got text')
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)  # e.g. a list of ints
        except (TypeError, ValueError, OverflowError) as exc:
            raise CloudError(f'cannot read point data of type {type(data).__name__}: '
                             'expected bytes or a sequence of 0..255') from exc


def _unpack_rgb(values: np.ndarray) -> np.ndarray:
    """Packed 0x00RRGGBB / 0xAARRGGBB (as float32 bits or uint32) -> (N,3) uint8."""
    u32 = values.view(np.dtype('u4').newbyteorder(values.dtype.byteorder))
    u32 = u32.astype(np.uint32)  # native order, contiguous
    out = np.empty((u32.shape[0], 3), dtype=np.uint8)
    out[:, 0] = (u32 >> 16) & 0xFF
    out[:, 1] = (u32 >> 8) & 0xFF
    out[:, 2] = u32 & 0xFF
    return out


def _check_size(n: int, max_points: int | None) -> None:
    limit = DEFAULT_MAX_POINTS if max_points is None else int(max_points)
    if n > limit:
        raise CloudTooLargeError(
            f'cloud has {n} points, more than max_points={limit}; refusing to decode it '
            '(raise max_points if this size is intended)')


def _xyz_from_structured(arr: np.ndarray, names: set[str]) -> np.ndarray:
    missing = [c for c in 'xyz' if c not in names]
    if missing:
        raise CloudError(f'cloud has no {"/".join(missing)} field(s); fields present: '
                         f'{", ".join(sorted(names)) or "none"}')
    n = arr.shape[0]
    pts = _xyz_fast(arr)
    if pts is None:
        pts = np.empty((n, 3), dtype=np.float32)
        for i, c in enumerate('xyz'):
            col = arr[c]
            if col.ndim != 1:
                raise CloudError(f'field {c!r} must have count 1, got {col.shape[1:]}')
            with np.errstate(over='ignore'):  # float64 beyond float32: inf, fixed below
                pts[:, i] = col  # casts any numeric type / byte order
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    fix = ~ok & ~(np.isnan(x) & np.isnan(y) & np.isnan(z))
    if fix.any():
        pts[fix] = np.nan  # inf and partial NaN become a fully invalid point
    return pts


def _xyz_fast(arr: np.ndarray) -> np.ndarray | None:
    """Copy x/y/z as one 12-byte block per point when they are adjacent float32.

    Numpy's strided copy of a 12-byte item is several times faster than three
    interleaving column copies, which matters at camera frame rates.
    """
    fields = arr.dtype.fields
    fx, fy, fz = fields['x'], fields['y'], fields['z']
    base = fx[0]
    if not (base.kind == 'f' and base.itemsize == 4 and fy[0] == base and fz[0] == base
            and fy[1] == fx[1] + 4 and fz[1] == fx[1] + 8):
        return None
    block = np.dtype({'names': ['xyz'], 'formats': ['V12'], 'offsets': [fx[1]],
                      'itemsize': arr.dtype.itemsize})
    raw = np.array(arr.view(block)['xyz'], copy=True, order='C')  # never alias the msg
    pts = raw.view(base).reshape(-1, 3)
    if not base.isnative:
        pts = pts.astype(np.float32)
    return pts


def _structured_to_cloud(arr: np.ndarray, height: int, width: int, frame_id: str = '',
                         stamp_ns: int = 0, require_valid: bool = True) -> Cloud:
    names = set(arr.dtype.names or ())
    pts = _xyz_from_structured(arr, names)
    colors = None
    used = {'x', 'y', 'z'}
    for name in _COLOR_FIELDS:
        if name in names and colors is None:
            col = arr[name]
            if col.ndim == 1 and col.dtype.itemsize == 4:
                colors = _unpack_rgb(col)
                used.add(name)
    if colors is None and {'r', 'g', 'b'} <= names:
        channels = [np.asarray(arr[c]) for c in 'rgb']
        if all(c.ndim == 1 for c in channels):
            colors = _as_colors(np.stack(channels, axis=1), arr.shape[0])
            used |= {'r', 'g', 'b'}
        else:  # r/g/b with count > 1 are no colour channels; keep them as plain fields
            log.debug('r/g/b fields with counts %s are kept as fields, not colours',
                      [c.shape[1:] for c in channels])
    extra = {}
    for name in arr.dtype.names or ():
        if name in used or name.startswith('_'):
            continue
        col = arr[name]
        extra[name] = np.ascontiguousarray(col, dtype=col.dtype.newbyteorder('='))
    cloud = Cloud(pts, colors, int(height), int(width), frame_id, int(stamp_ns), extra)
    if require_valid and not np.isfinite(pts[:, 2]).any():
        raise EmptyCloudError(f'cloud has {len(cloud)} points but none is finite (all NaN/inf)')
    return cloud


def _get(msg: Any, name: str) -> Any:
    try:
        return getattr(msg, name)
    except AttributeError:
        raise CloudError(f'{type(msg).__name__} has no attribute {name!r}; expected a '
                         'sensor_msgs message') from None


def _stamp_ns(msg: Any) -> tuple[str, int]:
    header = getattr(msg, 'header', None)
    if header is None:
        return '', 0
    frame_id = str(getattr(header, 'frame_id', '') or '')
    stamp = getattr(header, 'stamp', None)
    ns = 0
    if stamp is not None:
        sec = _index(getattr(stamp, 'sec', 0), 'header.stamp.sec')
        nanosec = _index(getattr(stamp, 'nanosec', 0), 'header.stamp.nanosec')
        ns = sec * 1_000_000_000 + nanosec
    return frame_id, ns


# --------------------------------------------------------------------------- PointCloud2

def pointcloud2_dtype(fields: Any, point_step: int, is_bigendian: bool) -> np.dtype:
    """Structured dtype that views one point of a PointCloud2 with this layout.

    A field ``count`` of 0 is read as 1, as some drivers publish it. Duplicate and
    empty names are skipped (the first one wins). Every other inconsistency is a
    CloudError naming the field.
    """
    point_step = _index(point_step, 'point_step')
    if not 0 < point_step <= MAX_POINT_STEP:
        raise CloudError(f'point_step must be in 1..{MAX_POINT_STEP}, got {point_step}')
    try:
        fields = list(fields)
    except TypeError:
        raise CloudError(f'fields must be a list of PointField, got {type(fields).__name__}'
                         ) from None
    if len(fields) > MAX_FIELDS:
        raise CloudError(f'cloud has {len(fields)} fields, more than {MAX_FIELDS}: a corrupt '
                         'header')
    order = '>' if is_bigendian else '<'
    names, formats, offsets = [], [], []
    field_bytes = 0
    for f in fields:
        name = _get(f, 'name')
        name = name if isinstance(name, str) else str(name)
        datatype = _index(_get(f, 'datatype'), f'field {name!r} datatype')
        offset = _index(_get(f, 'offset'), f'field {name!r} offset')
        count = getattr(f, 'count', 1)
        count = 1 if count is None else _index(count, f'field {name!r} count')
        if count < 0:
            raise CloudError(f'field {name!r} has a negative count {count}')
        count = count or 1
        if datatype not in _DATATYPE_TO_NUMPY:
            raise CloudError(f'field {name!r} has unknown PointField datatype {datatype} '
                             '(expected 1..8)')
        base = _DATATYPE_TO_NUMPY[datatype].newbyteorder(order)
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise CloudError(f'field {name!r} (offset {offset}, {base.itemsize * count} bytes) '
                             f'does not fit in point_step {point_step}')
        if name in names or not name:
            log.debug('skipping duplicate/empty PointField name %r', name)
            continue
        field_bytes += base.itemsize * count
        if field_bytes > MAX_FIELD_BYTES_PER_POINT_STEP * point_step:
            raise CloudError(f'fields overlap: they span {field_bytes} bytes of a '
                             f'{point_step}-byte point (more than '
                             f'{MAX_FIELD_BYTES_PER_POINT_STEP}x)')
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                     'itemsize': point_step})


def pointcloud2_to_cloud(msg: Any, *, max_points: int | None = None,
                         require_valid: bool = True) -> Cloud:
    """Decode a sensor_msgs/PointCloud2 (rclpy or rosbags message) into a Cloud.

    Any input gives a Cloud or a CloudError (EmptyCloudError / CloudTooLargeError)
    whose message says what is wrong: a node must drop a bad message, not die on it.
    Memory stays within a small multiple of the message's own data.
    """
    return _guarded('PointCloud2', _pointcloud2_to_cloud, msg, max_points, require_valid)


def _pointcloud2_to_cloud(msg: Any, max_points: int | None, require_valid: bool) -> Cloud:
    height = _index(_get(msg, 'height'), 'height')
    width = _index(_get(msg, 'width'), 'width')
    point_step = _index(_get(msg, 'point_step'), 'point_step')
    row_step = _index(_get(msg, 'row_step'), 'row_step')
    fields = _get(msg, 'fields')
    frame_id, stamp_ns = _stamp_ns(msg)
    if height < 0 or width < 0:
        raise CloudError(f'negative cloud size {height}x{width}')
    n = height * width
    if n == 0:
        raise EmptyCloudError(f'cloud is empty (height={height}, width={width})')
    _check_size(n, max_points)
    if not 0 < point_step <= MAX_POINT_STEP:
        raise CloudError(f'point_step must be in 1..{MAX_POINT_STEP}, got {point_step}')
    if row_step < width * point_step:
        raise CloudError(f'row_step {row_step} is smaller than width*point_step = '
                         f'{width}*{point_step}')
    buf = _buffer(_get(msg, 'data'))
    need = height * row_step
    if buf.size < need:
        raise CloudError(f'point data has {buf.size} bytes, expected height*row_step = '
                         f'{height}*{row_step} = {need}')
    if buf.size > need:
        raise CloudError(f'point data has {buf.size} bytes, more than height*row_step = '
                         f'{height}*{row_step} = {need}: the size fields do not describe '
                         'the data')
    try:
        fields = list(fields)
    except TypeError:
        raise CloudError(f'fields must be a list of PointField, got {type(fields).__name__}'
                         ) from None
    if not fields:
        raise CloudError('cloud has no fields (expected at least x, y, z)')
    dtype = pointcloud2_dtype(fields, point_step, bool(_get(msg, 'is_bigendian')))
    missing = [c for c in 'xyz' if c not in dtype.names]
    if missing:
        raise CloudError(f'cloud has no {"/".join(missing)} field(s); fields present: '
                         f'{", ".join(dtype.names) or "none"}')
    if row_step == width * point_step:
        arr = buf.view(dtype)
    else:  # row padding: drop it, then view
        rows = buf.reshape(height, row_step)[:, :width * point_step]
        arr = np.ascontiguousarray(rows).reshape(-1).view(dtype)
    return _structured_to_cloud(arr, height, width, frame_id, stamp_ns, require_valid)


def implausible(cloud: Cloud, bound_m: float = PLAUSIBLE_RANGE_M) -> str:
    """Why a decoded cloud cannot be a real scan ('' when it can).

    A flipped bit in a recording still decodes, but a point 10^30 m away turns every
    box and voxel grid built on it into nonsense; readers of recordings count and
    skip such clouds rather than train on them.
    """
    pts = cloud.points
    ok = cloud.valid
    if not ok.any():
        return ''
    far = np.abs(pts[ok]).max()
    if not far <= bound_m:
        return f'a coordinate of {float(far):.3g} m (beyond {bound_m:g} m)'
    return ''


def pack_cloud(points: Any, colors: Any = None, fields: Mapping[str, Any] | None = None,
               height: int = 1, width: int | None = None) -> PackedCloud:
    """Pack xyz (+ colour as a float32 ``rgb`` field, PCL/RealSense style) (+ extras).

    The layout is little-endian, fields naturally aligned, x/y/z float32 at 0/4/8.
    ``fields`` maps a name to an (N,) or (N, count) numeric array.
    """
    pts, height, width = _point_rows(points, height, width)
    n = pts.shape[0]
    if n == 0:
        raise EmptyCloudError('cannot pack an empty cloud')
    if width is None:
        width = n // max(int(height), 1)
    if int(height) * int(width) != n:
        raise CloudError(f'height*width = {height}*{width} does not match {n} points')
    names, formats, offsets, pfields = [], [], [], []
    offset = 0

    def add(name: str, dt: np.dtype, count: int) -> None:
        nonlocal offset
        dt = np.dtype(dt).newbyteorder('<')
        key = (dt.kind, dt.itemsize)
        if key not in _NUMPY_TO_DATATYPE:
            raise CloudError(f'field {name!r}: dtype {dt} has no PointField datatype')
        offset = -(-offset // dt.itemsize) * dt.itemsize  # natural alignment
        names.append(name)
        formats.append(dt if count == 1 else np.dtype((dt, (count,))))
        offsets.append(offset)
        pfields.append(PointField(name, offset, _NUMPY_TO_DATATYPE[key], count))
        offset += dt.itemsize * count

    for c in 'xyz':
        add(c, np.dtype('f4'), 1)
    cols = None
    if colors is not None:
        cols = _as_colors(colors, n)
        add('rgb', np.dtype('f4'), 1)
    extras = {}
    for name, value in (fields or {}).items():
        if name in ('x', 'y', 'z', 'rgb', 'rgba'):
            raise CloudError(f'extra field name {name!r} clashes with a standard field')
        arr = np.asarray(value)
        if arr.shape[0] != n or arr.ndim > 2:
            raise CloudError(f'field {name!r} must be (N,) or (N, count) for N={n}, '
                             f'got shape {arr.shape}')
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if arr.dtype.kind == 'i' and arr.dtype.itemsize == 8:
            arr = arr.astype(np.int32)  # PointField has no 64-bit ints
        if arr.dtype.kind == 'u' and arr.dtype.itemsize == 8:
            arr = arr.astype(np.uint32)
        extras[name] = arr
        add(name, arr.dtype, 1 if arr.ndim == 1 else arr.shape[1])
    point_step = -(-offset // 4) * 4
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                      'itemsize': point_step})
    out = np.zeros(n, dtype=dtype)
    p32 = pts.astype(np.float32, copy=False)
    out['x'], out['y'], out['z'] = p32[:, 0], p32[:, 1], p32[:, 2]
    if cols is not None:
        packed = ((cols[:, 0].astype(np.uint32) << 16) | (cols[:, 1].astype(np.uint32) << 8)
                  | cols[:, 2].astype(np.uint32))
        out['rgb'] = packed.astype('<u4').view('<f4')
    for name, arr in extras.items():
        out[name] = arr
    is_dense = bool(np.isfinite(p32).all())
    return PackedCloud(int(height), int(width), pfields, False, point_step,
                       point_step * int(width), out.tobytes(), is_dense)


def cloud_to_packed(cloud: Cloud) -> PackedCloud:
    """Pack a Cloud (keeping its shape, colours and extra fields)."""
    return pack_cloud(cloud.points, cloud.colors, cloud.fields, cloud.height, cloud.width)


# --------------------------------------------------------------------------- depth images

def _intrinsics(K: Any) -> tuple[float, float, float, float]:
    try:
        k = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise CloudError(f'camera matrix K must be 9 numbers, got {type(K).__name__}') from None
    if k.size != 9:
        raise CloudError(f'camera matrix K must have 9 values (3x3), got {k.size}')
    k = k.reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise CloudError(f'camera matrix K has invalid focal lengths fx={fx}, fy={fy} '
                         '(uncalibrated camera?)')
    return float(fx), float(fy), float(cx), float(cy)


def depth_to_cloud(depth: Any, K: Any, *, depth_scale: float | None = None, colors: Any = None,
                   frame_id: str = '', stamp_ns: int = 0) -> Cloud:
    """Back-project a depth image (uint16 mm / float32 m) into an organised Cloud.

    ``depth_scale`` converts raw values to metres (default 0.001 for integer depth,
    1.0 for float depth). Zero, NaN and inf depths become NaN points.
    """
    d = np.asarray(depth)
    if d.dtype == np.bool_:
        raise CloudError('depth image must be numeric, got dtype bool')
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[:, :, 0]
    if d.ndim != 2 or d.size == 0:
        raise CloudError(f'depth image must be a non-empty (H, W) array, got shape {d.shape}')
    if not np.issubdtype(d.dtype, np.number):
        raise CloudError(f'depth image must be numeric, got dtype {d.dtype}')
    h, w = d.shape
    _check_size(h * w, None)
    fx, fy, cx, cy = _intrinsics(K)
    if depth_scale is None:
        depth_scale = 1.0 if np.issubdtype(d.dtype, np.floating) else 0.001
    if not (isinstance(depth_scale, (int, float)) and np.isfinite(depth_scale)
            and depth_scale > 0):
        raise CloudError(f'depth_scale must be a positive number, got {depth_scale!r}')
    with np.errstate(over='ignore', invalid='ignore'):
        z = d.astype(np.float32) * np.float32(depth_scale)
        z[~(z > 0)] = np.nan  # zero / negative / NaN depth is "no return"
        z[np.isinf(z)] = np.nan
        u = (np.arange(w, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
        v = (np.arange(h, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
        pts = np.empty((h, w, 3), dtype=np.float32)
        pts[:, :, 0] = z * u[None, :]
        pts[:, :, 1] = z * v[:, None]
        pts[:, :, 2] = z
    # a far depth or an extreme K can overflow float32: such a point is no return either
    bad = ~np.isfinite(pts[:, :, 0]) | ~np.isfinite(pts[:, :, 1])
    if bad.any():
        pts[bad] = np.nan
    cols = None
    if colors is not None:
        c = np.asarray(colors)
        if c.shape[:2] != (h, w):
            raise CloudError(f'colour image shape {c.shape[:2]} does not match depth {(h, w)}')
        cols = _as_colors(c.reshape(h * w, -1), h * w)
    return Cloud(pts.reshape(-1, 3), cols, h, w, frame_id, int(stamp_ns))


_DEPTH_ENCODINGS = {'16UC1': np.dtype('u2'), 'mono16': np.dtype('u2'),
                    '32FC1': np.dtype('f4')}
_COLOR_ENCODINGS = {'rgb8': (3, [0, 1, 2]), 'bgr8': (3, [2, 1, 0]),
                    'rgba8': (4, [0, 1, 2]), 'bgra8': (4, [2, 1, 0])}


def _image_array(msg: Any, dtype: np.dtype, channels: int) -> np.ndarray:
    h, w = _index(_get(msg, 'height'), 'image height'), _index(_get(msg, 'width'), 'image width')
    step = _index(_get(msg, 'step'), 'image step')
    if h <= 0 or w <= 0:
        raise EmptyCloudError(f'image is empty ({h}x{w})')
    _check_size(h * w, None)
    row = w * channels * dtype.itemsize
    if step < row:
        raise CloudError(f'image step {step} is smaller than width*pixel size = {row}')
    buf = _buffer(_get(msg, 'data'))
    if buf.size < h * step:
        raise CloudError(f'image data has {buf.size} bytes, expected height*step = {h * step}')
    if buf.size > h * step:
        raise CloudError(f'image data has {buf.size} bytes, more than height*step = '
                         f'{h * step}: the size fields do not describe the data')
    rows = buf.reshape(h, step)[:, :row]
    order = '>' if bool(getattr(msg, 'is_bigendian', False)) else '<'
    img = np.ascontiguousarray(rows).view(dtype.newbyteorder(order))
    return img.reshape(h, w, channels).astype(dtype.newbyteorder('='), copy=False)


def depth_image_to_cloud(image_msg: Any, camera_info_msg: Any, color_msg: Any = None, *,
                         depth_scale: float | None = None) -> Cloud:
    """sensor_msgs/Image (16UC1 mm or 32FC1 m) + CameraInfo (+ registered rgb8/bgr8) -> Cloud.

    As for PointCloud2, any input gives a Cloud or a CloudError with the reason.
    """
    return _guarded('depth image', _depth_image_to_cloud, image_msg, camera_info_msg,
                    color_msg, depth_scale)


def _depth_image_to_cloud(image_msg: Any, camera_info_msg: Any, color_msg: Any,
                          depth_scale: float | None) -> Cloud:
    encoding = str(_get(image_msg, 'encoding'))
    if encoding not in _DEPTH_ENCODINGS:
        raise CloudError(f'unsupported depth encoding {encoding!r:.60}; expected one of '
                         f'{", ".join(_DEPTH_ENCODINGS)}')
    depth = _image_array(image_msg, _DEPTH_ENCODINGS[encoding], 1)[:, :, 0]
    ih = _index(_get(camera_info_msg, 'height'), 'CameraInfo height')
    iw = _index(_get(camera_info_msg, 'width'), 'CameraInfo width')
    if (ih, iw) != (0, 0) and (ih, iw) != depth.shape:
        raise CloudError(f'CameraInfo is {iw}x{ih} but the depth image is '
                         f'{depth.shape[1]}x{depth.shape[0]}')
    colors = None
    if color_msg is not None:
        cenc = str(_get(color_msg, 'encoding'))
        if cenc not in _COLOR_ENCODINGS:
            raise CloudError(f'unsupported colour encoding {cenc!r:.60}; expected one of '
                             f'{", ".join(_COLOR_ENCODINGS)}')
        ch, order = _COLOR_ENCODINGS[cenc]
        colors = _image_array(color_msg, np.dtype('u1'), ch)[:, :, order]
    frame_id, stamp_ns = _stamp_ns(image_msg)
    return depth_to_cloud(depth, _get(camera_info_msg, 'k'), depth_scale=depth_scale,
                          colors=colors, frame_id=frame_id, stamp_ns=stamp_ns)


# --------------------------------------------------------------------------- PCD files

def read_pcd(path: str | Path, *, max_points: int | None = None,
             require_valid: bool = True) -> Cloud:
    """Read a PCD file (ascii / binary / binary_compressed), keeping custom fields.

    The header is checked before anything is allocated (:mod:`p3d_perception.pcd`);
    any malformed file is a CloudError saying what is wrong with it.
    """
    from p3d_perception.pcd import read_pcd_array
    path = Path(path)
    if not path.is_file():
        raise CloudError(f'PCD file not found: {path}')

    def read() -> Cloud:
        arr, header = read_pcd_array(path, max_points=max_points)
        return _structured_to_cloud(arr, header.height, header.width, frame_id='',
                                    stamp_ns=0, require_valid=require_valid)
    return _guarded(f'PCD file {path}', read)
