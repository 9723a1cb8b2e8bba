# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Recorded bags -> a dataset of object clusters a person labels, for fine-tuning.

A model trained on the synthetic world meets objects the robot has never seen;
the cheapest labelled data for them is what the robot already recorded. So the
clusters are cut with exactly the node's segmenter and filters, pre-labelled by
the current model (a person corrects proposals faster than typing names), and
grouped across frames so one label covers every view of an object: grouping
uses the node's object memory on boxes expressed in a fixed frame from the
bag's TF, because in the sensor frame a moving camera moves every object.

The dataset is a directory (``clusters.npz`` + ``clusters.csv`` per cluster,
``labels.csv`` per group for the person, pictures, ``dataset.json``) whose
names are a contract with the fine-tuning code; :func:`load_dataset` and
:func:`read_labels` are its reader. Nothing here imports rclpy.
"""

from __future__ import annotations

import base64
import bisect
import collections
import csv
import dataclasses
import datetime
import html
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CLUSTERS_NPZ = 'clusters.npz'
CLUSTERS_CSV = 'clusters.csv'
LABELS_CSV = 'labels.csv'
META_JSON = 'dataset.json'
INDEX_HTML = 'index.html'
SHEET_STEM = 'contact_sheet'

CLUSTER_COLUMNS = (
    'cluster_id', 'group_id', 'bag', 'topic', 'frame_index', 'stamp_ns', 'frame_id',
    'center_x', 'center_y', 'center_z', 'size_x', 'size_y', 'size_z', 'point_count',
    'proposed_label', 'proposed_score', 'gt_label', 'gt_iou')
LABEL_COLUMNS = ('group_id', 'label', 'proposed_label', 'proposed_score', 'clusters', 'frames',
                 'first_cluster')
#: what a person writes in labels.csv to say "not an object / do not train on this"
JUNK_LABELS = frozenset({'-', 'ignore'})
_INT_COLUMNS = ('cluster_id', 'group_id', 'frame_index', 'stamp_ns', 'point_count')
_FLOAT_COLUMNS = ('center_x', 'center_y', 'center_z', 'size_x', 'size_y', 'size_z',
                  'proposed_score')

THUMB_SIZE = 64
SHEET_COLS, SHEET_ROWS = 8, 6
GROUPS_PER_SHEET = SHEET_COLS * SHEET_ROWS
HTML_THUMBS_PER_GROUP = 6
#: classify's top-k; a group's proposal score averages each cluster's score for it
TOP_K = 5

COLUMN_HELP = {
    'clusters.csv': {
        'cluster_id': 'row index = index into clusters.npz (offsets, embeddings, thumbnails)',
        'group_id': 'the same physical object across frames (see labels.csv)',
        'bag': 'bag path as given on the command line',
        'topic': 'PointCloud2 topic',
        'frame_index': 'index of the cloud message within its bag and topic (0-based, all '
                       'messages counted, also those skipped by --every)',
        'stamp_ns': 'the cloud header stamp',
        'frame_id': 'the cloud frame (points, centre and size are in it)',
        'center_x/y/z, size_x/y/z': 'the cluster box in the sensor frame (m); size is along '
                                    'the box axes',
        'point_count': 'points of the cluster',
        'proposed_label, proposed_score': "the model's top label and its probability over "
                                          'the vocabulary',
        'gt_label, gt_iou': 'synthetic bags only: category of the ground-truth instance '
                            "holding most of the cluster's pixels ('-' = background) and "
                            "the IoU with that instance's valid pixels; empty otherwise",
    },
    'labels.csv': {
        'group_id': 'one row per group (object seen across frames)',
        'label': 'EDIT THIS: a category name (new names are fine); - or ignore = junk; '
                 'empty = not labelled (not used for training)',
        'proposed_label': 'majority proposal over the clusters of the group',
        'proposed_score': "mean over the group's clusters of their score for that label",
        'clusters': 'number of clusters in the group',
        'frames': 'number of distinct frames the group was seen in',
        'first_cluster': 'cluster_id of its first cluster (the contact-sheet picture)',
    },
    'clusters.npz': {
        'points': 'float32 (P,3) all clusters in the sensor frame, concatenated',
        'colors': 'float32 (P,3) in [0,1], zeros without colour',
        'has_color': 'bool (C,)',
        'offsets': 'int64 (C+1,): cluster i is points[offsets[i]:offsets[i+1]]',
        'embeddings': 'float32 (C,D) of the pre-labelling model',
        'thumbnails': 'uint8 (C,64,64,3) view along the camera axis',
        'up': "float32 (C,3) support-plane normal the recognizer used (the 'up' of the "
              'cluster frame); NaN where none was known',
        'indices': 'int32 (P,) index of each point in its cloud message (row-major pixel '
                   'of an organised cloud), aligned with points',
        'crops': 'uint8 (C,64,64,3) the colour image around the cluster (organised clouds '
                 'with colour; the rest of the image faded), white where has_crop is false',
        'has_crop': 'bool (C,)',
    },
}


class DatasetError(ValueError):
    """A dataset directory or labels file that cannot be used; the message says what to do."""


# ------------------------------------------------------------------ transforms

def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a quaternion, normalised first (bags store rounded values)."""
    q = np.array([x, y, z, w], np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f'not a rotation quaternion: {q.tolist()}')
    x, y, z, w = q / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _frame(name: str) -> str:
    return str(name).strip().lstrip('/')


class TransformTree:
    """A bag's /tf and /tf_static by child frame, to look clouds up in the tree's root.

    A lookup takes, per edge, the latest transform stamped at or before the cloud
    (static ones always qualify; no interpolation: a label needs a group, not a
    millimetre). A cloud older than every transform of an edge uses that edge's
    first one, because recordings often start with a cloud before the first /tf.
    """

    _STATIC = -(1 << 62)

    def __init__(self) -> None:
        self._edges: dict[str, list[tuple[int, str, np.ndarray]]] = {}
        self._stamps: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._edges.values())

    def add(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray,
            static: bool = False) -> None:
        parent, child = _frame(parent), _frame(child)
        if not parent or not child or parent == child:
            return
        edges = self._edges.setdefault(child, [])
        edges.append((self._STATIC if static else int(stamp_ns), parent,
                      np.asarray(T_parent_child, np.float64)))
        self._stamps.pop(child, None)

    def add_message(self, msg: Any, static: bool = False) -> None:
        """Add every transform of a tf2_msgs/TFMessage."""
        for tf in msg.transforms:
            tr, q = tf.transform.translation, tf.transform.rotation
            T = np.eye(4)
            T[:3, :3] = quaternion_matrix(q.x, q.y, q.z, q.w)
            T[:3, 3] = (tr.x, tr.y, tr.z)
            stamp = int(tf.header.stamp.sec) * 1_000_000_000 + int(tf.header.stamp.nanosec)
            self.add(tf.header.frame_id, tf.child_frame_id, stamp, T, static)

    def _edge(self, child: str, stamp_ns: int):
        edges = self._edges.get(child)
        if not edges:
            return None
        stamps = self._stamps.get(child)
        if stamps is None:
            edges.sort(key=lambda e: e[0])
            stamps = self._stamps[child] = [e[0] for e in edges]
        i = bisect.bisect_right(stamps, int(stamp_ns)) - 1
        return edges[max(i, 0)]

    def lookup(self, frame_id: str, stamp_ns: int) -> tuple[str, np.ndarray] | None:
        """(root frame, 4x4 T_root_frame) at ``stamp_ns``, or None without TF for the frame."""
        frame = _frame(frame_id)
        if frame not in self._edges:
            return None
        T = np.eye(4)
        seen = {frame}
        while True:
            edge = self._edge(frame, stamp_ns)
            if edge is None:
                return frame, T
            _, parent, T_pc = edge
            T = T_pc @ T
            if parent in seen:
                log.warning('TF loop through %s; grouping in %s', parent, frame)
                return frame, T
            seen.add(parent)
            frame = parent

    @classmethod
    def from_bag(cls, path: str | Path) -> 'TransformTree':
        """All /tf and /tf_static transforms of one bag (read problems are only logged)."""
        from p3d_perception.bagio import BagReport, TF_STATIC_TOPIC, TF_TOPIC, iter_messages
        tree = cls()
        for topic, msgtype, _, msg in iter_messages([path], [TF_TOPIC, TF_STATIC_TOPIC],
                                                    report=BagReport()):
            if msgtype == 'tf2_msgs/msg/TFMessage':
                try:
                    tree.add_message(msg, static=topic == TF_STATIC_TOPIC)
                except (ValueError, AttributeError) as exc:
                    log.warning('%s: skipping a bad transform on %s: %s', path, topic, exc)
        return tree


# ------------------------------------------------------------------ pictures

