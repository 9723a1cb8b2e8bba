# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Encoder throughput (clusters/s incl. grouping), ONNX parity and ONNX Runtime speed.

The recogniser's cost per frame is grouping (FPS + kNN) plus one batched encoder
call, so the figure that matters is end-to-end clusters per second through
``Recognizer.embed`` on realistic clusters (synthetic depth-camera views), for each
backend on identical inputs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default=None, help='model directory (default: the bundled one)')
    parser.add_argument('--batch', type=int, default=32, help='clusters per call (one frame)')
    parser.add_argument('--calls', type=int, default=10, help='timed calls per backend')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    parser.add_argument('--no-onnx', action='store_true', help='skip the ONNX Runtime part')


def _clusters(n: int, seed: int = 7) -> tuple[list, list]:
    try:
        from p3d_perception.training.synthetic import CATEGORIES, generate_object_views
        cats = list(CATEGORIES)
        views = generate_object_views(cats, max(1, n // len(cats) + 1), seed)
        pts = [views.view(i)[0] for i in range(n)]
        cols = [views.view(i)[1] for i in range(n)]
        return pts, cols
    except ImportError:   # synthetic world not installed: random blobs
        rng = np.random.default_rng(seed)
        pts = [rng.normal(size=(int(rng.integers(300, 4000)), 3)).astype(np.float32) * 0.05
               for _ in range(n)]
        return pts, [rng.integers(0, 255, p.shape, dtype=np.uint8) for p in pts]


def _time(fn, calls: int) -> list[float]:
    fn()                                     # warm-up
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _torch_figures(rec, batch, pts, cols, args) -> dict:
    t_enc = _time(lambda: rec._runtime(batch.patches, batch.centers, batch.scale), args.calls)
    t_all = _time(lambda: rec.embed(pts, cols), args.calls)
    med = float(np.median(t_all))
    return {'runtime': rec.runtime_name,
            'encoder_ms_per_call': round(1e3 * float(np.median(t_enc)), 2),
            'end_to_end_ms_per_call': round(1e3 * med, 2),
            'clusters_per_s_incl_grouping': round(args.batch / med, 1)}


def run(args: argparse.Namespace) -> dict:
    from p3d_perception.model.export import check_parity, export_encoder
    from p3d_perception.model.grouping import prepare_batch
    from p3d_perception.recognize import Recognizer
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from p3d_perception.resources import default_model_path
        args.model = str(default_model_path())
    rec = Recognizer.from_checkpoint(args.model, device='cpu', precision='fp32')
    g = rec.model.cfg.grouping
    pts, cols = _clusters(args.batch)
    n_in = [len(p) for p in pts]
    res: dict = {
        'model': args.model,
        'encoder_parameters': int(sum(p.numel() for p in rec.model.encoder.parameters())),
        'input': {'clusters_per_call': args.batch, 'cluster_points_mean': float(np.mean(n_in)),
                  'cluster_points_max': int(max(n_in)), 'num_points': g.num_points,
                  'num_groups': g.num_groups, 'group_size': g.group_size,
                  'with_color': True},
        'torch_threads': torch.get_num_threads(),
        'goal_clusters_per_s': 500,
    }
    t_group = _time(lambda: prepare_batch(pts, cols, g, np.random.default_rng(0)), args.calls)
    batch = prepare_batch(pts, cols, g, np.random.default_rng(0))
    res['grouping_ms_per_call'] = round(1e3 * float(np.median(t_group)), 2)
    res['torch_cpu'] = _torch_figures(rec, batch, pts, cols, args)
    auto = Recognizer.from_checkpoint(args.model, device='cpu')
    res['precision_auto'] = auto.runtime_name
    if auto.runtime_name != rec.runtime_name:
        # what the node runs by default on this CPU, and how far it is from fp32
        res['torch_cpu_auto'] = _torch_figures(auto, batch, pts, cols, args)
        e32, e_auto = rec.embed(pts, cols), auto.embed(pts, cols)
        same = (rec.label_logits(torch.from_numpy(e32)).argmax(-1)
                == auto.label_logits(torch.from_numpy(e_auto)).argmax(-1))
        res['torch_cpu_auto']['vs_fp32'] = {
            'min_cosine': round(float((e32 * e_auto).sum(-1).min()), 6),
            'same_top1_label_share': round(float(same.float().mean()), 4)}
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_encoder(rec.model, Path(tmp) / 'encoder.onnx')
            parity = check_parity(rec.model, path)
            ort_rec = Recognizer.from_checkpoint(args.model, device='cpu',
                                                 backend='onnxruntime', onnx_path=path)
            t_ort = _time(lambda: ort_rec._runtime(batch.patches, batch.centers, batch.scale),
                          args.calls)
            t_ort_all = _time(lambda: ort_rec.embed(pts, cols), args.calls)
            diff = float(np.abs(ort_rec.embed(pts, cols) - rec.embed(pts, cols)).max())
        m = float(np.median(t_ort_all))
        res['onnx'] = {'parity_max_abs_diff': parity['max_abs_diff'],
                       'parity_real_clusters_max_abs_diff': diff,
                       'parity_ok': parity['ok'] and diff <= 1e-4}
        res['onnxruntime_cpu'] = {
            'providers': ort_rec._runtime.providers,
            'encoder_ms_per_call': round(1e3 * float(np.median(t_ort)), 2),
            'end_to_end_ms_per_call': round(1e3 * m, 2),
            'clusters_per_s_incl_grouping': round(args.batch / m, 1),
        }
    return res
