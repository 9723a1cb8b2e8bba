# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d bags extract|label|from-pcd|label-from-gt``: recordings -> a dataset a person labels.

Fine-tuning on the objects a robot actually meets starts from its bags; these
commands turn them into clusters with proposed labels, grouped per physical
object, so a person labels each object once in a CSV file. ``from-pcd`` makes
bags of PCD scans so captures that never were a recording take the same path,
and ``label-from-gt`` fills the labels file from such scans' ground truth (the
benchmark's stand-in for the person). The work lives in
:mod:`p3d_perception.training.bags`; this module is argument parsing and output.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import shlex

log = logging.getLogger(__name__)

LABELS_HELP = (
    'labels.csv (the file to edit), one row per group = one object seen across frames:\n'
    '  group_id        the group (see contact_sheet*.png and index.html)\n'
    '  label           EDIT: a category name (a new one is fine); - or ignore = junk;\n'
    '                  empty = not labelled (not used for training)\n'
    '  proposed_label  majority proposal of the model over the group\n'
    '  proposed_score  mean score of that proposal over the group\n'
    '  clusters        clusters in the group; frames: frames it was seen in\n'
    '  first_cluster   cluster_id of the pictured cluster\n'
    'clusters.csv (do not edit), one row per cluster = row index in clusters.npz:\n'
    '  cluster_id,group_id,bag,topic,frame_index,stamp_ns,frame_id,center_x..z,\n'
    '  size_x..z (box in the sensor frame, m),point_count,proposed_label,proposed_score,\n'
    '  gt_label,gt_iou (synthetic bags only; gt_label - = background)\n'
    'dataset.json explains every column again and records the bags report.')


def _vocabulary(text: str | None) -> list[str] | None:
    """Comma-separated labels, or a text file with one label per line."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        items = path.read_text(encoding='utf-8').splitlines()
    else:
        items = text.split(',')
    labels = [' '.join(x.split()) for x in items if x.strip()]
    if not labels:
        raise ValueError(f'--vocabulary {text!r} holds no labels')
    return labels


def _command(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the parsed arguments (recorded in dataset.json)."""
    parts = ['p3d', 'bags', args.bags_kind]
    if args.bags_kind == 'label-from-gt':
        parts += [str(args.dataset), '--rules', str(args.rules), '--max-per-label',
                  str(args.max_per_label), '--seed', str(args.seed)]
        if args.scans:
            parts += ['--scans', *map(str, args.scans)]
        return shlex.join(parts)
    if args.bags_kind == 'extract':
        parts += [str(b) for b in args.bags] + ['--out', str(args.out), '--every',
                                                str(args.every)]
        if args.topic:
            parts += ['--topic', args.topic]
        if args.max_clusters_per_frame:
            parts += ['--max-clusters-per-frame', str(args.max_clusters_per_frame)]
        if args.overwrite:
            parts.append('--overwrite')
    else:
        parts.append(str(args.dataset))
    for flag, value in (('--model', args.model), ('--vocabulary', args.vocabulary),
                        ('--device', args.device), ('--accept-above', args.accept_above)):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _print_next(summary) -> None:
    from p3d_perception.training.bags import LABELS_CSV
    root = summary.root
    sheets = [f.name for f in summary.files if f.suffix == '.png']
    print(f'files in {root}/: {LABELS_CSV} (edit this), {", ".join(sheets)}, index.html, '
          'clusters.csv, clusters.npz, dataset.json')
    print(f'next: look at {root / "index.html"} (or {root / sheets[0]}), write a category in '
          f'the label column of {root / LABELS_CSV} for each group (- or ignore = junk), '
          'then run:')
    print(f'  p3d finetune --dataset {root} --labels {root / LABELS_CSV} --out models/NAME')


def run_extract(args: argparse.Namespace) -> int:
    from p3d_perception.training.bags import extract_dataset
    summary = extract_dataset(
        args.bags, args.out, topic=args.topic, every=args.every, model=args.model,
        vocabulary=_vocabulary(args.vocabulary), device=args.device,
        accept_above=args.accept_above, max_clusters_per_frame=args.max_clusters_per_frame,
        overwrite=args.overwrite, command=_command(args), progress=not args.quiet)
    report = summary.report
    print(f'bags: {report.summary()}')
    for bag, why in report.bags_failed:
        print(f'  skipped {bag}: {why}')
    for bag, why in report.truncated:
        print(f'  damaged {bag}: {why}')
    if report.implausible:
        print(f'  {report.implausible} implausible cloud(s) skipped (a coordinate beyond 1 km)')
    if summary.frames_failed:
        print(f'  {summary.frames_failed} frame(s) skipped: segmentation or recognition '
              'failed on them (see the log)')
    for bag, info in summary.fixed_frames.items():
        where = info['fixed_frame'] or '-'
        note = '' if info['from_tf'] else (
            f' ({info["clouds_without_tf"]} cloud(s) without TF: grouped in the sensor frame)'
            if info['clouds_without_tf'] else '')
        print(f'  {bag}: {info["clouds"]} cloud(s) of {info["topic"]}, grouped in '
              f'{where}{note}')
    print(f'dataset: {summary.clusters} clusters in {summary.groups} groups from '
          f'{summary.clouds_used} of {summary.clouds_read} clouds (every {args.every}); '
          f'{summary.labelled_groups} group label(s) pre-filled')
    _print_next(summary)
    return 0


