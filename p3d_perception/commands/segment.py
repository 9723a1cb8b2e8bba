# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d segment`` and ``p3d eval-segmentation``: segmentation without ROS.

A robotics engineer tuning the segmenter for a new camera needs to run it on a
recorded bag or a PCD file, look at the clusters, and get numbers against ground
truth; these commands do exactly that with the same code the node runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MOSD = REPO_ROOT / '..' / 'shared' / 'data' / 'mosd_learn'
DEFAULT_CLUTTER = REPO_ROOT / '..' / 'shared' / 'data' / 'mosd_clutter'
RESULTS = REPO_ROOT / 'benchmarks' / 'results'


# ------------------------------------------------------------------ shared helpers

def load_config(path: str | None):
    """SegmentationConfig from a YAML file (top level or a ``segmentation:`` section)."""
    from p3d_perception.config import from_dict, load_yaml
    from p3d_perception.segmentation import SegmentationConfig
    if path is None:
        return SegmentationConfig()
    data = load_yaml(path)
    if isinstance(data.get('segmentation'), dict):
        data = data['segmentation']
    return from_dict(SegmentationConfig, data)


def cluster_summary(seg) -> list[dict]:
    """JSON-ready description of the clusters."""
    return [{
        'id': c.id,
        'points': int(len(c.indices)),
        'centroid': [round(float(v), 4) for v in c.centroid],
        'box': {'center': [round(float(v), 4) for v in c.box.center],
                'extent': [round(float(v), 4) for v in c.box.extent],
                'rotation': [[round(float(v), 5) for v in row] for row in c.box.rotation]},
    } for c in seg.clusters]


def _palette(k: int) -> np.ndarray:
    import matplotlib
    cmap = matplotlib.colormaps['tab10']
    return (np.array([cmap(i % 10)[:3] for i in range(max(k, 1))]) * 255).astype(np.uint8)


def overlay_image(cloud, labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 picture: the scene greyed out, clusters in colour.

    Organised clouds are drawn on their pixel grid; unorganised ones are projected
    through a pinhole looking along +z (the optical frame) into a 480-row image.
    """
    n = len(cloud)
    base = (cloud.colors.astype(np.float32) if cloud.colors is not None
            else np.full((n, 3), 160.0, np.float32))
    grey = base.mean(axis=1, keepdims=True) * 0.5 + 60
    rgb = np.repeat(grey, 3, axis=1)
    pal = _palette(int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 1)
    obj = labels >= 0
    rgb[obj] = 0.25 * base[obj] + 0.75 * pal[labels[obj]]
    rgb[~cloud.valid] = 0
    rgb = rgb.astype(np.uint8)
    if cloud.is_organized:
        return rgb.reshape(cloud.height, cloud.width, 3)
    v = cloud.valid & (cloud.points[:, 2] > 0)
    p = cloud.points[v]
    uv = p[:, :2] / p[:, 2:3]
    lo, hi = np.percentile(uv, [0.5, 99.5], axis=0)
    h = 480
    scale = (h - 1) / max(float(hi[1] - lo[1]), 1e-6)
    w = int(min(max((hi[0] - lo[0]) * scale + 1, 16), 1280))
    img = np.zeros((h, w, 3), np.uint8)
    ij = np.clip(((uv - lo) * scale).astype(int), 0, [w - 1, h - 1])
    order = np.argsort(-p[:, 2])  # far first, near points drawn last
    img[ij[order, 1], ij[order, 0]] = rgb[v][order]
    return img


def save_view_png(path: str | Path, cloud, seg, title: str = '') -> None:
    """Cluster picture with ids and point counts, for a person to check."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    img = overlay_image(cloud, seg.labels)
    fig, ax = plt.subplots(figsize=(8, 8 * img.shape[0] / img.shape[1] + 0.4))
    ax.imshow(img, interpolation='nearest')
    if cloud.is_organized:
        for c in seg.clusters:
            v, u = np.divmod(c.indices, cloud.width)
            ax.text(float(np.median(u)), float(np.median(v)), f'{c.id}', color='white',
                    fontsize=11, ha='center', va='center', weight='bold')
    ax.set_title(title or f'{len(seg.clusters)} clusters')
    ax.axis('off')
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ inputs

def _is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / 'metadata.yaml').is_file()) or path.suffix in (
        '.mcap', '.db3')