def render_thumbnail(points: np.ndarray, colors: np.ndarray | None, frame_id: str = '',
                     size: int = THUMB_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 orthographic view of a cluster along the camera axis, on white.

    Optical frames (z forward, y down) are seen along z; other frames are taken
    as ROS body frames (x forward, z up) and seen along x. Near points cover far
    ones; without colour, points are shaded by depth (near = dark).
    """
    img = np.full((size, size, 3), 255, np.uint8)
    p = np.asarray(points, np.float64).reshape(-1, 3)
    keep = np.isfinite(p).all(axis=1)
    p = p[keep]
    if not len(p):
        return img
    if 'optical' in frame_id or not frame_id:
        u, v, d = p[:, 0], p[:, 1], p[:, 2]
    else:
        u, v, d = -p[:, 1], -p[:, 2], p[:, 0]
    if colors is not None:
        c = np.asarray(colors)[keep]
        rgb = (np.clip(c, 0, 1) * 255 if c.dtype.kind == 'f' else c).astype(np.uint8)
    else:
        span = float(d.max() - d.min())
        t = (d - d.min()) / span if span > 1e-9 else np.zeros_like(d)
        g = (50 + 150 * t).astype(np.uint8)
        rgb = np.repeat(g[:, None], 3, axis=1)
    margin = 3
    extent = max(float(u.max() - u.min()), float(v.max() - v.min()), 1e-6)
    scale = (size - 2 * margin - 1) / extent
    cu, cv = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
    x = np.round((u - cu) * scale + (size - 1) / 2).astype(np.int64)
    y = np.round((v - cv) * scale + (size - 1) / 2).astype(np.int64)
    splat = int(np.clip(round(1.3 * size / math.sqrt(len(p))), 1, 4))
    order = np.argsort(-d, kind='stable')
    x, y, rgb = x[order], y[order], rgb[order]
    off = -(splat // 2)
    for dy in range(splat):
        for dx in range(splat):
            img[np.clip(y + off + dy, 0, size - 1), np.clip(x + off + dx, 0, size - 1)] = rgb
    return img


#: share of the cluster's pixel box added around it in an RGB crop (context to recognise it)
CROP_MARGIN = 0.25
#: how much of the image outside the cluster's own pixels shows through in a crop
CROP_FADE = 0.4


def rgb_crop(colors: np.ndarray | None, height: int, width: int, indices: np.ndarray,
             size: int = THUMB_SIZE, margin: float = CROP_MARGIN) -> np.ndarray | None:
    """(size, size, 3) uint8 camera image around a cluster, or None without one.

    A person names an object from its colour picture far faster than from a point
    splat, and an organised cloud is a picture: the cluster's pixel box (plus
    ``margin``) is cut from the cloud's colour grid, squared, and everything that is
    not the cluster's own pixels is faded, so it is clear which object is meant.
    Invalid (NaN) points keep their colour in Kinect/RealSense clouds, so holes do
    not show. Unorganised or colourless clouds have no picture: None.
    """
    if colors is None or height <= 1 or width <= 1 or len(indices) == 0:
        return None
    cols = np.asarray(colors)
    if cols.shape != (height * width, 3):
        return None
    idx = np.asarray(indices, np.int64)
    r, c = idx // width, idx % width
    span = max(int(r.max() - r.min()), int(c.max() - c.min())) + 1
    side = max(4, int(math.ceil(span * (1 + 2 * margin))))
    top = (r.min() + r.max()) / 2 - side / 2
    left = (c.min() + c.max()) / 2 - side / 2
    steps = (np.arange(size) + 0.5) * side / size
    ys = np.floor(top + steps).astype(np.int64)
    xs = np.floor(left + steps).astype(np.int64)
    in_y, in_x = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
    yy, xx = np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)
    image = cols.reshape(height, width, 3)
    if image.dtype.kind == 'f':
        image = np.clip(image * 255, 0, 255)
    pix = image[yy[:, None], xx[None, :]].astype(np.float32)
    mask = np.zeros(height * width, bool)
    mask[idx] = True
    own = mask.reshape(height, width)[yy[:, None], xx[None, :]]
    faded = CROP_FADE * pix + (1 - CROP_FADE) * 255
    out = np.where(own[..., None], pix, faded)
    out[~in_y] = 255
    out[:, ~in_x] = 255
    return np.round(out).astype(np.uint8)


def _crops(arrays: dict) -> np.ndarray | None:
    """The crops of a dataset's arrays with white where none exists; None if none does."""
    crops, has = arrays.get('crops'), arrays.get('has_crop')
    if crops is None or has is None or len(has) != len(crops) or not np.any(has):
        return None
    return np.where(np.asarray(has, bool)[:, None, None, None], crops, 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 image (for data URIs)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.image
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.ascontiguousarray(img), format='png')
    return buf.getvalue()


def _caption(g: dict) -> str:
    n = int(g['clusters'])
    return (f'#{g["group_id"]}  {g["proposed_label"]} {float(g["proposed_score"]):.2f}  '
            f'({n} cluster{"s" if n != 1 else ""})')


