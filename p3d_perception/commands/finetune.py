# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d finetune``: adapt a model to a robot's labelled clusters (see training/finetune.py).

Runs the same under ``torchrun --nproc_per_node N -m p3d_perception.cli finetune ...``
(one process per GPU, or CPU processes with gloo): DistributedDataParallel averages
the gradients and rank 0 writes the model.
"""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from p3d_perception.config import load
    from p3d_perception.resources import default_model_path
    from p3d_perception.training.finetune import FinetuneConfig, ScanSource, finetune
    from p3d_perception.training.train import command_line
    cfg = load(FinetuneConfig, args.config) if args.config else FinetuneConfig()
    for name in ('steps', 'seed', 'device', 'max_clusters_per_label', 'num_threads'):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.ssl_steps is not None:
        cfg.ssl.steps = args.ssl_steps
    if (args.dataset is None) == (args.scans is None):
        raise SystemExit('p3d finetune: give either --dataset or --scans')
    scans = None
    if args.scans:
        from p3d_perception.resources import share_dir
        scans = ScanSource(dirs=list(args.scans), scenes=args.scenes,
                           config=args.scan_labels or str(share_dir() / 'config' / 'eval'
                                                          / 'real_kinect.yaml'))
    result = finetune(args.model or default_model_path(), args.dataset, args.labels, args.out,
                      cfg, resume=args.resume, command=command_line(), scans=scans)
    import os
    if int(os.environ.get('RANK', '0')) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != 'classes'}, indent=2))
        print(f'model written to {args.out}; check it with `p3d eval --model {args.out} '
              f'--dataset HELD_OUT_DATASET`, deploy it with `ros2 param set /p3d_perception '
              f'model_path {args.out}`')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('finetune', help="adapt a model to a robot's labelled bag clusters",
                       description=__doc__.splitlines()[0])
    p.add_argument('--dataset', default=None, help='dataset folder from `p3d bags extract`')
    p.add_argument('--scans', nargs='+', default=None, metavar='DIR',
                   help='instead of a dataset: folders of hand-labelled real scans (PCD with '
                        'a per-point label field and categories.json, as p3d eval-real reads)')
    p.add_argument('--scenes', nargs='+', default=None,
                   help='with --scans: only these scans (file stems); keep others to evaluate')
    p.add_argument('--scan-labels', default=None,
                   help='with --scans: the eval-real rules file naming each category\'s label '
                        '(default config/eval/real_kinect.yaml)')
    p.add_argument('--labels', default=None,
                   help='labels file (default DATASET/labels.csv): one label per object group')
    p.add_argument('--out', required=True, help='model folder to write (e.g. models/my_robot)')
    p.add_argument('--model', default=None, help='model to start from (default: the bundled one)')
    p.add_argument('--config', default=None,
                   help='fine-tune YAML (see config/train/finetune.yaml); flags below override')
    p.add_argument('--steps', type=int, default=None, help='optimisation steps (upper bound)')
    p.add_argument('--ssl-steps', type=int, default=None,
                   help='self-supervised masked point modelling steps before labels '
                        '(default 0 = off; it was never better where measured, README)')
    p.add_argument('--max-clusters-per-label', type=int, default=None,
                   help='use at most this many labelled clusters per label')
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--num-threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default=None)
    p.add_argument('--resume', action='store_true',
                   help='continue from OUT/finetune_state.safetensors')
    p.set_defaults(func=_run)
