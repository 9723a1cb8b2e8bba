# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""rosbag2 files without ROS: write synthetic scenes, read clouds and ground truth.

Training on a robot's own recordings, the demo and the tests all go through
rosbag2, and none of them may need a ROS install. The ``rosbags`` library
reads and writes both storage plugins (MCAP and sqlite3) with the ROS 2
Jazzy message definitions and CDR serialisation, so bags written here play
with ``ros2 bag play`` and real recordings read here unchanged.

Robot bags are often cut short (power loss, full disk), so readers report
corrupt or truncated bags and undecodable messages, log a warning and keep
going with the rest instead of aborting a long extraction. A bag the
``rosbags`` reader refuses (no MCAP summary, missing metadata.yaml, broken
sqlite3 pages) is read record by record instead (:mod:`p3d_perception.bagrecovery`)
and every complete message in it is kept; the report says how many.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

CLOUD_TOPIC = '/camera/depth/color/points'
DEPTH_TOPIC = '/camera/depth/image_rect_raw'
INFO_TOPIC = '/camera/depth/camera_info'
TF_STATIC_TOPIC = '/tf_static'
TF_TOPIC = '/tf'
INSTANCES_TOPIC = '/ground_truth/instances'
OBJECTS_TOPIC = '/ground_truth/objects'
SIDECAR = 'ground_truth.json'
TABLE_FRAME = 'table'

POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'


class BagError(RuntimeError):
    """A bag cannot be written or read at all; the message says why."""