def run_label(args: argparse.Namespace) -> int:
    from p3d_perception.training.bags import relabel_dataset
    summary = relabel_dataset(
        args.dataset, model=args.model, vocabulary=_vocabulary(args.vocabulary),
        device=args.device, accept_above=args.accept_above, command=_command(args),
        progress=not args.quiet)
    print(f'relabelled {summary.clusters} clusters in {summary.groups} groups: '
          f'{summary.changed_proposals} proposal(s) changed, {summary.kept_labels} label(s) '
          f'kept, {summary.labelled_groups} group(s) labelled now')
    _print_next(summary)
    return 0


def run_from_pcd(args: argparse.Namespace) -> int:
    from p3d_perception.training.bags import scans_to_bags
    keep = [f.strip() for f in (args.keep_fields or '').split(',') if f.strip()]
    result = scans_to_bags(args.scans, args.out, topic=args.topic, frame_id=args.frame_id,
                           rate_hz=args.rate, storage=args.storage, keep_fields=keep,
                           bag_per_scan=args.bag_per_scan, overwrite=args.overwrite)
    for scan, why in result.skipped:
        print(f'  skipped {scan}: {why}')
    shapes = sorted({f'{s["height"]}x{s["width"]}' for s in result.scans})
    print(f'{len(result.scans)} scan(s) ({", ".join(shapes)}) -> {len(result.bags)} bag(s) '
          f'on {args.topic} in frame {args.frame_id}; {len(result.skipped)} skipped')
    where = (f'{args.out}/*' if args.bag_per_scan else str(args.out))
    print(f'next: p3d bags extract {where} --out data/NAME --every 1   '
          '(--every 1: every scan is a frame; the default 5 would use a fifth of them)')
    return 0


