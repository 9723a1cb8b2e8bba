# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Core results -> ROS messages (detections, markers, clouds, diagnostics).

Kept apart from the node so the conversions are plain functions a test can call
and so the node file reads as wiring only.
"""

from __future__ import annotations

import colorsys
import zlib

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from p3d_perception.cloud import PackedCloud, pack_cloud
from p3d_perception.memory import TrackedObject
from p3d_perception.pipeline import Detection, FrameResult

MARKER_LIFETIME_S = 1.0


def stamp_to_msg(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def header(frame_id: str, stamp_ns: int) -> Header:
    return Header(frame_id=frame_id, stamp=stamp_to_msg(stamp_ns))


def quaternion_from_matrix(rotation: np.ndarray) -> Quaternion:
    """Rotation matrix -> unit quaternion (Shepperd's method, numerically stable)."""
    m = np.asarray(rotation, dtype=np.float64)
    if np.linalg.det(m) < 0:  # a reflected box basis: flip one axis to make it a rotation
        m = m.copy()
        m[:, 2] *= -1
    t = np.trace(m)
    if t > 0:
        s = 2.0 * np.sqrt(t + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, \
            (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, \
            (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, \
            (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, \
            (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def matrix_from_quaternion(q) -> np.ndarray:
    """Unit quaternion (any object with x, y, z, w) -> 3x3 rotation matrix."""
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose(center: np.ndarray, rotation: np.ndarray) -> Pose:
    c = np.asarray(center, dtype=np.float64)
    return Pose(position=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
                orientation=quaternion_from_matrix(rotation))


def label_color(label: str, alpha: float = 1.0) -> ColorRGBA:
    """Return a stable, distinct colour per label, so a class always looks the same."""
    hue = (zlib.crc32(label.encode('utf-8')) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def detection_msg(interfaces_msg, det: Detection | TrackedObject, frame_id: str,
                  stamp_ns: int):
    """Convert a core Detection (or remembered object) to the interfaces' Detection."""
    return interfaces_msg.Detection(
        header=header(frame_id, stamp_ns), object_id=int(det.object_id), label=det.label,
        score=float(det.score), alternative_labels=list(det.top_labels),
        alternative_scores=[float(s) for s in det.top_scores],
        pose=pose(det.center, det.rotation),
        size=Vector3(x=float(det.size[0]), y=float(det.size[1]), z=float(det.size[2])),
        point_count=int(det.point_count))


def detection_array_msg(interfaces_msg, result: FrameResult):
    cloud = result.cloud
    return interfaces_msg.DetectionArray(
        header=header(cloud.frame_id, cloud.stamp_ns),
        detections=[detection_msg(interfaces_msg, d, cloud.frame_id, cloud.stamp_ns)
                    for d in result.detections])


def _box_marker(ns: str, mid: int, hdr: Header, center, rotation, size, color,
                lifetime_s: float) -> Marker:
    s = np.maximum(np.asarray(size, dtype=np.float64), 1e-3)
    return Marker(header=hdr, ns=ns, id=mid, type=Marker.CUBE, action=Marker.ADD,
                  pose=pose(center, rotation), scale=Vector3(x=s[0], y=s[1], z=s[2]),
                  color=color, lifetime=_duration(lifetime_s))


def _text_marker(ns: str, mid: int, hdr: Header, position, text: str, height: float,
                 lifetime_s: float, color: ColorRGBA | None = None) -> Marker:
    p = np.asarray(position, dtype=np.float64)
    return Marker(header=hdr, ns=ns, id=mid, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                  pose=Pose(position=Point(x=p[0], y=p[1], z=p[2]),
                            orientation=Quaternion(w=1.0)),
                  scale=Vector3(z=height), text=text,
                  color=color or ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                  lifetime=_duration(lifetime_s))


def _duration(seconds: float) -> Duration:
    return Duration(sec=int(seconds), nanosec=int((seconds % 1.0) * 1e9))


def _label_anchor(center, size, up: np.ndarray | None) -> np.ndarray:
    """Where a label floats: above the box along 'up' (the frame's -y for optical frames)."""
    up = np.array([0.0, -1.0, 0.0]) if up is None else up
    return np.asarray(center) + up * (0.5 * float(np.max(size)) + 0.04)


def markers_msg(result: FrameResult, up: np.ndarray | None = None,
                lifetime_s: float = MARKER_LIFETIME_S) -> MarkerArray:
    """Boxes coloured by label plus "label score #id" text, replacing the last frame's."""
    cloud = result.cloud
    hdr = header(cloud.frame_id, cloud.stamp_ns)
    markers = [Marker(header=hdr, action=Marker.DELETEALL)]
    for det in result.detections:
        markers.append(_box_marker('boxes', det.object_id, hdr, det.center, det.rotation,
                                   det.size, label_color(det.label, 0.45), lifetime_s))
        markers.append(_text_marker(
            'labels', det.object_id, hdr, _label_anchor(det.center, det.size, up),
            f'{det.label} {det.score:.2f} #{det.object_id}', 0.04, lifetime_s))
    return MarkerArray(markers=markers)


def query_markers_msg(query: str, matches, stamp_ns: int, up: np.ndarray | None = None,
                      lifetime_s: float = 10.0) -> MarkerArray:
    """Highlight a query's answer: a yellow box around each match and the query text."""
    markers = [Marker(action=Marker.DELETEALL)]
    for rank, match in enumerate(matches):
        obj = match.object
        hdr = header(obj.frame_id, stamp_ns)
        alpha = 0.8 if rank == 0 else 0.35
        markers.append(_box_marker('query', obj.object_id, hdr, obj.center, obj.rotation,
                                   np.asarray(obj.size) * 1.15,
                                   ColorRGBA(r=1.0, g=0.9, b=0.0, a=alpha), lifetime_s))
        markers.append(_text_marker(
            'query_text', obj.object_id, hdr, _label_anchor(obj.center, obj.size, up) +
            (up if up is not None else np.array([0.0, -1.0, 0.0])) * 0.05,
            f'"{query}" -> #{obj.object_id} {obj.label} ({match.score:.2f})', 0.045,
            lifetime_s, ColorRGBA(r=1.0, g=0.9, b=0.0, a=1.0)))
    return MarkerArray(markers=markers)


def packed_to_msg(packed: PackedCloud, frame_id: str, stamp_ns: int) -> PointCloud2:
    return PointCloud2(
        header=header(frame_id, stamp_ns), height=packed.height, width=packed.width,
        fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                for f in packed.fields],
        is_bigendian=packed.is_bigendian, point_step=packed.point_step,
        row_step=packed.row_step, data=packed.data, is_dense=packed.is_dense)


def clustered_cloud_msg(result: FrameResult) -> PointCloud2:
    """Object points only, each object in its label's colour (unorganised)."""
    cloud = result.cloud
    pts, cols = [], []
    for det in result.detections:
        c = label_color(det.label)
        pts.append(det.cluster.points)
        cols.append(np.tile(np.array([c.r, c.g, c.b]) * 255, (len(det.cluster.points), 1)))
    if not pts:  # same layout, no points: RViz clears the display
        packed = pack_cloud(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8))
        packed.width, packed.row_step, packed.data = 0, 0, b''
        return packed_to_msg(packed, cloud.frame_id, cloud.stamp_ns)
    packed = pack_cloud(np.concatenate(pts).astype(np.float32),
                        np.concatenate(cols).astype(np.uint8))
    return packed_to_msg(packed, cloud.frame_id, cloud.stamp_ns)


def diagnostics_msg(name: str, hardware_id: str, stamp_ns: int, level: int, message: str,
                    values: dict[str, object]) -> DiagnosticArray:
    status = DiagnosticStatus(level=bytes([level]), name=name, message=message,
                              hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    return DiagnosticArray(header=header('', stamp_ns), status=[status])