def iter_bag_clouds(path: Path, topic: str | None, report=None):
    """(message index, Cloud) for every good PointCloud2 of ``topic`` (or the only one).

    Like the node, a bad message is dropped, not fatal: undecodable or implausible
    clouds are counted in ``report`` (a bagio.BagReport) and skipped, a damaged bag is
    read record by record, and the index counts every message of the topic so labels
    still name the message they belong to.
    """
    from p3d_perception import bagio
    from p3d_perception.cloud import CloudError, implausible, pointcloud2_to_cloud
    report = report if report is not None else bagio.BagReport()
    bag = path
    if path.is_file() and (path.parent / 'metadata.yaml').is_file():
        bag = path.parent
    pc_topics = sorted(bagio.cloud_topics(bag))
    if topic is None:
        if len(pc_topics) != 1:
            raise ValueError(f'{path}: choose a PointCloud2 topic with --topic; found '
                             f'{", ".join(pc_topics) or "none"}')
        topic = pc_topics[0]
    elif topic not in pc_topics:
        raise ValueError(f'{path}: no PointCloud2 topic {topic!r}; PointCloud2 topics: '
                         f'{", ".join(pc_topics) or "none"}')
    index, prev_bad = -1, report.undecodable
    for _, msgtype, _, msg in bagio.iter_messages([bag], [topic], report=report):
        if msgtype != bagio.POINTCLOUD2:
            continue   # another type sharing the topic
        index += 1 + report.undecodable - prev_bad
        prev_bad = report.undecodable
        try:
            cloud = pointcloud2_to_cloud(msg)
        except CloudError as exc:
            report.undecodable += 1
            prev_bad = report.undecodable
            log.warning('%s: skipping message %d: %s', path, index, exc)
            continue
        why = implausible(cloud)
        if why:
            report.implausible += 1
            log.warning('%s: skipping message %d, it cannot be a scan: %s', path, index, why)
            continue
        yield index, cloud


def _run_segment(args: argparse.Namespace) -> int:
    from p3d_perception.cloud import read_pcd
    from p3d_perception.segmentation import Segmenter
    path = Path(args.input)
    if not path.exists():
        raise FileNotFoundError(f'input not found: {path}')
    segmenter = Segmenter(load_config(args.config))
    report = None
    if _is_bag(path):
        from p3d_perception.bagio import BagReport
        report = BagReport()
        frames = iter_bag_clouds(path, args.topic, report)
    else:
        if args.topic:
            raise ValueError('--topic applies to rosbag2 inputs only')
        frames = iter([(None, read_pcd(path))])
    results, stacked, stamps = [], {}, []
    last = None
    failed = 0
    for i, cloud in frames:
        try:
            seg = segmenter(cloud)
        except Exception as exc:  # noqa: BLE001 - one frame that breaks is skipped
            if i is None:
                raise
            failed += 1
            log.warning('message %d: segmentation failed (%s: %s); skipped', i,
                        type(exc).__name__, exc)
            continue
        last = (cloud, seg)
        entry = {'clusters': cluster_summary(seg), 'points': len(cloud),
                 'timings_ms': {k: round(v, 2) for k, v in seg.timings_ms.items()}}
        if i is not None:
            entry = {'index': i, 'stamp_ns': cloud.stamp_ns, 'frame_id': cloud.frame_id,
                     **entry}
            stacked[f'labels_{i:06d}'] = seg.labels
            stamps.append(cloud.stamp_ns)
        else:
            stacked['labels'] = seg.labels
        results.append(entry)
        log.info('%s: %d clusters in %.1f ms', f'message {i}' if i is not None else path.name,
                 len(seg.clusters), seg.timings_ms.get('total', 0.0))
    if report is not None and (not report.ok or failed):
        log.warning('%s: %s%s; the other frames are kept', path, report.summary(),
                    f', {failed} frame(s) failed to segment' if failed else '')
    if last is None:
        raise ValueError(f'{path}: no readable PointCloud2 messages on the topic'
                         + (f' ({report.summary()})' if report is not None else ''))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if 'labels' in stacked:
            np.save(out, stacked['labels'].astype(np.int32))
        else:
            np.savez_compressed(out, stamp_ns=np.array(stamps, dtype=np.int64),
                                **{k: v.astype(np.int32) for k, v in stacked.items()})
        log.info('labels written to %s', out)
    if args.png:
        cloud, seg = last
        save_view_png(args.png, cloud, seg, title=f'{path.name}: {len(seg.clusters)} clusters')
        log.info('picture written to %s', args.png)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 and 'index' not in results[0]
                         else results, indent=2))
    elif not args.out and not args.png:
        for r in results:
            print(f'{r.get("index", path.name)}: {len(r["clusters"])} clusters '
                  f'({r["timings_ms"].get("total", 0):.1f} ms)')
    return 0


# ------------------------------------------------------------------ evaluation

