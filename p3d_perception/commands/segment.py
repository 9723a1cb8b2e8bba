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


def evaluate_mosd(directory: Path, config=None, progress: bool = True) -> tuple[dict, list]:
    """Segment every mOSD scene of ``directory``; return (figures, per-scene renders)."""
    from tqdm import tqdm

    from p3d_perception.cloud import read_pcd
    from p3d_perception.segmentation import Segmenter, match_instances, mosd_ground_truth
    files = sorted(Path(directory).glob('*.pcd'), key=_scene_key)
    if not files:
        raise FileNotFoundError(f'no .pcd scans in {directory}')
    segmenter = Segmenter(config)
    scenes, renders = [], []
    keys = ('objects', 'matched', 'over_segmented', 'under_segmented', 'clusters')
    total = dict.fromkeys(keys, 0)
    parts_total = {'objects': 0, 'matched': 0}
    table_pts = table_removed = 0
    ious, times = [], []
    for f in tqdm(files, desc='eval-segmentation', disable=not progress):
        cloud = read_pcd(f)
        if 'label' not in cloud.fields:
            raise ValueError(f'{f}: no per-point "label" field (not an mOSD scan?)')
        seg = segmenter(cloud)
        gt, table = mosd_ground_truth(cloud.fields['label'])
        m = match_instances(seg.labels, gt)
        parts = match_instances(seg.labels, mosd_ground_truth(cloud.fields['label'], True)[0])
        removed = int((seg.labels[table] < 0).sum())
        table_pts += int(table.sum())
        table_removed += removed
        for k in keys:
            total[k] += m[k]
        parts_total['objects'] += parts['objects']
        parts_total['matched'] += parts['matched']
        ious += list(m['best_iou'].values())
        times.append(seg.timings_ms['total'])
        scenes.append({'scene': f.stem, 'table_removed': round(removed / max(table.sum(), 1), 5),
                       **{k: m[k] for k in keys}, 'mean_iou': round(m['mean_iou'], 4),
                       'best_iou': m['best_iou'], 'parts': parts['objects'],
                       'parts_matched': parts['matched'],
                       'total_ms': round(seg.timings_ms['total'], 1)})
        renders.append((f.stem, overlay_image(cloud, seg.labels), m))
    overall = {
        **total,
        'match_rate': round(total['matched'] / max(total['objects'], 1), 4),
        'mean_iou': round(float(np.mean(ious)) if ious else 0.0, 4),
        'table_removed': round(table_removed / max(table_pts, 1), 5),
        'parts': parts_total['objects'], 'parts_matched': parts_total['matched'],
        'parts_match_rate': round(parts_total['matched'] / max(parts_total['objects'], 1), 4),
        'median_ms': round(float(np.median(times)), 1),
    }
    return {'overall': overall, 'scenes': scenes}, renders


def save_contact_sheet(path: str | Path, renders: list, title: str = '') -> None:
    """Grid of per-scene cluster pictures with match counts in the titles."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cols = 4
    rows = -(-len(renders) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    for ax, (name, img, m) in zip(axes.ravel(), renders):
        ax.imshow(img, interpolation='nearest')
        ax.set_title(f'{name}: {m["matched"]}/{m["objects"]} matched, {m["clusters"]} clusters',
                     fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _run_eval(args: argparse.Namespace) -> int:
    from p3d_perception.config import to_dict
    directory = Path(args.dir) if args.dir else DEFAULT_MOSD
    if not directory.is_dir():
        raise FileNotFoundError(f'mOSD directory not found: {directory}')
    config = load_config(args.config)
    result, renders = evaluate_mosd(directory, config, progress=not args.quiet)
    result = {'data': str(directory.resolve()), 'config': to_dict(config), **result}
    out = Path(args.json_out) if args.json_out else RESULTS / 'segmentation_mosd.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    png = Path(args.png) if args.png else RESULTS / 'segmentation_mosd.png'
    o = result['overall']
    save_contact_sheet(png, renders, title=(
        f'mOSD: {o["matched"]}/{o["objects"]} objects matched (IoU>=0.5), '
        f'table removed {100 * o["table_removed"]:.2f}%'))
    for s in result['scenes']:
        print(f'{s["scene"]:>8}: {s["matched"]}/{s["objects"]} matched, '
              f'{s["clusters"]} clusters, over {s["over_segmented"]}, '
              f'under {s["under_segmented"]}, table removed {100 * s["table_removed"]:.2f}%, '
              f'{s["total_ms"]:.0f} ms')
    print(f'overall: {o["matched"]}/{o["objects"]} objects matched ({100 * o["match_rate"]:.1f}%),'
          f' mean IoU {o["mean_iou"]:.3f}, over {o["over_segmented"]}, under '
          f'{o["under_segmented"]}, parts {o["parts_matched"]}/{o["parts"]}, table removed '
          f'{100 * o["table_removed"]:.2f}%')
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
        'eval-segmentation', help='segmentation quality on the real mOSD Kinect scans',
        description='Per scene and overall: table points removed, ground-truth objects '
                    'matched at IoU >= 0.5 (object = label // 10), over-/under-segmentation, '
                    'and the same for visible parts (the mOSD label itself).')
    e.add_argument('dir', nargs='?', default=None,
                   help='folder of mOSD .pcd scans (default ../shared/data/mosd_learn)')
    e.add_argument('--json-out', help='default benchmarks/results/segmentation_mosd.json')
    e.add_argument('--png', help='contact sheet (default benchmarks/results/'
                                 'segmentation_mosd.png)')
    e.add_argument('--config', help='YAML with SegmentationConfig keys')
    e.add_argument('--quiet', action='store_true', help='no progress bar')
    e.set_defaults(func=_run_eval)