def write_contact_sheets(root: str | Path, groups: Sequence[dict], thumbnails: np.ndarray,
                         crops: np.ndarray | None = None) -> list[Path]:
    """One tile per group (its first cluster), GROUPS_PER_SHEET to a page; returns the files.

    With ``crops`` (the colour picture of each cluster, see :func:`rgb_crop`) a tile
    shows the picture beside the point view: the picture says what it is, the point
    view what the model was given.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    root = Path(root)
    for old in root.glob(f'{SHEET_STEM}*.png'):
        old.unlink()
    scale, cell_h, top = 2, 160, 6
    tile = THUMB_SIZE * scale
    pictures = [thumbnails] if crops is None else [crops, thumbnails]
    gap = 6
    cell_w = max(190, len(pictures) * tile + (len(pictures) - 1) * gap + 20)
    pages = [list(groups[i:i + GROUPS_PER_SHEET])
             for i in range(0, len(groups), GROUPS_PER_SHEET)] or [[]]
    paths = []
    for n, page in enumerate(pages):
        rows = max(1, -(-len(page) // SHEET_COLS))
        sheet = np.full((rows * cell_h, SHEET_COLS * cell_w, 3), 255, np.uint8)
        spots = []
        for k, g in enumerate(page):
            r, c = divmod(k, SHEET_COLS)
            width = len(pictures) * tile + (len(pictures) - 1) * gap
            y0 = r * cell_h + top
            for j, pics in enumerate(pictures):
                x0 = c * cell_w + (cell_w - width) // 2 + j * (tile + gap)
                th = pics[int(g['first_cluster'])]
                sheet[y0:y0 + tile, x0:x0 + tile] = th.repeat(scale, 0).repeat(scale, 1)
                sheet[y0:y0 + tile, [x0, x0 + tile - 1]] = 200
                sheet[[y0, y0 + tile - 1], x0:x0 + tile] = 200
            spots.append((c * cell_w + cell_w / 2, y0 + tile + 3, _caption(g)))
        h, w = sheet.shape[:2]
        fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(sheet, interpolation='nearest')
        for x, y, text in spots:
            ax.text(x, y, text, ha='center', va='top', fontsize=6.5, family='monospace')
        if not page:
            ax.text(w / 2, h / 2, 'no clusters', ha='center', va='center', fontsize=14)
        ax.set_axis_off()
        path = root / (f'{SHEET_STEM}.png' if n == 0 else f'{SHEET_STEM}_{n + 1}.png')
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _labels_line(g: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator='').writerow(_label_record(g))
    return buf.getvalue()


def write_index_html(root: str | Path, groups: Sequence[dict], rows: Sequence[dict],
                     thumbnails: np.ndarray, meta: dict, crops: np.ndarray | None = None
                     ) -> Path:
    """A self-contained page (images inline) to look through the groups while labelling.

    Each group shows the colour picture of up to HTML_THUMBS_PER_GROUP of its clusters
    (with ``crops``) above their point views.
    """
    root = Path(root)
    members: dict[int, list[int]] = collections.defaultdict(list)
    for r in rows:
        members[int(r['group_id'])].append(int(r['cluster_id']))
    parts = [
        '<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
        f'<title>p3d bags dataset: {html.escape(root.name)}</title>',
        '<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}'
        'td,th{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:middle;'
        'text-align:left}img{width:96px;height:96px;image-rendering:pixelated;'
        'border:1px solid #ccc;margin:1px}code{background:#f4f4f4;padding:2px 4px}'
        '</style></head><body>',
        f'<h1>{html.escape(root.name)}</h1>',
        f'<p>{len(groups)} groups, {len(rows)} clusters. Model: '
        f'<code>{html.escape(str(meta.get("model", "")))}</code>. Edit '
        f'<code>{html.escape(str(root / LABELS_CSV))}</code>: write a category in the '
        '<code>label</code> column of a group (a new name is fine; <code>-</code> or '
        '<code>ignore</code> marks junk; empty = unlabelled), then run<br><code>p3d finetune '
        f'--dataset {html.escape(str(root))} --labels {html.escape(str(root / LABELS_CSV))} '
        '--out models/NAME</code></p>',
        f'<p>labels.csv columns: <code>{",".join(LABEL_COLUMNS)}</code></p>',
        '<table><tr><th>group</th><th>clusters</th><th>proposal</th><th>score</th>'
        '<th>label</th><th>labels.csv line</th></tr>']
    for g in groups:
        ids = members.get(int(g['group_id']), [])
        if len(ids) > HTML_THUMBS_PER_GROUP:
            pick = np.linspace(0, len(ids) - 1, HTML_THUMBS_PER_GROUP).round().astype(int)
            ids = [ids[i] for i in pick]
        imgs = ''.join(
            f'<img alt="cluster {i}" title="cluster {i}" src="data:image/png;base64,'
            f'{base64.b64encode(png_bytes(thumbnails[i])).decode("ascii")}">' for i in ids)
        if crops is not None:
            imgs = ''.join(
                f'<img class="rgb" alt="colour picture of cluster {i}" title="cluster {i}, '
                f'colour" src="data:image/png;base64,'
                f'{base64.b64encode(png_bytes(crops[i])).decode("ascii")}">'
                for i in ids) + '<br>' + imgs
        parts.append(
            f'<tr id="g{g["group_id"]}"><td><b>#{g["group_id"]}</b></td>'
            f'<td>{imgs}<br><small>{g["clusters"]} clusters in {g["frames"]} frames</small>'
            f'</td><td>{html.escape(str(g["proposed_label"]))}</td>'
            f'<td>{float(g["proposed_score"]):.2f}</td>'
            f'<td>{html.escape(str(g.get("label", "")))}</td>'
            f'<td><code>{html.escape(_labels_line(g))}</code></td></tr>')
    parts.append('</table></body></html>')
    path = root / INDEX_HTML
    _write_text(path, '\n'.join(parts) + '\n')
    return path


# ------------------------------------------------------------------ files

def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file, so a crash never leaves a half-written labels.csv."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, path)


def _csv_text(columns: Sequence[str], records: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(columns)
    w.writerows(records)
    return buf.getvalue()


def _fmt(v: Any, digits: int) -> str:
    return '' if v is None or v == '' else f'{float(v):.{digits}f}'


def _cluster_record(r: dict) -> list:
    return [int(r['cluster_id']), int(r['group_id']), r['bag'], r['topic'],
            int(r['frame_index']), int(r['stamp_ns']), r['frame_id'],
            *(_fmt(r[k], 5) for k in ('center_x', 'center_y', 'center_z',
                                      'size_x', 'size_y', 'size_z')),
            int(r['point_count']), r['proposed_label'], _fmt(r['proposed_score'], 4),
            r.get('gt_label') or '', _fmt(r.get('gt_iou'), 4)]


def _label_record(g: dict) -> list:
    return [int(g['group_id']), g.get('label') or '', g['proposed_label'],
            _fmt(g['proposed_score'], 4), int(g['clusters']), int(g['frames']),
            int(g['first_cluster'])]


def write_clusters_csv(root: str | Path, rows: Sequence[dict]) -> Path:
    path = Path(root) / CLUSTERS_CSV
    _write_text(path, _csv_text(CLUSTER_COLUMNS, (_cluster_record(r) for r in rows)))
    return path


def write_labels(root: str | Path, groups: Sequence[dict]) -> Path:
    """labels.csv from group dicts with the LABEL_COLUMNS keys (label may be empty)."""
    path = Path(root) / LABELS_CSV
    _write_text(path, _csv_text(LABEL_COLUMNS, (_label_record(g) for g in groups)))
    return path


def _save_arrays(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = root / CLUSTERS_NPZ
    tmp = root / (CLUSTERS_NPZ + '.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _load_arrays(root: Path) -> dict[str, np.ndarray]:
    path = root / CLUSTERS_NPZ
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f'{path} cannot be read ({exc}); extract the dataset again with '
                           '`p3d bags extract BAG ... --out DIR --overwrite`') from exc
    need = ('points', 'colors', 'has_color', 'offsets', 'embeddings', 'thumbnails')
    missing = [k for k in need if k not in arrays]
    if missing:
        raise DatasetError(f'{path} lacks {", ".join(missing)}; extract the dataset again '
                           'with `p3d bags extract ... --overwrite`')
    return arrays


# ------------------------------------------------------------------ reading

@dataclasses.dataclass
class BagDataset:
    """A loaded dataset: cluster i is points[i] / colors[i] / embeddings[i] / rows[i]."""

    root: Path
    points: list[np.ndarray]
    colors: list[np.ndarray]
    embeddings: np.ndarray
    rows: list[dict]
    meta: dict
    has_color: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    #: (C, 3) support normal per cluster's frame (NaN: unknown); recognizer.set_up_vector
    up: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3), np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels_csv(self) -> Path:
        return self.root / LABELS_CSV

    @property
    def group_ids(self) -> list[int]:
        return sorted({int(r['group_id']) for r in self.rows})


def _convert_row(raw: dict, line: int, path: Path) -> dict:
    row: dict[str, Any] = dict(raw)
    try:
        for k in _INT_COLUMNS:
            row[k] = int(raw[k])
        for k in _FLOAT_COLUMNS:
            row[k] = float(raw[k])
        row['gt_iou'] = float(raw['gt_iou']) if raw['gt_iou'] not in ('', None) else None
    except (TypeError, ValueError) as exc:
        raise DatasetError(f'{path}, line {line}: bad value ({exc}); clusters.csv is written '
                           'by `p3d bags extract`, do not edit it (edit labels.csv)') from exc
    row['gt_label'] = raw['gt_label'] or ''
    return row


def load_dataset(path: str | Path) -> BagDataset:
    """Read a dataset written by ``p3d bags extract``; DatasetError says what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f'dataset not found: {root} is not a directory; create it with '
                           '`p3d bags extract BAG [BAG ...] --out DIR`')
    missing = [n for n in (META_JSON, CLUSTERS_NPZ, CLUSTERS_CSV) if not (root / n).is_file()]
    if missing:
        raise DatasetError(f'{root} is not a complete bags dataset (missing '
                           f'{", ".join(missing)}); create it with `p3d bags extract BAG '
                           f'[BAG ...] --out {root} --overwrite`')
    try:
        meta = json.loads((root / META_JSON).read_text(encoding='utf-8'))
    except ValueError as exc:
        raise DatasetError(f'{root / META_JSON} is not valid JSON ({exc})') from exc
    if meta.get('format_version') != FORMAT_VERSION:
        raise DatasetError(f'{root / META_JSON}: format_version {meta.get("format_version")!r}'
                           f', this code reads {FORMAT_VERSION}; extract the bags again')
    a = _load_arrays(root)
    pts, cols, off = a['points'], a['colors'], a['offsets'].astype(np.int64)
    c = len(off) - 1
    problems = []
    if pts.ndim != 2 or pts.shape[1:] != (3,) or cols.shape != pts.shape:
        problems.append(f'points {pts.shape} / colors {cols.shape} must both be (P, 3)')
    if c < 0 or (c >= 0 and (off[0] != 0 or off[-1] != len(pts) or np.any(np.diff(off) < 0))):
        problems.append(f'offsets must rise from 0 to {len(pts)}')
    for k in ('has_color', 'embeddings', 'thumbnails'):
        if len(a[k]) != max(c, 0):
            problems.append(f'{k} has {len(a[k])} rows for {c} clusters')
    up = a.get('up', np.full((max(c, 0), 3), np.nan, np.float32))
    if len(up) != max(c, 0):
        problems.append(f'up has {len(up)} rows for {c} clusters')
    csv_path = root / CLUSTERS_CSV
    with open(csv_path, newline='', encoding='utf-8') as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CLUSTER_COLUMNS:
            raise DatasetError(f'{csv_path}: columns {reader.fieldnames} differ from '
                               f'{list(CLUSTER_COLUMNS)}; extract the bags again')
        rows = [_convert_row(r, reader.line_num, csv_path) for r in reader]
    if len(rows) != c:
        problems.append(f'{CLUSTERS_CSV} has {len(rows)} rows for {c} clusters in '
                        f'{CLUSTERS_NPZ}')
    else:
        counts = np.diff(off)
        for i, r in enumerate(rows):
            if r['cluster_id'] != i:
                problems.append(f'{CLUSTERS_CSV} row {i} has cluster_id {r["cluster_id"]}')
                break
            if r['point_count'] != counts[i]:
                problems.append(f'cluster {i}: point_count {r["point_count"]} but '
                                f'{counts[i]} points stored')
                break
    if problems:
        raise DatasetError(f'{root} is inconsistent: ' + '; '.join(problems) + '. Were files '
                           'copied from different runs? Extract the bags again with '
                           '`p3d bags extract ... --overwrite`')
    return BagDataset(
        root=root, points=[pts[off[i]:off[i + 1]] for i in range(c)],
        colors=[cols[off[i]:off[i + 1]] for i in range(c)],
        embeddings=a['embeddings'].astype(np.float32, copy=False), rows=rows, meta=meta,
        has_color=a['has_color'].astype(bool), up=np.asarray(up, np.float32))