def typestore():
    """The ROS 2 Jazzy type store (cached)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore
        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


_TYPESTORE = None


# ------------------------------------------------------------------ writing

def _qos(transient_local: bool, depth: int = 10):
    from rosbags.interfaces import (
        Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
    inf = QosTime(2147483647, 4294967295)   # what rosbag2 records for "infinite"
    return Qos(QosHistory.KEEP_LAST, 1 if transient_local else depth, QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               inf, inf, QosLiveliness.AUTOMATIC, inf, False)


def _header(ts, stamp_ns: int, frame_id: str):
    T = ts.types
    return T['std_msgs/msg/Header'](
        stamp=T['builtin_interfaces/msg/Time'](sec=int(stamp_ns // 1_000_000_000),
                                               nanosec=int(stamp_ns % 1_000_000_000)),
        frame_id=frame_id)


def _u8(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(data if isinstance(data, (bytes, bytearray, memoryview))
                         else np.ascontiguousarray(data).tobytes(), dtype=np.uint8)


def _cloud_msg(ts, frame, stamp_ns: int):
    from p3d_perception.cloud import pack_cloud
    packed = pack_cloud(frame.points, frame.colors, height=frame.height, width=frame.width)
    return _packed_msg(ts, packed, stamp_ns, frame.frame_id)


def _packed_msg(ts, packed, stamp_ns: int, frame_id: str):
    """A sensor_msgs/PointCloud2 of a :class:`p3d_perception.cloud.PackedCloud`."""
    T = ts.types
    return T[POINTCLOUD2](
        header=_header(ts, stamp_ns, frame_id), height=packed.height, width=packed.width,
        fields=[T['sensor_msgs/msg/PointField'](
            name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
            for f in packed.fields],
        is_bigendian=bool(packed.is_bigendian), point_step=packed.point_step,
        row_step=packed.row_step, data=_u8(packed.data), is_dense=bool(packed.is_dense))


def _image_msg(ts, img: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    img = np.ascontiguousarray(img)
    return ts.types['sensor_msgs/msg/Image'](
        header=_header(ts, stamp_ns, frame_id), height=img.shape[0], width=img.shape[1],
        encoding=encoding, is_bigendian=0, step=img.shape[1] * img.dtype.itemsize,
        data=_u8(img.astype(img.dtype.newbyteorder('<'), copy=False)))


def _info_msg(ts, frame, stamp_ns: int):
    T = ts.types
    K = np.asarray(frame.K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return T['sensor_msgs/msg/CameraInfo'](
        header=_header(ts, stamp_ns, frame.frame_id), height=frame.height, width=frame.width,
        distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
        p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False))


def _tf_msg(ts, T_parent_child: np.ndarray, parent: str, child: str, stamp_ns: int):
    from transforms3d.quaternions import mat2quat
    T = ts.types
    w, x, y, z = mat2quat(T_parent_child[:3, :3])
    t = T_parent_child[:3, 3]
    tf = T['geometry_msgs/msg/TransformStamped'](
        header=_header(ts, stamp_ns, parent), child_frame_id=child,
        transform=T['geometry_msgs/msg/Transform'](
            translation=T['geometry_msgs/msg/Vector3'](x=float(t[0]), y=float(t[1]),
                                                       z=float(t[2])),
            rotation=T['geometry_msgs/msg/Quaternion'](x=float(x), y=float(y), z=float(z),
                                                       w=float(w))))
    return T['tf2_msgs/msg/TFMessage'](transforms=[tf])


def frame_ground_truth(frame, stamp_ns: int | None = None, scene_index: int | None = None) -> dict:
    """JSON-ready ground truth of one frame (poses in the camera frame)."""
    return {
        'stamp_ns': int(frame.stamp_ns if stamp_ns is None else stamp_ns),
        'frame_id': frame.frame_id, 'camera': getattr(frame, 'camera', ''),
        'scene': scene_index, 'table_frame': TABLE_FRAME,
        'T_camera_table': np.asarray(frame.T_camera_table).round(6).tolist(),
        'objects': [{'id': int(o['id']), 'category': str(o['category']),
                     'pose': np.asarray(o['pose']).round(6).tolist(),
                     'size': np.asarray(o['size']).round(5).tolist(),
                     'support': int(o.get('support', 0))} for o in frame.objects],
    }


def write_scene_bag(path: str | Path, frames: Iterable, *, storage: str = 'mcap',
                    overwrite: bool = False, period_ns: int = 100_000_000,
                    start_ns: int = 1_700_000_000_000_000_000, depth: bool = True,
                    instances: bool = True, sidecar: bool = True,
                    scene_ids: Sequence[int] | None = None) -> Path:
    """Write synthetic frames as a rosbag2 a real RealSense recording would resemble.

    Per frame: organised PointCloud2 (xyz + rgb), 16UC1 depth in mm, CameraInfo,
    per-pixel instance ids (16UC1) and a JSON String of the objects. The table ->
    camera transform goes once on /tf_static (transient local) when the camera
    never moves, else on /tf with every frame. Frames with ``stamp_ns == 0`` get
    ``start_ns + i * period_ns``. Returns the bag directory.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    frames = list(frames)
    if not frames:
        raise ValueError('write_scene_bag: no frames to write')
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f'{path} exists (pass overwrite=True to replace it)')
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = typestore()
    stamps = [int(f.stamp_ns) if f.stamp_ns else start_ns + i * period_ns
              for i, f in enumerate(frames)]
    if any(b <= a for a, b in zip(stamps, stamps[1:])):
        raise ValueError('frame stamps must increase')
    poses = [np.linalg.inv(np.asarray(f.T_camera_table)) for f in frames]
    static = all(np.allclose(p, poses[0], atol=1e-9) for p in poses)
    truth = []
    with Writer(path, version=9, storage_plugin=plugins[storage]) as w:
        sensor = [_qos(False)]
        c_cloud = w.add_connection(CLOUD_TOPIC, POINTCLOUD2, typestore=ts,
                                   offered_qos_profiles=sensor)
        c_info = w.add_connection(INFO_TOPIC, 'sensor_msgs/msg/CameraInfo', typestore=ts,
                                  offered_qos_profiles=sensor)
        c_depth = w.add_connection(DEPTH_TOPIC, 'sensor_msgs/msg/Image', typestore=ts,
                                   offered_qos_profiles=sensor) if depth else None
        c_tf = w.add_connection(TF_STATIC_TOPIC if static else TF_TOPIC,
                                'tf2_msgs/msg/TFMessage', typestore=ts,
                                offered_qos_profiles=[_qos(static, 100)])
        c_inst = w.add_connection(INSTANCES_TOPIC, 'sensor_msgs/msg/Image', typestore=ts,
                                  offered_qos_profiles=sensor) if instances else None
        c_obj = w.add_connection(OBJECTS_TOPIC, 'std_msgs/msg/String', typestore=ts,
                                 offered_qos_profiles=[_qos(False)])
        ser = ts.serialize_cdr
        for i, (f, st) in enumerate(zip(frames, stamps)):
            if i == 0 or not static:
                w.write(c_tf, st, ser(_tf_msg(ts, poses[i], TABLE_FRAME, f.frame_id, st),
                                      'tf2_msgs/msg/TFMessage'))
            w.write(c_info, st, ser(_info_msg(ts, f, st), 'sensor_msgs/msg/CameraInfo'))
            if c_depth is not None:
                mm = np.clip(np.round(np.asarray(f.depth) * 1000.0), 0, 65535).astype(np.uint16)
                w.write(c_depth, st, ser(_image_msg(ts, mm, '16UC1', st, f.frame_id),
                                         'sensor_msgs/msg/Image'))
            w.write(c_cloud, st, ser(_cloud_msg(ts, f, st), POINTCLOUD2))
            if c_inst is not None:
                inst = np.asarray(f.instance).reshape(f.height, f.width)
                if inst.max(initial=0) > 65535 or inst.min(initial=0) < 0:
                    raise ValueError('instance ids must lie in 0..65535 for a 16UC1 image')
                w.write(c_inst, st, ser(_image_msg(ts, inst.astype(np.uint16), '16UC1', st,
                                                   f.frame_id), 'sensor_msgs/msg/Image'))
            gt = frame_ground_truth(f, st, None if scene_ids is None else int(scene_ids[i]))
            truth.append(gt)
            w.write(c_obj, st, ser(ts.types['std_msgs/msg/String'](data=json.dumps(gt)),
                                   'std_msgs/msg/String'))
    if sidecar:
        (path / SIDECAR).write_text(json.dumps({'version': 1, 'frames': truth}) + '\n',
                                    encoding='utf-8')
    log.info('wrote %d frames to %s (%s)', len(frames), path, storage)
    return path


