# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Real-scan recognition, cross-validated: the real-data step of the model recipe, honestly.

The bundled model's last training step adapts it to hand-labelled real scans (what a
user does with their own robot's data). A figure on scans it trained on would measure
memory, so this splits the development scans into folds by scan (every k-th scan in
natural order, so each fold holds every kind of scene), adapts the base model on the
other folds with ``p3d finetune --scans``, and scores each fold's held-out scans with
``p3d eval-real`` (ground-truth clusters and the node's own segmentation), beside the
base model and the two baselines on the same scans. Figures are pooled over folds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import tempfile

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('dirs', nargs='*', metavar='DIR',
                   default=['../shared/data/mosd_learn', '../shared/data/mosd_clutter'],
                   help='labelled scan folders (default: the mOSD learn and clutter scans)')
    p.add_argument('--model', default=None,
                   help='base model before the real-data step (default: the bundled '
                        "model's recorded base, else the bundled model)")
    p.add_argument('--config', default=None,
                   help='eval-real rules (default config/eval/real_kinect.yaml)')
    p.add_argument('--finetune-config', default=None,
                   help='default config/train/finetune_real.yaml')
    p.add_argument('--folds', type=int, default=2)
    p.add_argument('--scenes', nargs='+', default=None,
                   help='only these scans (file stems; default all)')
    p.add_argument('--modes', nargs='+', choices=('gt', 'pipeline'), default=['gt', 'pipeline'])
    p.add_argument('--out', default='benchmarks/results/real_recognition',
                   help='folder for per-fold reports and the pooled confusion PNG')
    p.add_argument('--keep-models', default=None, metavar='DIR',
                   help="keep each fold's adapted model under DIR/fold<k> (default: a "
                        'temporary folder, removed at the end)')


def _pool(reports: list[dict], mode: str) -> dict:
    per_object = []
    n = sum(r[mode]['objects'] for r in reports)
    top1 = sum(r[mode]['top1'] * r[mode]['objects'] for r in reports) / max(n, 1)
    top3 = sum(r[mode]['top3'] * r[mode]['objects'] for r in reports) / max(n, 1)
    classes: dict[str, list[float]] = {}
    for r in reports:
        for c, v in r[mode]['per_class'].items():
            classes.setdefault(c, [0, 0])
            classes[c][0] += v['objects']
            classes[c][1] += v['top1'] * v['objects']
        per_object += r[mode].get('per_object', [])
    out = {'objects': n, 'top1': round(top1, 4), 'top3': round(top3, 4),
           'per_class': {c: {'objects': int(k), 'top1': round(s / k, 4)}
                         for c, (k, s) in sorted(classes.items())}}
    if mode == 'pipeline':
        out['found'] = round(sum(r[mode]['found'] * r[mode]['objects'] for r in reports)
                             / max(n, 1), 4)
    if mode == 'gt':
        q = [r['gt']['queries'] for r in reports]

        def pooled(key: str, *counts: str) -> float:
            """A fold figure weighted by how many queries each fold asked of that kind."""
            n = [sum(x[c] for c in counts) for x in q]
            return round(sum(x[key] * k for x, k in zip(q, n) if k) / sum(n), 4) \
                if sum(n) else float('nan')

        out['queries'] = {
            'min_score': q[0]['min_score'], 'present': sum(x['queries_present'] for x in q),
            'absent': sum(x['queries_absent'] for x in q),
            'alias': sum(x['queries_alias'] for x in q),
            'retrieval_at_1': pooled('retrieval_at_1', 'queries_present'),
            'absent_rejection': pooled('absent_rejection', 'queries_absent'),
            'alias_retrieval_at_1': pooled('alias_retrieval_at_1', 'queries_alias'),
            'retrieval_at_1_any_accepted_name': pooled('retrieval_at_1_any_accepted_name',
                                                       'queries_present', 'queries_alias')}
    # each fold's rows are the categories its held-out scans hold: add them up by name
    names = sorted({c for r in reports for c in r['classes']})
    conf = np.zeros((len(names), len(reports[0][mode]['confusion_columns'])))
    for r in reports:
        for row, c in zip(r[mode]['confusion'], sorted(r['classes'])):
            conf[names.index(c)] += row
    out['confusion'] = conf.astype(int).tolist()
    out['confusion_rows'] = names
    out['confusion_columns'] = reports[0][mode]['confusion_columns']
    return out


def _baselines(reports: list[dict]) -> dict:
    n = sum(r['objects'] for r in reports)
    return {k: round(sum(r['baselines'][k]['top1'] * r['objects'] for r in reports)
                     / max(n, 1), 4) for k in ('majority', 'shape_nearest_mean_loso')}


def run(args: argparse.Namespace) -> dict:
    from p3d_perception.config import load
    from p3d_perception.model.checkpoint import read_card
    from p3d_perception.resources import default_model_path, share_dir
    from p3d_perception.training.finetune import FinetuneConfig, ScanSource, finetune
    from p3d_perception.training.real_eval import (evaluate_real, load_config, load_scenes,
                                                   plot_confusion)
    rules = args.config or str(share_dir() / 'config' / 'eval' / 'real_kinect.yaml')
    ft_cfg_path = args.finetune_config or str(share_dir() / 'config' / 'train'
                                              / 'finetune_real.yaml')
    base = args.model
    if base is None:
        card = read_card(default_model_path())
        steps = (card.get('training') or {}).get('finetunes') or []
        base = steps[0]['from'] if steps else str(default_model_path())
    if args.folds < 2:
        raise SystemExit('--folds must be >= 2 (each scan is scored by a model that never '
                         'saw it)')
    scenes, _ = load_scenes(args.dirs, load_config(rules), args.scenes)
    names = [s.name for s in scenes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds, before = [], []
    with tempfile.TemporaryDirectory(prefix='p3d_real_cv_') as tmp:
        models_dir = Path(args.keep_models or tmp)
        for k in range(args.folds):
            test = names[k::args.folds]
            train = [n for n in names if n not in test]
            print(f'fold {k + 1}/{args.folds}: adapting on {len(train)} scans, '
                  f'scoring {len(test)}', flush=True)
            cfg = load(FinetuneConfig, ft_cfg_path)
            model_k = models_dir / f'fold{k}'
            info = finetune(base, None, None, model_k, cfg,
                            scans=ScanSource(dirs=list(args.dirs), config=rules, scenes=train),
                            command='p3d bench real-recognition')
            rep = evaluate_real(model_k, args.dirs, config=rules, out_dir=out / f'fold{k}',
                                modes=args.modes, scenes=test, progress=True)
            rep['finetune'] = {k2: info[k2] for k2 in ('best_step', 'best_val_top1',
                                                       'train_time_s')}
            rep['test_scenes'] = test
            folds.append(rep)
            before.append(evaluate_real(base, args.dirs, config=rules,
                                        out_dir=out / f'fold{k}_base', modes=('gt',),
                                        scenes=test, progress=False))
    classes = sorted({c for r in folds for c in r['classes']})
    result = {'base_model': str(base), 'data': list(args.dirs), 'rules': rules,
              'finetune_config': ft_cfg_path, 'folds': args.folds,
              'scenes': len(names), 'baselines': _baselines(folds),
              'base_gt_top1': round(sum(r['gt']['top1'] * r['objects'] for r in before)
                                    / max(sum(r['objects'] for r in before), 1), 4)}
    for mode in args.modes:
        pooled = _pool(folds, mode)
        plot_confusion(pooled, classes, out / f'confusion_{mode}.png',
                       f'real scans, {args.folds}-fold by scan, {mode}: top-1 '
                       f'{pooled["top1"]:.3f} (majority {result["baselines"]["majority"]:.3f})')
        result[mode] = dict(pooled)
        result[mode]['confusion_png'] = str(out / f'confusion_{mode}.png')
    result['per_fold'] = [{'test_scenes': r['test_scenes'], 'finetune': r['finetune'],
                           **{m: {'top1': r[m]['top1'], 'objects': r[m]['objects']}
                              for m in args.modes}} for r in folds]
    (out / 'summary.json').write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    return result