def _clean_label(text: str | None) -> str:
    return ' '.join(str(text or '').split())


def read_group_labels(labels_csv: str | Path, known_groups: Iterable[int] | None = None,
                      ) -> dict[int, str]:
    """group_id -> label as written (junk markers kept, empty labels left out).

    Only the group_id and label columns are needed, so a trimmed file works. A
    UTF-8 BOM (spreadsheet exports) is accepted. Malformed rows, duplicates and
    groups not in ``known_groups`` raise DatasetError naming the line.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise DatasetError(f'labels file not found: {path}')
    known = None if known_groups is None else set(int(g) for g in known_groups)
    out: dict[int, str] = {}
    seen: set[int] = set()
    with open(path, newline='', encoding='utf-8-sig') as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f'{path} is empty; expected the header '
                               f'{",".join(LABEL_COLUMNS)}')
        header = [h.strip() for h in header]
        if 'group_id' not in header or 'label' not in header:
            raise DatasetError(f'{path}, line 1: the header needs group_id and label columns, '
                               f'got {",".join(header)}')
        gi, li = header.index('group_id'), header.index('label')
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(f'{path}, line {line}: {len(fields)} fields, the header has '
                                   f'{len(header)} (quote a label containing a comma: '
                                   '"a, b")')
            try:
                gid = int(fields[gi].strip())
            except ValueError:
                raise DatasetError(f'{path}, line {line}: group_id {fields[gi]!r} is not a '
                                   'number') from None
            if known is not None and gid not in known:
                raise DatasetError(f'{path}, line {line}: group {gid} is not in the dataset '
                                   '(is this the labels file of another dataset?)')
            if gid in seen:
                raise DatasetError(f'{path}, line {line}: group {gid} appears twice')
            seen.add(gid)
            label = _clean_label(fields[li])
            if label:
                out[gid] = label
    return out


def is_junk(label: str) -> bool:
    return _clean_label(label).lower() in JUNK_LABELS


def read_labels(dataset: BagDataset, labels_csv: str | Path | None = None) -> dict[int, str]:
    """cluster_id -> label for every cluster of a labelled (non-junk) group."""
    path = Path(labels_csv) if labels_csv is not None else dataset.labels_csv
    by_group = read_group_labels(path, dataset.group_ids)
    return {int(r['cluster_id']): by_group[int(r['group_id'])] for r in dataset.rows
            if int(r['group_id']) in by_group and not is_junk(by_group[int(r['group_id'])])}


# ------------------------------------------------------------------ groups

def summarise_groups(rows: Sequence[dict], scores: Sequence[dict[str, float]],
                     labels: dict[int, str] | None = None,
                     accept_above: float | None = None) -> list[dict]:
    """labels.csv rows: majority proposal per group and its mean score over the group.

    A cluster's score for a label outside its top-k counts as 0, so a group whose
    clusters disagree gets a lower score than one whose clusters agree. ``labels``
    (group -> label already written) are kept; ``accept_above`` fills only the
    empty ones.
    """
    labels = labels or {}
    members: dict[int, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        members[int(r['group_id'])].append(i)
    groups = []
    for gid in sorted(members):
        idx = members[gid]
        votes = collections.Counter(rows[i]['proposed_label'] for i in idx)
        total = {lab: sum(scores[i].get(lab, 0.0) for i in idx) for lab in votes}
        best = max(votes, key=lambda lab: (votes[lab], total[lab]))
        score = float(np.mean([scores[i].get(best, 0.0) for i in idx]))
        label = labels.get(gid, '')
        if not label and accept_above is not None and score >= accept_above:
            label = best
        groups.append({
            'group_id': gid, 'label': label, 'proposed_label': best, 'proposed_score': score,
            'clusters': len(idx),
            'frames': len({(rows[i]['bag'], rows[i]['topic'], int(rows[i]['frame_index']))
                           for i in idx}),
            'first_cluster': min(int(rows[i]['cluster_id']) for i in idx)})
    return groups


# ------------------------------------------------------------------ extraction

DATASET_FILES = (CLUSTERS_NPZ, CLUSTERS_CSV, LABELS_CSV, META_JSON, INDEX_HTML)


@dataclasses.dataclass
class DatasetSummary:
    """What an extract or relabel produced, for the command's printout."""

    root: Path
    report: Any                   # bagio.BagReport (None for a relabel)
    clouds_read: int
    clouds_used: int
    clusters: int
    groups: int
    labelled_groups: int
    fixed_frames: dict
    files: list[Path]
    kept_labels: int = 0
    changed_proposals: int = 0
    frames_failed: int = 0


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty directory without ``overwrite`` (it may hold a person's labels)."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f'{root} exists and is not a directory')
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        extra = ' (its labels.csv would be lost)' if (root / LABELS_CSV).exists() else ''
        raise FileExistsError(f'{root} exists and is not empty{extra}; pass --overwrite to '
                              'replace the dataset, or use `p3d bags label` to re-run only '
                              'the pre-labelling')
    return root


def _clear_dataset(root: Path) -> None:
    """Remove a previous dataset's files only: the directory may hold a person's other files."""
    for name in DATASET_FILES:
        (root / name).unlink(missing_ok=True)
    for p in root.glob(f'{SHEET_STEM}*.png'):
        p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _bag_topics(path: Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) from a bag's index, without reading data.

    A topic with a PointCloud2 connection counts as a PointCloud2 topic even when a
    second publisher of another type shares it (its messages are skipped by type);
    a damaged bag's topics come from a record-by-record scan (counts 0).
    """
    from p3d_perception.bagio import POINTCLOUD2, topic_types
    out: dict[str, tuple[str, int]] = {}
    for topic, types in topic_types(path).items():
        msgtype = POINTCLOUD2 if POINTCLOUD2 in types else next(iter(types))
        out[topic] = (msgtype, types[msgtype])
    return out


def _pick_topic(path: Path, topics: dict[str, tuple[str, int]], wanted: str | None
                ) -> tuple[str | None, str]:
    from p3d_perception.bagio import CLOUD_TOPIC, POINTCLOUD2
    clouds = [t for t, (mt, _) in topics.items() if mt == POINTCLOUD2]
    if wanted is not None:
        if wanted in clouds:
            return wanted, ''
        return None, (f'no PointCloud2 topic {wanted!r} (PointCloud2 topics: '
                      f'{", ".join(clouds) or "none"})')
    if not clouds:
        return None, 'no PointCloud2 topic'
    pick = CLOUD_TOPIC if CLOUD_TOPIC in clouds else clouds[0]
    if len(clouds) > 1:
        log.warning('%s has several PointCloud2 topics (%s); using %s (choose with --topic)',
                    path, ', '.join(clouds), pick)
    return pick, ''


def _ground_truth(path: Path, topics: dict) -> dict[int, dict]:
    """stamp -> ground-truth frame with an instance image, for synthetic bags only."""
    from p3d_perception.bagio import INSTANCES_TOPIC, SIDECAR, read_ground_truth
    if INSTANCES_TOPIC not in topics and not (path.is_dir() and (path / SIDECAR).is_file()):
        return {}
    try:
        frames = read_ground_truth(path, instances=True)
    except Exception as exc:  # noqa: BLE001 - ground truth is optional
        log.warning('%s: ground truth present but unreadable (%s); gt columns stay empty',
                    path, exc)
        return {}
    return {int(f['stamp_ns']): f for f in frames if f.get('instance') is not None}


def _gt_match(indices: np.ndarray, inst: np.ndarray, valid: np.ndarray,
              categories: dict[int, str]) -> tuple[str, float]:
    ids = inst[indices]
    vals, counts = np.unique(ids, return_counts=True)
    top = int(vals[np.argmax(counts)])
    if top <= 0:
        return '-', 0.0
    inter = int(((ids == top) & valid[indices]).sum())
    union = int(valid[indices].sum()) + int(((inst == top) & valid).sum()) - inter
    return categories.get(top, str(top)), inter / union if union else 0.0


def _load_recognizer(model: str | Path | None, device: str, vocabulary: Sequence[str] | None,
                     max_clusters_per_frame: int | None = None):
    """(Pipeline, model path): the node's segmenter, filters and recognizer."""
    from p3d_perception.pipeline import Pipeline, PipelineConfig
    from p3d_perception.recognize import Recognizer
    from p3d_perception.resources import default_model_path
    path = Path(model) if model else default_model_path()
    cfg = PipelineConfig()
    if max_clusters_per_frame is not None:
        cfg.max_objects_per_frame = int(max_clusters_per_frame)
    recognizer = Recognizer.from_checkpoint(path, device=device)
    pipeline = Pipeline(recognizer, cfg)
    if vocabulary:
        pipeline.set_vocabulary(list(vocabulary))
    return pipeline, path


def _report_dict(report, skipped_topics: dict[str, str], frames_failed: int = 0) -> dict:
    return {
        'summary': report.summary(), 'bags_read': list(report.bags_read),
        'bags_failed': [{'bag': b, 'reason': r} for b, r in report.bags_failed],
        'truncated': [{'bag': b, 'reason': r} for b, r in report.truncated],
        'bags_without_topic': [{'bag': b, 'reason': r} for b, r in skipped_topics.items()],
        'messages': int(report.messages), 'undecodable': int(report.undecodable),
        'recovered': dict(report.recovered), 'implausible_clouds': int(report.implausible),
        'frames_failed': int(frames_failed), 'per_topic': dict(report.per_topic)}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _write_all(root: Path, arrays: dict, rows: list[dict], groups: list[dict],
               meta: dict) -> list[Path]:
    files = [_save_arrays(root, arrays), write_clusters_csv(root, rows),
             write_labels(root, groups)]
    crops = _crops(arrays)
    files += write_contact_sheets(root, groups, arrays['thumbnails'], crops)
    files.append(write_index_html(root, groups, rows, arrays['thumbnails'], meta, crops))
    path = root / META_JSON
    _write_text(path, json.dumps(meta, indent=2) + '\n')
    files.append(path)
    return files


def extract_dataset(bags: Sequence[str | Path], out: str | Path, *, topic: str | None = None,
                    every: int = 5, model: str | Path | None = None,
                    vocabulary: Sequence[str] | None = None, device: str = 'auto',
                    accept_above: float | None = None,
                    max_clusters_per_frame: int | None = None, overwrite: bool = False,
                    command: str = '', progress: bool = True) -> DatasetSummary:
    """Segment, pre-label and group every ``every``-th cloud of the bags into ``out``.

    Damaged bags are read record by record (their complete messages are kept);
    unreadable or topic-less bags, undecodable or implausible clouds and frames that
    fail are logged, counted in dataset.json and skipped, and the rest is kept;
    DatasetError only when no cloud at all could be read (then nothing is written).
    """
    from tqdm import tqdm

    from p3d_perception.bagio import BagReport
    from p3d_perception.config import to_dict
    if every < 1:
        raise ValueError(f'--every must be >= 1, got {every}')
    if accept_above is not None and not 0.0 <= accept_above <= 1.0:
        raise ValueError(f'--accept-above must be in [0, 1], got {accept_above}')
    if max_clusters_per_frame is not None and max_clusters_per_frame < 1:
        raise ValueError('--max-clusters-per-frame must be >= 1')
    bags = [Path(b) for b in bags]
    if not bags:
        raise ValueError('no bags given')
    root = check_output_dir(out, overwrite)
    report = BagReport()
    skipped_topics: dict[str, str] = {}
    plan = []
    for path in bags:
        if not path.exists():
            log.warning('skipping %s: not found', path)
            report.bags_failed.append((str(path), 'not found'))
            continue
        try:
            topics = _bag_topics(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable bag is reported, not fatal
            log.warning('skipping unreadable bag %s: %s', path, exc)
            report.bags_failed.append((str(path), str(exc)))
            continue
        t, why = _pick_topic(path, topics, topic)
        if t is None:
            log.warning('skipping %s: %s', path, why)
            skipped_topics[str(path)] = why
            continue
        plan.append((path, t, topics))
        if every > 1 and path.is_dir() and (path / PCD_SOURCES).is_file():
            log.warning('%s was written from PCD scans (each message a separate capture); '
                        '--every %d uses only every %d-th of them (--every 1 uses all)',
                        path, every, every)
    if not plan:
        raise DatasetError(_nothing_read(bags, report, skipped_topics))

    pipeline, model_path = _load_recognizer(model, device, vocabulary, max_clusters_per_frame)
    cfg, recognizer = pipeline.config, pipeline.recognizer
    mem_cfg = dataclasses.replace(cfg.memory, expire_s=0.0, max_objects=10_000_000)
    points, colors, has_color, embeddings, ups, thumbs = [], [], [], [], [], []
    indices: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    has_crop: list[bool] = []
    rows: list[dict] = []
    scores: list[dict[str, float]] = []
    group_of: dict[tuple[int, int], int] = {}
    fixed_frames: dict[str, dict] = {}
    total = sum(topics[t][1] for _, t, topics in plan)
    bar = tqdm(total=total or None, unit='cloud', desc='bags extract', disable=not progress)
    state = {'clouds_read': 0, 'clouds_used': 0, 'frames_failed': 0}
    for bi, (path, t, topics) in enumerate(plan):
        try:
            fixed_frames[str(path)] = _extract_bag(
                bi, path, t, topics, every, pipeline, report, mem_cfg, bar, state, group_of,
                (points, colors, has_color, embeddings, ups, thumbs, rows, scores, indices,
                 crops, has_crop))
        except Exception as exc:  # noqa: BLE001 - one broken bag must not lose the others
            log.warning('%s: extraction stopped by %s: %s; its clusters so far are kept, the '
                        'other bags are read', path, type(exc).__name__, exc)
            report.bags_failed.append((str(path), f'extraction stopped: {exc}'))
    clouds_read, clouds_used = state['clouds_read'], state['clouds_used']
    bar.close()
    if clouds_read == 0:
        raise DatasetError(_nothing_read(bags, report, skipped_topics))
    if not rows:
        log.warning('no clusters in %d cloud(s): the dataset is empty', clouds_used)

    dim = embeddings[0].shape[0] if embeddings else int(recognizer.embed_text(['x']).shape[1])
    offsets = np.zeros(len(points) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in points])
    arrays = {
        'points': np.concatenate(points) if points else np.zeros((0, 3), np.float32),
        'colors': np.concatenate(colors) if colors else np.zeros((0, 3), np.float32),
        'has_color': np.asarray(has_color, bool), 'offsets': offsets,
        'embeddings': (np.stack(embeddings) if embeddings
                       else np.zeros((0, dim), np.float32)).astype(np.float32),
        'thumbnails': (np.stack(thumbs) if thumbs
                       else np.zeros((0, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)),
        'up': (np.stack(ups) if ups else np.zeros((0, 3))).astype(np.float32),
        'indices': (np.concatenate(indices) if indices else np.zeros(0)).astype(np.int32),
        'crops': (np.stack(crops) if crops
                  else np.zeros((0, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)),
        'has_crop': np.asarray(has_crop, bool)}
    groups = summarise_groups(rows, scores, accept_above=accept_above)
    no_tf = [b for b, info in fixed_frames.items() if info.get('clouds_without_tf')]
    if no_tf:
        # one line, not one per bag: PCD captures made into bags never have /tf
        frame = fixed_frames[no_tf[0]].get('no_tf_frame')
        log.warning('%d of %d bag(s) have no /tf or /tf_static transform for the cloud '
                    'frame (%r in %s%s): grouping in the sensor frame (objects group only '
                    'while the camera stays still)', len(no_tf), len(fixed_frames), frame,
                    Path(no_tf[0]).name, f' and {len(no_tf) - 1} more' if len(no_tf) > 1
                    else '')
    frames_used = {f for info in fixed_frames.values() for f in info['fixed_frames']}
    meta = {
        'format_version': FORMAT_VERSION, 'created': _now(), 'command': command,
        'bags': [str(b) for b in bags], 'topic': topic,
        'topics': {b: info['topic'] for b, info in fixed_frames.items()}, 'every': every,
        'model': str(model_path), 'text_space': recognizer.text_space,
        'vocabulary': list(recognizer.vocabulary), 'device': str(recognizer.device),
        'fixed_frame': (next(iter(frames_used)) if len(frames_used) == 1
                        else ('mixed' if frames_used else None)),
        'grouping': {
            'how': 'node object memory (p3d_perception.memory) on cluster boxes in the fixed '
                   'frame: the root of the TF tree (/tf, /tf_static, latest transform at or '
                   'before the cloud) of the cloud frame, else the sensor frame; one memory '
                   'per bag, objects never expire',
            'memory': to_dict(mem_cfg), 'per_bag': fixed_frames},
        'pipeline': {'segmentation': to_dict(cfg.segmentation),
                     'min_points_to_recognise': cfg.min_points_to_recognise,
                     'max_objects_per_frame': cfg.max_objects_per_frame},
        'counts': {'clouds_read': clouds_read, 'clouds_used': clouds_used,
                   'clusters': len(rows), 'groups': len(groups),
                   'labelled_groups': sum(1 for g in groups if g['label'])},
        'bag_report': _report_dict(report, skipped_topics, state['frames_failed']),
        'accept_above': accept_above,
        'columns': COLUMN_HELP,
        'history': [{'step': 'extract', 'time': _now(), 'command': command,
                     'model': str(model_path)}],
    }
    _clear_dataset(root)
    files = _write_all(root, arrays, rows, groups, meta)
    log.info('dataset: %d clusters in %d groups from %d cloud(s) -> %s', len(rows),
             len(groups), clouds_used, root)
    return DatasetSummary(root=root, report=report, clouds_read=clouds_read,
                          clouds_used=clouds_used, clusters=len(rows), groups=len(groups),
                          labelled_groups=meta['counts']['labelled_groups'],
                          fixed_frames=fixed_frames, files=files,
                          frames_failed=state['frames_failed'])


def _extract_bag(bi: int, path: Path, t: str, topics: dict, every: int, pipeline, report,
                 mem_cfg, bar, state: dict, group_of: dict, out: tuple) -> dict:
    """Clusters of one bag appended to ``out``; the bag's grouping info returned.

    Every message is its own unit of failure: one that cannot be decoded, holds an
    implausible cloud (flipped bits) or breaks segmentation is counted and skipped,
    and the rest of the bag is kept.
    """
    from p3d_perception.bagio import POINTCLOUD2, iter_messages
    from p3d_perception.cloud import CloudError, implausible, pointcloud2_to_cloud
    from p3d_perception.memory import ObjectMemory
    points, colors, has_color, embeddings, ups, thumbs, rows, scores, indices, crops, \
        has_crop = out
    recognizer = pipeline.recognizer
    tree = TransformTree.from_bag(path)
    truth = _ground_truth(path, topics)
    memory = ObjectMemory(mem_cfg)
    recognizer.set_up_vector(None)
    up = None
    used_frames: collections.Counter = collections.Counter()
    info = {'topic': t, 'clouds': 0, 'clouds_without_tf': 0, 'tf_transforms': len(tree)}
    prev_bad, index = report.undecodable, -1
    warned = 0
    for _, msgtype, stamp, msg in iter_messages([path], [t], report=report):
        skipped = report.undecodable - prev_bad    # messages bagio could not decode
        index += skipped
        bar.update(1 + skipped)
        prev_bad = report.undecodable
        if msgtype != POINTCLOUD2:
            continue   # another type sharing the topic: not a frame
        index += 1
        state['clouds_read'] += 1
        if index % every:
            continue
        try:
            cloud = pointcloud2_to_cloud(msg, require_valid=False)
            why = implausible(cloud)
        except CloudError as exc:
            report.undecodable += 1
            prev_bad = report.undecodable
            log.warning('%s: skipping cloud %d: %s', path, index, exc)
            continue
        if why:
            report.implausible += 1
            if warned < 5:
                log.warning('%s: skipping cloud %d, it cannot be a scan: %s', path, index, why)
                warned += 1
            continue
        state['clouds_used'] += 1
        info['clouds'] += 1
        try:
            new = _cloud_clusters(cloud, int(cloud.stamp_ns or stamp), pipeline, tree, memory,
                                  truth, info, path)
        except Exception as exc:  # noqa: BLE001 - one frame that breaks is skipped
            state['frames_failed'] += 1
            log.warning('%s: skipping cloud %d: %s: %s', path, index, type(exc).__name__, exc)
            continue
        if new is None:
            continue
        fixed, plane_up, found = new
        used_frames[fixed] += 1
        if plane_up is not None:
            up = plane_up
        for c, r, oid, gt_label, gt_iou in found:
            gid = group_of.setdefault((bi, int(oid)), len(group_of))
            p = np.asarray(c.points, np.float32)
            col = (np.asarray(c.colors, np.float32) / 255.0 if c.colors is not None
                   else np.zeros_like(p))
            points.append(p)
            colors.append(col.astype(np.float32))
            has_color.append(c.colors is not None)
            embeddings.append(np.asarray(r.embedding, np.float32))
            ups.append(up if up is not None else np.full(3, np.nan))
            thumbs.append(render_thumbnail(p, c.colors, cloud.frame_id))
            indices.append(np.asarray(c.indices, np.int32))
            crop = rgb_crop(cloud.colors, cloud.height, cloud.width, c.indices)
            has_crop.append(crop is not None)
            crops.append(crop if crop is not None
                         else np.full((THUMB_SIZE, THUMB_SIZE, 3), 255, np.uint8))
            center, size = np.asarray(c.box.center), np.asarray(c.box.extent)
            rows.append({
                'cluster_id': len(rows), 'group_id': gid, 'bag': str(path), 'topic': t,
                'frame_index': index, 'stamp_ns': int(cloud.stamp_ns or stamp),
                'frame_id': cloud.frame_id,
                'center_x': center[0], 'center_y': center[1], 'center_z': center[2],
                'size_x': size[0], 'size_y': size[1], 'size_z': size[2],
                'point_count': len(c.indices), 'proposed_label': r.label,
                'proposed_score': float(r.score), 'gt_label': gt_label, 'gt_iou': gt_iou})
            scores.append(dict(zip(r.top_labels, r.top_scores)))
    info['fixed_frame'] = (used_frames.most_common(1)[0][0] if used_frames else None)
    info['fixed_frames'] = dict(used_frames)
    info['from_tf'] = info['clouds_without_tf'] == 0 and bool(used_frames)
    return info


def _cloud_clusters(cloud, stamp_ns: int, pipeline, tree, memory, truth: dict, info: dict,
                    path: Path):
    """(fixed frame, plane normal, [(cluster, recognition, object id, gt label, gt IoU)]).

    None when the frame holds no cluster to recognise. Nothing is appended to the
    dataset here, so a frame that fails half-way leaves no half of itself behind.
    """
    from p3d_perception.memory import Observation
    cfg, recognizer = pipeline.config, pipeline.recognizer
    seg = pipeline.segmenter(cloud)
    clusters = [c for c in seg.clusters if len(c.indices) >= cfg.min_points_to_recognise
                and np.isfinite(c.box.center).all() and np.isfinite(c.box.extent).all()]
    clusters.sort(key=lambda c: len(c.indices), reverse=True)
    clusters = clusters[:cfg.max_objects_per_frame]
    up = None
    if seg.planes:   # as Pipeline.process: the table's normal is gravity's up
        up = np.asarray(seg.planes[0][:3], np.float64)
        recognizer.set_up_vector(up)
    if not clusters:
        return None
    recs = recognizer.classify(
        [c.points for c in clusters],
        [c.colors for c in clusters] if cloud.colors is not None else None,
        top_k=TOP_K, unknown_threshold=0.0)
    found = tree.lookup(cloud.frame_id, stamp_ns)
    if found is None:
        fixed, T = _frame(cloud.frame_id) or 'sensor', np.eye(4)
        info['clouds_without_tf'] += 1
        info.setdefault('no_tf_frame', cloud.frame_id)   # extract_dataset says it once
    else:
        fixed, T = found
    R, tr = T[:3, :3], T[:3, 3]
    obs = [Observation(center=R @ np.asarray(c.box.center, np.float64) + tr,
                       rotation=R @ np.asarray(c.box.rotation, np.float64),
                       size=np.asarray(c.box.extent, np.float64),
                       embedding=r.embedding, label=r.label, score=float(r.score),
                       top_labels=list(r.top_labels), top_scores=list(r.top_scores),
                       point_count=len(c.indices))
           for c, r in zip(clusters, recs)]
    gt = truth.get(stamp_ns)
    inst = None
    if gt is not None and gt['instance'].size == len(cloud):
        inst = gt['instance'].reshape(-1)
        valid = cloud.valid
        cats = {int(o['id']): str(o['category']) for o in gt['objects']}
    matches = [('', None) if inst is None else _gt_match(c.indices, inst, valid, cats)
               for c in clusters]
    ids = memory.update(obs, fixed, stamp_ns)
    return fixed, up, [(c, r, oid, g, iou) for c, r, oid, (g, iou)
                       in zip(clusters, recs, ids, matches)]


def _nothing_read(bags: Sequence[Path], report, skipped_topics: dict[str, str]) -> str:
    reasons = [f'{b}: {r}' for b, r in report.bags_failed + report.truncated]
    reasons += [f'{b}: {r}' for b, r in skipped_topics.items()]
    return (f'no point cloud could be read from {len(bags)} bag(s) ({report.summary()}); '
            + ('; '.join(reasons) if reasons else 'the topic holds no readable messages'))


def relabel_dataset(path: str | Path, *, model: str | Path | None = None,
                    vocabulary: Sequence[str] | None = None, device: str = 'auto',
                    accept_above: float | None = None, command: str = '',
                    progress: bool = True) -> DatasetSummary:
    """Re-run the pre-labelling on stored clusters, keeping every label already written.

    Each frame's clusters are classified in one call with the 'up' vector the
    extraction used, so the same model reproduces the same proposals.
    """
    from tqdm import tqdm
    if accept_above is not None and not 0.0 <= accept_above <= 1.0:
        raise ValueError(f'--accept-above must be in [0, 1], got {accept_above}')
    ds = load_dataset(path)
    root = ds.root
    written = read_group_labels(ds.labels_csv, ds.group_ids) if ds.labels_csv.is_file() else {}
    arrays = _load_arrays(root)
    pipeline, model_path = _load_recognizer(model, device, vocabulary)
    recognizer = pipeline.recognizer
    frames: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(ds.rows):
        frames[(r['bag'], r['topic'], r['frame_index'])].append(i)
    emb = [None] * len(ds)
    scores: list[dict[str, float]] = [{} for _ in range(len(ds))]
    changed = 0
    for idx in tqdm(frames.values(), unit='frame', desc='bags label', disable=not progress):
        up = ds.up[idx[0]]
        recognizer.set_up_vector(up if np.all(np.isfinite(up)) else None)
        recs = recognizer.classify([ds.points[i] for i in idx],
                                   [ds.colors[i] for i in idx] if ds.has_color[idx[0]] else None,
                                   top_k=TOP_K, unknown_threshold=0.0)
        for i, r in zip(idx, recs):
            changed += ds.rows[i]['proposed_label'] != r.label
            ds.rows[i]['proposed_label'] = r.label
            ds.rows[i]['proposed_score'] = float(r.score)
            emb[i] = np.asarray(r.embedding, np.float32)
            scores[i] = dict(zip(r.top_labels, r.top_scores))
    dim = emb[0].shape[0] if emb else int(recognizer.embed_text(['x']).shape[1])
    arrays['embeddings'] = (np.stack(emb) if emb else np.zeros((0, dim))).astype(np.float32)
    groups = summarise_groups(ds.rows, scores, labels=written, accept_above=accept_above)
    meta = dict(ds.meta)
    meta.update(model=str(model_path), text_space=recognizer.text_space,
                vocabulary=list(recognizer.vocabulary), device=str(recognizer.device),
                accept_above=accept_above, columns=COLUMN_HELP)
    meta.setdefault('counts', {})['labelled_groups'] = sum(1 for g in groups if g['label'])
    meta['history'] = list(meta.get('history') or []) + [
        {'step': 'label', 'time': _now(), 'command': command, 'model': str(model_path),
         'kept_labels': len(written), 'changed_proposals': int(changed)}]
    files = _write_all(root, arrays, ds.rows, groups, meta)
    return DatasetSummary(root=root, report=None, clouds_read=0, clouds_used=len(frames),
                          clusters=len(ds), groups=len(groups),
                          labelled_groups=meta['counts']['labelled_groups'],
                          fixed_frames=(meta.get('grouping') or {}).get('per_bag', {}),
                          files=files, kept_labels=len(written),
                          changed_proposals=int(changed))


# ------------------------------------------------------------------ PCD scans -> bags

#: written beside a bag made from PCD scans: which scan each stamp came from
PCD_SOURCES = 'pcd_sources.json'
PCD_TOPIC = '/camera/depth/points'
PCD_FRAME = 'camera_depth_optical_frame'


def natural_key(path: str | Path) -> list:
    """Sort key that puts learn2 before learn10 (digit runs compare as numbers)."""
    import re
    return [(0, int(t), '') if t.isdigit() else (1, 0, t.lower())
            for t in re.split(r'(\d+)', str(path)) if t]


def collect_scans(paths: Sequence[str | Path]) -> list[Path]:
    """PCD files named or inside the folders named, in natural order, each once.

    The whole list is sorted, not only each folder, because a shell glob
    (``scans/*.pcd``) hands over learn1, learn10, learn11, ..., learn2.
    """
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = [f for f in p.iterdir() if f.suffix.lower() == '.pcd' and f.is_file()]
            if not files:
                log.warning('%s holds no .pcd file', p)
            for f in files:
                found.setdefault(f, None)
        elif p.is_file():
            found.setdefault(p, None)
        else:
            raise FileNotFoundError(f'scan not found: {p}')
    return sorted(found, key=natural_key)


@dataclasses.dataclass
class ScanBags:
    """What ``p3d bags from-pcd`` wrote: bags, the scans in them, the scans skipped."""

    bags: list[Path]
    scans: list[dict]                     # per written scan: bag, stamp_ns, source, name...
    skipped: list[tuple[str, str]]        # (scan, why)


def _unique_names(scans: Sequence[Path]) -> list[str]:
    """A bag name per scan: its stem, with the folder in front where stems repeat."""
    stems = collections.Counter(s.stem for s in scans)
    return [s.stem if stems[s.stem] == 1 else f'{s.parent.name}_{s.stem}' for s in scans]


def scans_to_bags(scans: Sequence[str | Path], out: str | Path, *, topic: str = PCD_TOPIC,
                  frame_id: str = PCD_FRAME, rate_hz: float = 1.0, storage: str = 'mcap',
                  keep_fields: Sequence[str] = (), bag_per_scan: bool = False,
                  overwrite: bool = False,
                  start_ns: int = 1_700_000_000_000_000_000) -> ScanBags:
    """Write PCD scans as rosbag2 PointCloud2 recordings (one bag, or one per scan).

    PCD captures carry no stamp and no frame, so both are given here: stamps rise
    at ``rate_hz`` from ``start_ns``, over the scans actually written. A scan that
    cannot be read is logged and skipped; ValueError only when none can be. With
    ``bag_per_scan``, ``out`` is a folder of bags named after the scans: scans of
    different scenes must not share a bag, because ``p3d bags extract`` groups
    clusters across the frames of one bag by position, and without /tf objects at
    the same spot of two scenes would become one group. Every bag gets a
    ``pcd_sources.json`` naming the scan of each stamp.
    """
    from p3d_perception.bagio import write_cloud_bag
    from p3d_perception.cloud import CloudError, read_pcd
    if not rate_hz > 0 or not math.isfinite(rate_hz):
        raise ValueError(f'--rate must be > 0 Hz, got {rate_hz}')
    files = collect_scans(scans)
    if not files:
        raise ValueError('no PCD scans given (files or folders holding *.pcd)')
    period = max(1, int(round(1e9 / rate_hz)))
    out = Path(out)
    skipped: list[tuple[str, str]] = []
    written: list[dict] = []
    missing_warned: set[str] = set()

    def read(path: Path):
        try:
            cloud = read_pcd(path)
        except (CloudError, OSError) as exc:
            log.warning('skipping scan %s: %s', path, exc)
            skipped.append((str(path), str(exc)))
            return None
        for name in keep_fields:
            if name not in cloud.fields and name not in missing_warned:
                log.warning('%s has no field %r (fields: %s); bags carry it where present',
                            path, name, ', '.join(cloud.fields) or 'x y z + colour only')
                missing_warned.add(name)
        return cloud

    def clouds(paths: Sequence[Path], bag: Path):
        for f in paths:
            cloud = read(f)
            if cloud is None:
                continue
            written.append({'bag': str(bag), 'source': str(f.resolve()), 'name': f.stem,
                            'height': cloud.height, 'width': cloud.width,
                            'colour': cloud.colors is not None,
                            'fields': [k for k in cloud.fields if k in keep_fields]})
            yield cloud

    def write(bag: Path, paths: Sequence[Path], first: int) -> Path | None:
        start = len(written)
        try:
            _, stamps = write_cloud_bag(
                bag, clouds(paths, bag), topic=topic, frame_id=frame_id,
                start_ns=start_ns + first * period, period_ns=period, storage=storage,
                overwrite=overwrite, fields=tuple(keep_fields))
        except ValueError:
            if len(written) == start:      # every scan of this bag was skipped
                return None
            raise
        for entry, st in zip(written[start:], stamps):
            entry['stamp_ns'] = int(st)
        side = {'version': 1, 'written_by': 'p3d bags from-pcd', 'topic': topic,
                'frame_id': frame_id, 'rate_hz': rate_hz,
                'scans': [{k: v for k, v in e.items() if k != 'bag'}
                          for e in written[start:]]}
        _write_text(bag / PCD_SOURCES, json.dumps(side, indent=2) + '\n')
        return bag

    bags: list[Path] = []
    if bag_per_scan:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f'{out} exists and is not a folder')
        out.mkdir(parents=True, exist_ok=True)
        for f, name in zip(files, _unique_names(files)):
            bag = write(out / name, [f], len(written))
            if bag is not None:
                bags.append(bag)
    else:
        bag = write(out, files, 0)
        if bag is not None:
            bags.append(bag)
    if not bags:
        raise ValueError(f'none of the {len(files)} scan(s) could be read: '
                         + '; '.join(f'{s}: {why}' for s, why in skipped[:3]))
    log.info('%d scan(s) -> %d bag(s) in %s; %d skipped', len(written), len(bags), out,
             len(skipped))
    return ScanBags(bags=bags, scans=written, skipped=skipped)


def read_pcd_sources(bag: str | Path) -> dict[int, dict]:
    """stamp_ns -> scan entry of a bag written by :func:`scans_to_bags` ({} if none)."""
    bag = Path(bag)
    side = (bag if bag.is_dir() else bag.parent) / PCD_SOURCES
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding='utf-8'))
        return {int(e['stamp_ns']): e for e in data['scans']}
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f'{side} is unreadable ({exc}); write the bag again with '
                           '`p3d bags from-pcd`') from exc