def write_cloud_bag(path: str | Path, clouds: Iterable, *, topic: str = CLOUD_TOPIC,
                    frame_id: str | None = None, stamps_ns: Iterable[int] | None = None,
                    start_ns: int = 1_700_000_000_000_000_000, period_ns: int = 1_000_000_000,
                    storage: str = 'mcap', overwrite: bool = False,
                    fields: Sequence[str] | None = ()) -> tuple[Path, list[int]]:
    """Write clouds as a rosbag2 holding one PointCloud2 topic and nothing else.

    This is how scans that never were a recording (PCD captures, a dataset's
    scenes) enter the bag workflow. Each cloud keeps its shape (organised
    height x width, NaN points in place), colour as a float32 ``rgb`` field and
    the extra ``fields`` named (None = all of them, () = none), since a reader
    may need a scan's per-point labels. ``frame_id`` overrides the clouds' own
    frame ids; stamps are ``stamps_ns`` or ``start_ns + i * period_ns`` and must
    be positive and increase. ``clouds`` is consumed one at a time (a folder of
    Kinect scans does not fit in memory at once). Returns the bag directory and
    the stamps written; a bag that would hold no cloud is removed (ValueError).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from p3d_perception.cloud import pack_cloud
    plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if period_ns <= 0:
        raise ValueError(f'period_ns must be > 0, got {period_ns}')
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f'{path} exists (pass overwrite=True to replace it)')
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = typestore()
    stamp_iter = iter(stamps_ns) if stamps_ns is not None else None
    written: list[int] = []
    try:
        with Writer(path, version=9, storage_plugin=plugins[storage]) as w:
            conn = w.add_connection(topic, POINTCLOUD2, typestore=ts,
                                    offered_qos_profiles=[_qos(False)])
            for i, cloud in enumerate(clouds):
                st = (int(start_ns) + i * int(period_ns) if stamp_iter is None
                      else next(stamp_iter, None))
                if st is None:
                    raise ValueError(f'fewer stamps than clouds ({i})')
                st = int(st)
                if st <= 0 or (written and st <= written[-1]):
                    raise ValueError(f'cloud stamps must be positive and increase: {st} '
                                     f'after {written[-1] if written else None}')
                keep = {k: v for k, v in cloud.fields.items() if fields is None or k in fields}
                packed = pack_cloud(cloud.points, cloud.colors, keep, height=cloud.height,
                                    width=cloud.width)
                frame = cloud.frame_id if frame_id is None else frame_id
                w.write(conn, st, ts.serialize_cdr(_packed_msg(ts, packed, st, frame),
                                                   POINTCLOUD2))
                written.append(st)
        if not written:
            raise ValueError(f'write_cloud_bag: no clouds to write to {path}')
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    log.info('wrote %d clouds to %s (%s, %s)', len(written), path, topic, storage)
    return path, written


# ------------------------------------------------------------------ reading

@dataclasses.dataclass
class BagReport:
    """What a read went through: bags opened or skipped, messages read or skipped."""

    bags_read: list[str] = dataclasses.field(default_factory=list)
    bags_failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    truncated: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    messages: int = 0
    undecodable: int = 0
    per_topic: dict[str, int] = dataclasses.field(default_factory=dict)
    #: damaged bags read record by record: bag -> complete messages recovered
    recovered: dict[str, int] = dataclasses.field(default_factory=dict)
    #: clouds that decode but cannot be a scan (a coordinate beyond 1 km: flipped bits)
    implausible: int = 0

    @property
    def ok(self) -> bool:
        return not (self.bags_failed or self.truncated or self.undecodable
                    or self.implausible)

    def summary(self) -> str:
        s = f'{len(self.bags_read)} bag(s) read, {self.messages} message(s)'
        if self.bags_failed:
            s += f', {len(self.bags_failed)} bag(s) unreadable'
        if self.truncated:
            s += f', {len(self.truncated)} bag(s) damaged or cut short'
        if self.recovered:
            s += (f' ({sum(self.recovered.values())} message(s) recovered from '
                  f'{len(self.recovered)} of them)')
        if self.undecodable:
            s += f', {self.undecodable} message(s) undecodable'
        if self.implausible:
            s += f', {self.implausible} implausible cloud(s) skipped'
        return s


def _bag_paths(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f'bag not found: {p}')
        out.append(p)
    return out


def _open(path: Path):
    """An opened rosbags Reader for a bag directory or a single .mcap/.db3 file."""
    from rosbags.rosbag2 import Reader
    reader = Reader(path)
    reader.open()
    return reader


def _decoder(ts, conn, cache: dict):
    """A function rawdata -> message for this connection (None: type unknown)."""
    key = conn.msgtype
    if key in cache:
        return cache[key]
    fn = None
    if conn.msgtype not in ts.types and conn.msgdef and conn.msgdef.data:
        try:   # a type the Jazzy store lacks: learn it from the bag's own definition
            from rosbags.typesys import get_types_from_idl, get_types_from_msg
            text = conn.msgdef.data
            types = get_types_from_idl(text) if text.startswith('=' * 80 + '\nIDL: ') \
                else get_types_from_msg(text, conn.msgtype)
            ts.register(types)
        except Exception as exc:  # noqa: BLE001 - an unknown type is skipped, not fatal
            log.warning('cannot learn message type %s from the bag: %s', conn.msgtype, exc)
    if conn.msgtype in ts.types:
        fmt = getattr(getattr(conn, 'ext', None), 'serialization_format', 'cdr')
        if fmt == 'cdr':
            fn = (lambda raw, _t=conn.msgtype: ts.deserialize_cdr(raw, _t))
    cache[key] = fn
    return fn


STORAGE_SUFFIXES = ('.mcap', '.db3')


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag: the file itself, or the directory's .mcap/.db3 files.

    metadata.yaml is not needed (it is written last, so a cut recording lacks it).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())


def _recovered(path: Path, want: set[str] | None, report: BagReport, reason: str,
               skip: collections.Counter | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """Raw messages of a bag the rosbags reader refused, read record by record."""
    from p3d_perception.bagrecovery import Recovery, RecoveryError, scan_storage
    files = storage_files(path) if path.exists() else []
    scans = []
    for f in files:
        found = Recovery(str(f))
        scans.append(found)
        try:
            for conn, stamp, raw in scan_storage(f, found):
                if want is not None and conn.topic not in want:
                    continue
                key = (conn.topic, int(stamp))
                if skip and skip[key] > 0:   # already given by the reader before it failed
                    skip[key] -= 1
                    continue
                yield conn, stamp, raw
        except RecoveryError as exc:
            found.damage.append(str(exc))
        except OSError as exc:
            found.damage.append(f'{f}: {exc}')
    bag = str(path)
    if not any(s.connections for s in scans):
        why = '; '.join(d for s in scans for d in s.damage[:1]) or 'no .mcap/.db3 file'
        log.warning('skipping unreadable bag %s: %s (recovery: %s)', path, reason, why)
        report.bags_failed.append((bag, f'{reason} (recovery: {why})'))
        return
    n = sum(s.messages for s in scans)
    damage = [d for s in scans for d in s.damage]
    log.warning('bag %s is damaged (%s): read record by record, %d complete message(s) '
                'recovered%s', path, reason, n, f'; {damage[0]}' if damage else '')
    report.recovered[bag] = report.recovered.get(bag, 0) + n
    report.truncated.append((bag, f'{reason}; {n} complete message(s) recovered'
                             + (f' ({damage[0]})' if damage else '')))


def _connections(path: Path) -> list:
    """The connections of a bag, from its reader or, if that refuses it, a scan."""
    try:
        reader = _open(path)
    except Exception:  # noqa: BLE001 - a damaged bag: ask the record-by-record reader
        from p3d_perception.bagrecovery import Recovery, RecoveryError, scan_storage
        conns: dict = {}
        for f in storage_files(path):
            found = Recovery(str(f))
            try:
                for conn, _, _ in scan_storage(f, found):
                    conns.setdefault((conn.topic, conn.msgtype), conn)
            except (RecoveryError, OSError):
                continue
            for conn in found.connections.values():
                conns.setdefault((conn.topic, conn.msgtype), conn)
        if not conns:
            raise
        return list(conns.values())
    try:
        return list(reader.connections)
    finally:
        reader.close()


def topic_types(path) -> dict[str, dict[str, int]]:
    """topic -> {message type: message count} (counts 0 where a damaged bag hides them).

    A topic can carry several types (a second publisher of another type); callers
    pick by type, not by the topic's first or last connection.
    """
    out: dict[str, dict[str, int]] = {}
    for c in _connections(Path(path)):
        types = out.setdefault(c.topic, {})
        types[c.msgtype] = types.get(c.msgtype, 0) + int(getattr(c, 'msgcount', 0) or 0)
    return out


def iter_messages(paths, topics: Iterable[str] | None = None, *,
                  report: BagReport | None = None) -> Iterator[tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, timestamp_ns, message) from one or several bags.

    Bags that cannot be opened or end early are read record by record instead
    (every complete message is kept), and messages that cannot be decoded are
    logged, counted in ``report`` and skipped.
    """
    report = report if report is not None else BagReport()
    want = None if topics is None else set(topics)
    ts = typestore()
    for path in _bag_paths(paths):
        cache: dict = {}
        warned = [0]

        def decoded(conn, stamp, raw):
            dec = _decoder(ts, conn, cache)
            try:
                if dec is None:
                    raise ValueError(f'unknown message type {conn.msgtype}')
                return dec(raw)
            except Exception as exc:  # noqa: BLE001 - one bad message is skipped
                report.undecodable += 1
                if warned[0] < 5:
                    log.warning('undecodable %s message on %s in %s: %s', conn.msgtype,
                                conn.topic, path, exc)
                    warned[0] += 1
                return None

        def counted(conn, stamp, msg):
            report.messages += 1
            report.per_topic[conn.topic] = report.per_topic.get(conn.topic, 0) + 1
            return conn.topic, conn.msgtype, int(stamp), msg

        for conn, stamp, raw in iter_raw(path, want, report):
            msg = decoded(conn, stamp, raw)
            if msg is not None:
                yield counted(conn, stamp, msg)


