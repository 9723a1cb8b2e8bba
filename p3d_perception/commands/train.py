# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d train pretrain|prompt``, ``p3d eval`` and ``p3d export``: the model's life cycle.

Kept together because they share the model directory contract (weights + card) and
the training config; heavy imports happen inside the handlers so ``p3d --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json


def _train(args: argparse.Namespace) -> int:
    from p3d_perception.config import load
    from p3d_perception.training.train import TrainConfig, command_line, pretrain, prompt_tune
    cfg = load(TrainConfig, args.config)
    if args.device:
        cfg.device = args.device
    out = args.out or f'out/{cfg.name}'
    if args.stage == 'pretrain':
        path = pretrain(cfg, out, resume=args.resume, command=command_line())
    else:
        if args.resume:
            raise ValueError('--resume applies to pretrain; prompt tuning is short, rerun it')
        path = prompt_tune(cfg, args.model or out, out, command=command_line())
    print(f'model written to {path}')
    return 0


def _eval(args: argparse.Namespace) -> int:
    from p3d_perception.training.evaluate import evaluate_command
    result = evaluate_command(args)
    print(json.dumps(result['summary'], indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from p3d_perception.training.export import export_onnx
    report = export_onnx(args.model, args.out, batch=args.batch, opset=args.opset)
    print(json.dumps(report, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('train', help='train the 3D encoder (pretrain) or its prompt head')
    p.add_argument('stage', choices=('pretrain', 'prompt'),
                   help='pretrain: encoder from scratch; prompt: CoOp context on a frozen model')
    p.add_argument('--config', required=True, help='training YAML (config/train/*.yaml)')
    p.add_argument('--out', default=None, help='model directory (default out/<name>)')
    p.add_argument('--model', default=None,
                   help='prompt stage: model to start from (default: --out)')
    p.add_argument('--resume', action='store_true',
                   help='continue an interrupted pretrain run from --out/train_state.safetensors')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default=None)
    p.set_defaults(func=_train)

    e = sub.add_parser('eval', help='top-1/top-5, per-class accuracy and confusion matrix')
    e.add_argument('--model', required=True, help='model directory')
    e.add_argument('--data', default=None, help='object views .npz (default: generate)')
    e.add_argument('--dataset', default=None,
                   help='a bag dataset (p3d bags extract) to evaluate on instead of views')
    e.add_argument('--labels', default=None,
                   help='with --dataset: the labels file (default DATASET/labels.csv)')
    e.add_argument('--ground-truth', action='store_true',
                   help='with --dataset: score against the synthetic bags\' ground truth')
    e.add_argument('--seed', type=int, default=12345, help='seed of generated test views')
    e.add_argument('--views-per-category', type=int, default=30)
    e.add_argument('--categories', nargs='*', default=None,
                   help='categories to test (default: the model vocabulary)')
    e.add_argument('--camera', default='d435')
    e.add_argument('--out', default=None, help='report folder (default <model>/eval)')
    e.add_argument('--calibrate', action='store_true',
                   help='first choose the seen-class bias on seen-class validation views and '
                        'store it in the card')
    e.add_argument('--update-card', action='store_true',
                   help='write the summary into the model card metrics')
    e.add_argument('--device', default='cpu')
    e.set_defaults(func=_eval)

    x = sub.add_parser('export', help='export the encoder (after grouping) to ONNX')
    x.add_argument('--model', required=True, help='model directory')
    x.add_argument('--out', required=True, help='output .onnx file')
    x.add_argument('--batch', type=int, default=4, help='batch used for tracing/parity')
    x.add_argument('--opset', type=int, default=17)
    x.set_defaults(func=_export)