def run_label_from_gt(args: argparse.Namespace) -> int:
    from p3d_perception.resources import share_dir
    from p3d_perception.training.bags import label_from_ground_truth
    rules = args.rules or share_dir() / 'config' / 'eval' / 'real_kinect.yaml'
    args.rules = rules
    r = label_from_ground_truth(args.dataset, rules, scans=args.scans,
                                max_per_label=args.max_per_label, seed=args.seed,
                                min_purity=args.min_purity, command=_command(args))
    per = ', '.join(f'{k} {v}' for k, v in r.clusters_per_label.items()) or 'none'
    print(f'{r.path}: {r.labelled_groups} of {r.groups} group(s) labelled (clusters per '
          f'label: {per}); {r.junk_groups} junk (-), {r.over_budget_groups} left empty over '
          f'the budget of {args.max_per_label}, {r.unknown_groups} without ground truth')
    print(f'next: p3d finetune --dataset {args.dataset} --out models/NAME')
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', default=None,
                   help='model directory for the proposals (default: the bundled model)')
    p.add_argument('--vocabulary', default=None,
                   help='labels to propose from: comma-separated, or a file with one per line; '
                        'new names get zero-shot text prototypes (default: the model\'s '
                        'vocabulary)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--accept-above', type=float, default=None, metavar='S',
                   help='pre-fill an empty label with the proposal where proposed_score >= S '
                        '(review them!)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('bags', help='recorded bags -> labelled dataset for fine-tuning',
                       description=__doc__.splitlines()[0])
    kinds = p.add_subparsers(dest='bags_kind', metavar='KIND')
    kinds.required = True

    e = kinds.add_parser(
        'extract', help='segment, pre-label and group the clouds of bags into a dataset',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Segment every K-th PointCloud2 of the bags with the node\'s segmenter,\n'
                    'propose a label per cluster with the model (one batched call per frame),\n'
                    'group the clusters of one object across frames (boxes in the fixed TF\n'
                    'frame of the bag, else the sensor frame), and write DATASET/.\n'
                    'Damaged bags are read record by record (complete messages kept);\n'
                    'unreadable bags and bad messages are reported and skipped.',
        epilog=LABELS_HELP)
    e.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 directory or .mcap/.db3 file')
    e.add_argument('--out', required=True, type=Path, metavar='DATASET',
                   help='dataset directory to create')
    e.add_argument('--topic', default=None,
                   help='PointCloud2 topic (default: /camera/depth/color/points if present, '
                        'else the first)')
    e.add_argument('--every', type=int, default=5, metavar='K', help='use every K-th cloud')
    e.add_argument('--max-clusters-per-frame', type=int, default=None, metavar='N',
                   help='keep the N largest clusters per frame (default: the node\'s '
                        'max_objects_per_frame)')
    e.add_argument('--overwrite', action='store_true',
                   help='replace the dataset files in a non-empty DATASET (labels.csv too)')
    _model_args(e)
    e.set_defaults(func=run_extract)

    la = kinds.add_parser(
        'label', help='re-run the proposals of a dataset, keeping the labels written',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Re-classify the stored clusters (e.g. with a new model or a vocabulary\n'
                    'with new names), rewrite proposed_label/proposed_score and the\n'
                    'embeddings, keep every label already in labels.csv, and redraw the\n'
                    'contact sheet and index.html.',
        epilog=LABELS_HELP)
    la.add_argument('dataset', type=Path, metavar='DATASET')
    _model_args(la)
    la.set_defaults(func=run_label)

    fp = kinds.add_parser(
        'from-pcd', help='write PCD scans as a rosbag2 of PointCloud2, to extract like a bag',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Write PCD scans (files, or folders of *.pcd; natural order: scan2 before\n'
                    'scan10) as PointCloud2 messages of one topic with rising stamps and a\n'
                    'frame id, organised height x width, NaN points and colour kept. A scan\n'
                    'that cannot be read is reported and skipped. Each bag gets\n'
                    'pcd_sources.json (which scan each stamp is).\n\n'
                    '`p3d bags extract` groups clusters across the frames of ONE bag by\n'
                    'position: scans of one scene belong in one bag, scans of different\n'
                    'scenes in one bag each (--bag-per-scan), or their objects would be\n'
                    'joined wherever they stood at the same spot.')
    fp.add_argument('scans', nargs='+', type=Path, metavar='SCAN',
                    help='PCD file, or a folder of them')
    fp.add_argument('--out', required=True, type=Path, metavar='BAG',
                    help='bag directory to write (with --bag-per-scan: a folder of bags)')
    fp.add_argument('--topic', default='/camera/depth/points', help='PointCloud2 topic')
    fp.add_argument('--frame-id', default='camera_depth_optical_frame',
                    help='header frame id (an optical frame: z forward, y down, as PCD '
                         'captures of depth cameras are)')
    fp.add_argument('--rate', type=float, default=1.0, metavar='HZ',
                    help='stamps rise by 1/HZ seconds from scan to scan')
    fp.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    fp.add_argument('--keep-fields', default='', metavar='A,B',
                    help='extra PCD fields to carry (e.g. label); x y z and colour always')
    fp.add_argument('--bag-per-scan', action='store_true',
                    help='one bag per scan in the --out folder, named after the scan')
    fp.add_argument('--overwrite', action='store_true', help='replace existing bags')
    fp.set_defaults(func=run_from_pcd)

    gt = kinds.add_parser(
        'label-from-gt', help="fill labels.csv from the scans' ground truth (benchmarks)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='For a dataset extracted from `p3d bags from-pcd` bags of scans with a\n'
                    'per-point label field and categories.json (mOSD format): write in\n'
                    'labels.csv what a person with categories.json would. A group takes the\n'
                    "label (the rules' first accepted one) of the object holding most of its\n"
                    'points (>= --min-purity), `-` where none does (table remnants, merged\n'
                    'objects, objects no rule names); groups are taken in a seeded random\n'
                    'order until a label covers --max-per-label clusters. Rewrites every\n'
                    'label of labels.csv.')
    gt.add_argument('dataset', type=Path, metavar='DATASET')
    gt.add_argument('--rules', default=None,
                    help='eval-real rules (default config/eval/real_kinect.yaml)')
    gt.add_argument('--scans', nargs='+', default=None, type=Path, metavar='DIR',
                    help='where the scans are now, if they moved since from-pcd')
    gt.add_argument('--max-per-label', type=int, default=20, metavar='N',
                    help='labelled clusters per label at most (0 = no limit)')
    gt.add_argument('--min-purity', type=float, default=0.7,
                    help="share of a cluster's points one object must hold")
    gt.add_argument('--seed', type=int, default=0, help='order the groups are visited in')
    gt.set_defaults(func=run_label_from_gt)