def iter_raw(path: Path, want: set[str] | None, report: BagReport
             ) -> Iterator[tuple[Any, int, bytes]]:
    """(connection, timestamp_ns, CDR bytes) of one bag, in recorded order.

    A bag the rosbags reader refuses, or that ends early, is read on record by record
    from where the reader stopped, so every complete message is given once; what was
    recovered or lost is recorded in ``report``. The player publishes these bytes as
    they are; :func:`iter_messages` decodes them.
    """
    try:
        reader = _open(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable bag is reported, not fatal
        yield from _recovered(path, want, report, str(exc))
        return
    report.bags_read.append(str(path))
    given: collections.Counter = collections.Counter()
    failed = None
    try:
        conns = [c for c in reader.connections if want is None or c.topic in want]
        it = reader.messages(connections=conns) if conns else iter(())
        while True:
            try:
                conn, stamp, raw = next(it)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt storage
                failed = f'ends early after {sum(given.values())} messages: {exc}'
                break
            given[(conn.topic, int(stamp))] += 1
            yield conn, stamp, raw
    finally:
        reader.close()
    if failed is not None:
        log.warning('bag %s %s; reading the rest record by record', path, failed)
        yield from _recovered(path, want, report, failed, skip=given)


def cloud_topics(path) -> list[str]:
    """PointCloud2 topics of a bag, in connection order."""
    return list(dict.fromkeys(c.topic for c in _connections(Path(path))
                              if c.msgtype == POINTCLOUD2))


def iter_clouds(paths, topic: str | None = None, *, report: BagReport | None = None,
                max_points: int | None = None):
    """Yield (timestamp_ns, Cloud) for every PointCloud2 on ``topic``.

    Without a topic, each bag's first PointCloud2 topic is used. Clouds that
    fail to decode are counted as undecodable in ``report`` and skipped.
    """
    from p3d_perception.cloud import CloudError, implausible, pointcloud2_to_cloud
    report = report if report is not None else BagReport()
    for path in _bag_paths(paths):
        t = topic
        if t is None:
            try:
                found = cloud_topics(path)
            except Exception as exc:  # noqa: BLE001
                log.warning('skipping unreadable bag %s: %s', path, exc)
                report.bags_failed.append((str(path), str(exc)))
                continue
            if not found:
                log.warning('bag %s has no PointCloud2 topic', path)
                continue
            t = found[0]
        for _, msgtype, stamp, msg in iter_messages([path], [t], report=report):
            if msgtype != POINTCLOUD2:
                continue
            try:
                cloud = pointcloud2_to_cloud(msg, max_points=max_points, require_valid=False)
            except CloudError as exc:
                report.undecodable += 1
                log.warning('skipping a bad cloud at %d in %s: %s', stamp, path, exc)
                continue
            why = implausible(cloud)
            if why:
                report.implausible += 1
                log.warning('skipping an implausible cloud at %d in %s: %s', stamp, path, why)
                continue
            yield stamp, cloud


def _image_array(msg) -> np.ndarray:
    dt = {'16UC1': np.uint16, '32SC1': np.int32, '32FC1': np.float32, 'mono16': np.uint16}
    if msg.encoding not in dt:
        raise ValueError(f'unsupported image encoding {msg.encoding!r}')
    d = np.dtype(dt[msg.encoding]).newbyteorder('>' if msg.is_bigendian else '<')
    rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)
    return rows[:, :msg.width * d.itemsize].copy().view(d).astype(d.newbyteorder('='))