def _scene_key(p: Path):
    m = re.search(r'(\d+)$', p.stem)
    return (p.stem.rstrip('0123456789'), int(m.group(1)) if m else -1)


def _excluded_ids(directory: Path) -> dict[str, list[int]]:
    """Scene -> ground-truth ids that ``categories.json`` marks as not one object."""
    path = Path(directory) / 'categories.json'
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding='utf-8'))
    return {scene: [int(i) for i, v in objs.items() if isinstance(v, dict) and v.get('exclude')]
            for scene, objs in data.items()
            if isinstance(objs, dict) and not scene.startswith('_')}


def _scores(labels: np.ndarray, gt: np.ndarray) -> dict:
    from p3d_perception.segmentation import match_instances, overlap_scores
    m = match_instances(labels, gt)
    o = overlap_scores(labels, gt)
    return {**m, **{k: o[k] for k in ('precision', 'recall', 'f_measure', 'objects_f075',
                                      'f_per_object')}}


_SUM_KEYS = ('objects', 'matched', 'over_segmented', 'under_segmented', 'clusters',
             'objects_f075')


def _summary(rows: list[dict]) -> dict:
    """Pooled counts and per-scene means (the published protocol averages scenes)."""
    if not rows:
        return {}
    tot = {k: int(sum(r[k] for r in rows)) for k in _SUM_KEYS}
    ious = [v for r in rows for v in r['best_iou'].values()]
    return {
        'scenes': len(rows), **tot,
        'match_rate': round(tot['matched'] / max(tot['objects'], 1), 4),
        'f075_rate': round(tot['objects_f075'] / max(tot['objects'], 1), 4),
        'precision': round(float(np.mean([r['precision'] for r in rows])), 4),
        'recall': round(float(np.mean([r['recall'] for r in rows])), 4),
        'f_measure': round(float(np.mean([r['f_measure'] for r in rows])), 4),
        'mean_iou': round(float(np.mean(ious)) if ious else 0.0, 4),
        'median_ms': round(float(np.median([r['total_ms'] for r in rows])), 1),
    }


def evaluate_mosd(directories, config=None, progress: bool = True, baseline: bool = True,
                  scenes: str | None = None) -> tuple[dict, list]:
    """Segment every mOSD scene of ``directories``; return (figures, per-scene renders).

    Objects are ``label // 10``; an id that the folder's ``categories.json`` marks
    ``exclude`` (one label over two physical objects) is split into its connected
    pieces. ``baseline`` runs the plain Open3D pipeline of ``p3d bench
    segmentation`` on the same clouds in the same run. ``scenes`` is a regular
    expression on scene names (e.g. a held-out part).
    """
    import time

    from tqdm import tqdm

    import types

    from p3d_perception.benchmarks.segmentation import (
        OPEN3D_DEFAULTS, open3d_labels, open3d_pipeline)
    from p3d_perception.cloud import read_pcd
    from p3d_perception.segmentation import Segmenter, match_instances, mosd_ground_truth
    from p3d_perception.segmentation.metrics import scene_kind, split_components
    if isinstance(directories, (str, Path)):
        directories = [directories]
    files = []
    for d in directories:
        found = sorted(Path(d).glob('*.pcd'), key=_scene_key)
        if not found:
            raise FileNotFoundError(f'no .pcd scans in {d}')
        excluded = _excluded_ids(Path(d))
        files += [(Path(d), f, excluded.get(f.stem, [])) for f in found
                  if scenes is None or re.search(scenes, f.stem)]
    if not files:
        raise FileNotFoundError(f'no scene matches {scenes!r}')
    segmenter = Segmenter(config)
    o3d_args = types.SimpleNamespace(**OPEN3D_DEFAULTS)
    rows, base_rows, renders = [], [], []
    table_pts = table_removed = 0
    parts_total = {'objects': 0, 'matched': 0}
    for d, f, excl in tqdm(files, desc='eval-segmentation', disable=not progress):
        cloud = read_pcd(f)
        if 'label' not in cloud.fields:
            raise ValueError(f'{f}: no per-point "label" field (not an mOSD scan?)')
        seg = segmenter(cloud)
        gt, table = mosd_ground_truth(cloud.fields['label'])
        if excl:
            gt = split_components(gt, excl, cloud.height, cloud.width, cloud.points)
        m = _scores(seg.labels, gt)
        parts = match_instances(seg.labels, mosd_ground_truth(cloud.fields['label'], True)[0])
        removed = int((seg.labels[table] < 0).sum())
        table_pts += int(table.sum())
        table_removed += removed
        parts_total['objects'] += parts['objects']
        parts_total['matched'] += parts['matched']
        row = {'scene': f.stem, 'dir': d.name, 'kind': scene_kind(f.stem),
               'table_removed': round(removed / max(table.sum(), 1), 5),
               **{k: m[k] for k in _SUM_KEYS}, 'mean_iou': round(m['mean_iou'], 4),
               **{k: round(m[k], 4) for k in ('precision', 'recall', 'f_measure')},
               'best_iou': m['best_iou'], 'f_per_object': m['f_per_object'],
               'parts': parts['objects'], 'parts_matched': parts['matched'],
               'total_ms': round(seg.timings_ms['total'], 1)}
        rows.append(row)
        base_img = None
        if baseline:
            t0 = time.perf_counter()
            raw = open3d_pipeline(cloud.points, o3d_args)
            ms = (time.perf_counter() - t0) * 1e3     # as bench segmentation times it
            base = open3d_labels(cloud.points, raw)
            b = _scores(base, gt)
            base_rows.append({'scene': f.stem, 'dir': d.name, 'kind': row['kind'],
                              **{k: b[k] for k in _SUM_KEYS}, 'best_iou': b['best_iou'],
                              **{k: round(b[k], 4) for k in ('precision', 'recall',
                                                             'f_measure')},
                              'total_ms': round(ms, 1)})
            row['open3d'] = {k: base_rows[-1][k] for k in ('matched', 'objects_f075',
                                                           'f_measure')}
            base_img = overlay_image(cloud, base)
        renders.append({'name': f.stem, 'gt': overlay_image(cloud, gt), 'ours':
                        overlay_image(cloud, seg.labels), 'open3d': base_img, 'm': row})
    overall = {**_summary(rows),
               'table_removed': round(table_removed / max(table_pts, 1), 5),
               'parts': parts_total['objects'], 'parts_matched': parts_total['matched'],
               'parts_match_rate': round(parts_total['matched']
                                         / max(parts_total['objects'], 1), 4)}
    groups = {}
    for key in ('kind', 'dir'):
        for value in dict.fromkeys(r[key] for r in rows):
            groups.setdefault(key, {})[value] = {
                'ours': _summary([r for r in rows if r[key] == value]),
                **({'open3d': _summary([r for r in base_rows if r[key] == value])}
                   if baseline else {})}
    result = {'overall': overall, 'kinds': groups['kind'], 'dirs': groups['dir'],
              'scenes': rows}
    if baseline:
        result['open3d'] = _summary(base_rows)
    return result, renders