# ------------------------------------------------------------------ labels from ground truth

@dataclasses.dataclass
class GroundTruthLabelling:
    """What :func:`label_from_ground_truth` wrote into labels.csv."""

    groups: int
    labelled_groups: int
    junk_groups: int
    #: groups of an object whose label had used up its budget (left empty)
    over_budget_groups: int
    #: groups whose scan has no categories.json entry (left empty)
    unknown_groups: int
    clusters_per_label: dict[str, int]
    path: Path
    #: group -> (label, labels its rule accepts) for every group that is one object,
    #: labelled or not (to score proposals against)
    truth: dict[int, tuple[str, frozenset]] = dataclasses.field(default_factory=dict)


def _scan_truth(paths: Sequence[Path], rules) -> dict[str, tuple]:
    """scan path -> (object of each point or -1, [(label, accepted labels) per object])."""
    from p3d_perception.training.real_eval import load_scenes
    by_dir: dict[Path, set[str]] = collections.defaultdict(set)
    for p in paths:
        by_dir[p.parent].add(p.stem)
    out: dict[str, tuple] = {}
    for folder, stems in by_dir.items():
        try:
            scenes, _ = load_scenes([folder], rules, stems)
        except ValueError as exc:     # ConfigError: no categories.json / no labelled scan
            log.warning('%s: no ground truth (%s); its groups stay unlabelled', folder, exc)
            continue
        for s in scenes:
            n = int(max((int(o.indices.max()) for o in s.objects), default=-1)) + 1
            owner = np.full(max(n, 1), -1, np.int64)
            for k, o in enumerate(s.objects):
                owner[o.indices] = k
            out[str(s.path.resolve())] = (owner, [(o.label, o.accept) for o in s.objects])
    return out