def read_ground_truth(path, *, instances: bool = False) -> list[dict]:
    """Per-frame ground truth of a synthetic bag, in stamp order.

    Each item: {stamp_ns, frame_id, camera, scene, T_camera_table (4x4 array),
    objects: [{id, category, pose (4x4 array, camera frame), size (3,)}]}; with
    ``instances=True`` also 'instance' (H, W) int32 from /ground_truth/instances.
    Uses the ground_truth.json sidecar when present, else the bag's messages.
    """
    path = Path(path)
    frames = None
    side = path / SIDECAR if path.is_dir() else path.with_name(SIDECAR)
    if side.is_file():
        try:
            frames = json.loads(side.read_text(encoding='utf-8'))['frames']
        except (ValueError, KeyError) as exc:
            log.warning('ignoring unreadable %s: %s', side, exc)
    if frames is None:
        frames = [json.loads(msg.data) for _, _, _, msg
                  in iter_messages([path], [OBJECTS_TOPIC])]
        if not frames:
            raise BagError(f'{path}: no ground truth (no {SIDECAR}, no {OBJECTS_TOPIC})')
    for f in frames:
        f['T_camera_table'] = np.asarray(f.get('T_camera_table', np.eye(4)), np.float64)
        for o in f['objects']:
            o['pose'] = np.asarray(o['pose'], np.float64)
            o['size'] = np.asarray(o['size'], np.float64)
    frames.sort(key=lambda f: f['stamp_ns'])
    if instances:
        by_stamp = {}
        for _, _, stamp, msg in iter_messages([path], [INSTANCES_TOPIC]):
            st = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            by_stamp[st] = _image_array(msg).astype(np.int32)
        for f in frames:
            f['instance'] = by_stamp.get(f['stamp_ns'])
    return frames