def save_contact_sheet(path: str | Path, renders: list, title: str = '',
                       worst: int = 12) -> None:
    """The ``worst`` scenes (lowest F, then fewest matched): ground truth, ours, Open3D.

    The worst scenes are where a person learns something; a sheet of every scene
    hides them among the easy ones.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    order = sorted(renders, key=lambda r: (r['m']['f_measure'],
                                           r['m']['matched'] / max(r['m']['objects'], 1)))
    pick = order[:worst]
    cols = 3 if any(r['open3d'] is not None for r in pick) else 2
    rows = max(len(pick), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    for ax_row, r in zip(axes, pick):
        m = r['m']
        panels = [('ground truth', r['gt']),
                  (f'ours: {m["matched"]}/{m["objects"]} IoU>=.5, F {m["f_measure"]:.2f}',
                   r['ours'])]
        if cols == 3 and r['open3d'] is not None:
            b = m.get('open3d', {})
            panels.append((f'Open3D: {b.get("matched", 0)}/{m["objects"]}, '
                           f'F {b.get("f_measure", 0):.2f}', r['open3d']))
        for ax, (label, img) in zip(ax_row, panels):
            ax.imshow(img, interpolation='nearest')
            ax.set_title(f'{r["name"]} {label}' if label == 'ground truth' else label,
                         fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _fmt(s: dict) -> str:
    return (f'{s["matched"]}/{s["objects"]} matched ({100 * s["match_rate"]:.1f} %), '
            f'F>=0.75 {100 * s["f075_rate"]:.1f} %, overlap P/R/F {s["precision"]:.3f}/'
            f'{s["recall"]:.3f}/{s["f_measure"]:.3f}, {s["median_ms"]:.0f} ms')


def _run_eval(args: argparse.Namespace) -> int:
    from p3d_perception.config import to_dict
    directories = ([Path(d) for d in args.dir] if args.dir else
                   [DEFAULT_MOSD] + ([DEFAULT_CLUTTER] if DEFAULT_CLUTTER.is_dir() else []))
    for d in directories:
        if not d.is_dir():
            raise FileNotFoundError(f'mOSD directory not found: {d}')
    config = load_config(args.config)
    result, renders = evaluate_mosd(directories, config, progress=not args.quiet,
                                    baseline=not args.no_baseline, scenes=args.scenes)
    result = {'data': [str(d.resolve()) for d in directories], 'scenes_filter': args.scenes,
              'config': to_dict(config), **result}
    out = Path(args.json_out) if args.json_out else RESULTS / 'segmentation_mosd.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    png = Path(args.png) if args.png else RESULTS / 'segmentation_mosd.png'
    o = result['overall']
    save_contact_sheet(png, renders, title=(
        f'worst scenes; all: {o["matched"]}/{o["objects"]} matched (IoU>=0.5), '
        f'F>=0.75 {100 * o["f075_rate"]:.1f} %'))
    for s in result['scenes']:
        base = s.get('open3d')
        print(f'{s["scene"]:>8} {s["kind"]:>9}: {s["matched"]}/{s["objects"]} matched, '
              f'F>=.75 {s["objects_f075"]}, F {s["f_measure"]:.3f}, {s["clusters"]} clusters, '
              f'over {s["over_segmented"]}, under {s["under_segmented"]}, table removed '
              f'{100 * s["table_removed"]:.2f}%, {s["total_ms"]:.0f} ms'
              + (f' | Open3D {base["matched"]} matched, F {base["f_measure"]:.3f}'
                 if base else ''))
    for name, group in (('kind', result['kinds']), ('dir', result['dirs'])):
        for key, g in group.items():
            print(f'{name} {key:>12}: ours {_fmt(g["ours"])}'
                  + (f' | Open3D {_fmt(g["open3d"])}' if 'open3d' in g else ''))
    print(f'overall: ours {_fmt(o)}, mean IoU {o["mean_iou"]:.3f}, over '
          f'{o["over_segmented"]}, under {o["under_segmented"]}, parts '
          f'{o["parts_matched"]}/{o["parts"]}, table removed {100 * o["table_removed"]:.2f}%')
    if 'open3d' in result:
        print(f'overall: Open3D {_fmt(result["open3d"])}')
    print(f'saved {out} and {png}')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'segment', help='segment a PCD file or the PointCloud2 messages of a rosbag2',
        description='Segment objects on a support surface. INPUT is a PCD file or a rosbag2 '
                    '(directory, or its .mcap/.db3 file); with a bag every PointCloud2 '
                    'message of --topic is segmented.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='--out: for a PCD, an .npy of int32 labels, one per input point in input '
               'order (-1 = not an object).\nFor a bag, one compressed .npz: arrays '
               'labels_000000, labels_000001, ... (one per message, in bag order) and '
               'stamp_ns.\n--png: for a bag, the last message is drawn.')
    p.add_argument('input', help='PCD file or rosbag2 (directory or .mcap/.db3)')
    p.add_argument('--topic', help='PointCloud2 topic (needed when the bag has several)')
    p.add_argument('--out', help='label file to write (.npy for a PCD, .npz for a bag)')
    p.add_argument('--json', action='store_true', help='print the clusters as JSON')
    p.add_argument('--png', help='save a picture of the coloured clusters')
    p.add_argument('--config', help='YAML with SegmentationConfig keys (or a segmentation: '
                                    'section)')
    p.set_defaults(func=_run_segment)

    e = sub.add_parser(
        'eval-segmentation', help='segmentation quality on real mOSD Kinect scans',
        description='Per scene, per scene kind, per folder and overall: ground-truth '
                    'objects matched at IoU >= 0.5 (object = label // 10), the unseen-'
                    'object-segmentation protocol (one-to-one Hungarian matching on '
                    'F-measure, overlap precision/recall/F, share of objects with '
                    'F >= 0.75), over-/under-segmentation, table points removed; the '
                    'plain Open3D pipeline (voxel + RANSAC + DBSCAN) beside it.')
    e.add_argument('dir', nargs='*', default=None,
                   help='folders of mOSD .pcd scans (default ../shared/data/mosd_learn and '
                        'mosd_clutter)')
    e.add_argument('--scenes', help='only scenes whose name matches this regular expression')
    e.add_argument('--no-baseline', action='store_true', help='skip the Open3D baseline')
    e.add_argument('--json-out', help='default benchmarks/results/segmentation_mosd.json')
    e.add_argument('--png', help='contact sheet of the worst scenes (default '
                                 'benchmarks/results/segmentation_mosd.png)')
    e.add_argument('--config', help='YAML with SegmentationConfig keys')
    e.add_argument('--quiet', action='store_true', help='no progress bar')
    e.set_defaults(func=_run_eval)