def label_from_ground_truth(dataset: str | Path, rules: str | Path, *,
                            scans: Sequence[str | Path] | None = None, max_per_label: int = 20,
                            seed: int = 0, min_purity: float = 0.7, min_agreement: float = 0.7,
                            command: str = '') -> GroundTruthLabelling:
    """Fill labels.csv from the scans' ground truth, as a person with categories.json would.

    For a dataset extracted from ``p3d bags from-pcd`` bags: each cluster's points are
    looked up in its scan's per-point ground truth (``pcd_sources.json`` names the
    scan of each stamp; ``scans`` folders replace the recorded paths where the scans
    moved). A cluster is an object when at least ``min_purity`` of its points belong
    to one; a group takes that object's label (the eval-real rule's first accepted
    label) when ``min_agreement`` of its clusters agree, and ``-`` (junk) otherwise:
    table remnants, merged objects, objects no rule names. Groups are visited in a
    seeded random order, as a person skimming the page would, and a label stops being
    written once it covers ``max_per_label`` clusters (0 = no limit), so the figure
    says how little labelling was needed. Every label column is rewritten.
    """
    from p3d_perception.training.real_eval import load_config
    if not 0.0 < min_purity <= 1.0 or not 0.0 < min_agreement <= 1.0:
        raise ValueError('min_purity and min_agreement must be in (0, 1]')
    if max_per_label < 0:
        raise ValueError('--max-per-label must be >= 0 (0 = no limit)')
    cfg = load_config(rules)
    ds = load_dataset(dataset)
    arrays = _load_arrays(ds.root)
    if 'indices' not in arrays:
        raise DatasetError(f'{ds.root} keeps no point indices (extracted by an older '
                           'version); extract it again with `p3d bags extract ... --overwrite`')
    off, point_idx = arrays['offsets'].astype(np.int64), arrays['indices']
    moved = {}
    for d in scans or ():
        for f in collect_scans([d]):
            moved.setdefault(f.stem, f)
    sources: dict[str, dict[int, dict]] = {}
    scan_of: dict[int, Path | None] = {}
    for i, r in enumerate(ds.rows):
        bag = r['bag']
        if bag not in sources:
            sources[bag] = read_pcd_sources(bag) if Path(bag).exists() else {}
            if not sources[bag]:
                log.warning('%s: no %s (not a `p3d bags from-pcd` bag, or moved: bag paths '
                            'are kept as given to `p3d bags extract`, relative to where it '
                            'ran); its groups stay unlabelled', bag, PCD_SOURCES)
        entry = sources[bag].get(int(r['stamp_ns']))
        if entry is None:
            scan_of[i] = None
        elif entry['name'] in moved:
            scan_of[i] = moved[entry['name']]
        else:
            scan_of[i] = Path(entry['source'])
    scan_truth = _scan_truth(sorted({p for p in scan_of.values() if p is not None}), cfg)
    #: per group, per cluster: (label, accepted labels), ('-', {}) or None (no truth)
    found: dict[int, list[tuple[str, frozenset] | None]] = collections.defaultdict(list)
    for i, r in enumerate(ds.rows):
        scan = scan_of[i]
        gt = scan_truth.get(str(scan.resolve())) if scan is not None else None
        if gt is None:
            found[int(r['group_id'])].append(None)         # nobody knows what it is
            continue
        owner, objects = gt
        idx = point_idx[off[i]:off[i + 1]].astype(np.int64)
        ids = np.where(idx < len(owner), owner[np.minimum(idx, len(owner) - 1)], -1)
        vals, counts = np.unique(ids, return_counts=True)
        top = int(vals[np.argmax(counts)])
        purity = counts.max() / max(len(ids), 1)
        found[int(r['group_id'])].append(
            objects[top] if top >= 0 and purity >= min_purity else ('-', frozenset()))
    size = {g: len(v) for g, v in found.items()}
    rng = np.random.default_rng(seed)
    budget: collections.Counter = collections.Counter()
    chosen: dict[int, str] = {}
    junk = over = unknown = 0
    truth: dict[int, tuple[str, frozenset]] = {}
    for gid in rng.permutation(sorted(found)).tolist():
        votes = found[gid]
        if all(v is None for v in votes):
            unknown += 1
            continue
        label, n = collections.Counter(v[0] for v in votes if v is not None).most_common(1)[0]
        if label == '-' or n < min_agreement * len(votes):
            chosen[gid] = '-'
            junk += 1
            continue
        truth[gid] = next(v for v in votes if v is not None and v[0] == label)
        if max_per_label and budget[label] + size[gid] > max_per_label:
            over += 1
            continue
        budget[label] += size[gid]
        chosen[gid] = label
    path = ds.labels_csv
    with open(path, newline='', encoding='utf-8-sig') as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or LABEL_COLUMNS)
        table = list(reader)
    for row in table:
        row['label'] = chosen.get(int(row['group_id']), '')
    _write_text(path, _csv_text(columns, ([row.get(c, '') for c in columns] for row in table)))
    if all(k in columns for k in LABEL_COLUMNS):     # the page shows the labels written
        write_index_html(ds.root, table, ds.rows, arrays['thumbnails'], ds.meta,
                         _crops(arrays))
    meta = dict(ds.meta)
    labelled = sum(1 for v in chosen.values() if v != '-')
    meta.setdefault('counts', {})['labelled_groups'] = labelled
    meta['history'] = list(meta.get('history') or []) + [
        {'step': 'label-from-gt', 'time': _now(), 'command': command, 'rules': str(rules),
         'max_per_label': max_per_label, 'seed': seed, 'min_purity': min_purity,
         'min_agreement': min_agreement, 'clusters_per_label': dict(sorted(budget.items())),
         'junk_groups': junk, 'over_budget_groups': over, 'unknown_groups': unknown}]
    _write_text(ds.root / META_JSON, json.dumps(meta, indent=2) + '\n')
    log.info('%s: %d group(s) labelled (%s), %d junk, %d over budget, %d without ground truth',
             path, labelled, ', '.join(f'{k} {v}' for k, v in sorted(budget.items())), junk,
             over, unknown)
    return GroundTruthLabelling(groups=len(found), labelled_groups=labelled, junk_groups=junk,
                                over_budget_groups=over, unknown_groups=unknown,
                                clusters_per_label=dict(sorted(budget.items())), path=path,
                                truth=truth)
