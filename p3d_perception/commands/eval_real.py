# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d eval-real``: recognition on real labelled scans, beside two baselines.

See :mod:`p3d_perception.training.real_eval` for what is measured and why.
"""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from p3d_perception.resources import default_model_path, share_dir
    from p3d_perception.training.real_eval import evaluate_real
    model = args.model or str(default_model_path())
    config = args.config or str(share_dir() / 'config' / 'eval' / 'real_kinect.yaml')
    report = evaluate_real(model, args.dirs, config=config, out_dir=args.out,
                           modes=args.modes, colour=not args.no_colour, device=args.device,
                           precision=args.precision,
                           scenes=args.scenes, pipeline_config=args.params,
                           progress=not args.quiet)
    b = report['baselines']
    lines = [f"{report['objects']} objects in {report['scenes']} scans "
             f"(left out: {report['skipped'] or 'none'})",
             f"majority baseline ('{b['majority']['label']}'): {b['majority']['top1']:.1%}",
             f"shape baseline (nearest class mean, leave-one-scan-out): "
             f"{b['shape_nearest_mean_loso']['top1']:.1%}"]
    for mode in ('gt', 'pipeline'):
        if mode in report:
            r = report[mode]
            extra = f", found {r['found']:.1%}" if 'found' in r else ''
            lines.append(f"{mode}: top-1 {r['top1']:.1%}, top-3 {r['top3']:.1%}{extra}; "
                         + ', '.join(f"{c} {v['top1']:.0%}" for c, v in r['per_class'].items()))
    if 'gt' in report:
        q = report['gt']['queries']
        lines.append(f"queries at min_score {q['min_score']}: retrieval@1 "
                     f"{q['retrieval_at_1']:.1%} of {q['queries_present']}, absent rejection "
                     f"{q['absent_rejection']:.1%} of {q['queries_absent']}; names an object "
                     f"only accepts: {q['alias_retrieval_at_1']:.1%} of {q['queries_alias']}")
    print('\n'.join(lines))
    print(json.dumps({'report': f'{args.out}/eval_real.json'}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('eval-real', help='recognition on real scans with labelled objects',
                       description=__doc__.splitlines()[0])
    p.add_argument('dirs', nargs='+', metavar='DIR',
                   help='folders of PCD scans with a per-point label field and categories.json')
    p.add_argument('--model', default=None, help='model folder (default: the bundled one)')
    p.add_argument('--config', default=None,
                   help='vocabulary and which labels are right per category '
                        '(default config/eval/real_kinect.yaml)')
    p.add_argument('--modes', nargs='+', choices=('gt', 'pipeline'), default=['gt', 'pipeline'],
                   help='gt: ground-truth objects as clusters; pipeline: the node\'s own '
                        'segmentation and recognition')
    p.add_argument('--scenes', nargs='+', default=None, help='only these scans (file stems)')
    p.add_argument('--params', default=None,
                   help='pipeline parameters YAML for --modes pipeline (PipelineConfig keys)')
    p.add_argument('--no-colour', action='store_true', help='xyz only')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='cpu')
    p.add_argument('--precision', choices=('auto', 'fp32'), default='auto',
                   help='auto: bf16 products on CPUs with AMX, fp16 on CUDA (as the node)')
    p.add_argument('--out', default='benchmarks/results/eval_real',
                   help='report folder (JSON and confusion PNGs)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    p.set_defaults(func=_run)
