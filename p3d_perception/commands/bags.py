# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d bags extract|label``: the robot's own recordings -> a dataset a person labels.

Fine-tuning on the objects a robot actually meets starts from its bags; these
commands turn them into clusters with proposed labels, grouped per physical
object, so a person labels each object once in a CSV file. The work lives in
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
