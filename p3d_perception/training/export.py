# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Export the encoder (after grouping) to ONNX and prove it matches torch.

Grouping stays outside the graph (it is a sequential FPS loop), so the exported
network is dense: patches (B,G,K,6), centres (B,G,3), log-radius (B,1) -> (B,D)
with a dynamic batch axis. Every export is checked against torch with ONNX Runtime
on real grouped clouds; the report carries the max abs difference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from p3d_perception.model.checkpoint import load_model
from p3d_perception.model.factory import P3DModel
from p3d_perception.model.grouping import prepare_batch
from p3d_perception.runtime import INPUT_NAMES, OUTPUT_NAME

LOG = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


def _sample_clusters(n: int, seed: int = 0) -> tuple[list, list]:
    """Plausible object-like clusters (boxes, cylinders, blobs) of varying sizes."""
    rng = np.random.default_rng(seed)
    pts, cols = [], []
    for i in range(n):
        m = int(rng.integers(100, 3000))
        u = rng.uniform(-1, 1, (m, 3)) * rng.uniform(0.02, 0.15, 3)
        if i % 2:
            th = rng.uniform(0, 2 * np.pi, m)
            u[:, 0], u[:, 1] = np.cos(th) * 0.04, np.sin(th) * 0.04
        pts.append(u.astype(np.float32) + np.array([0.0, 0.0, 0.1], np.float32))
        cols.append(rng.integers(0, 255, (m, 3), dtype=np.uint8) if i % 3 else None)
    return pts, cols


def export_encoder(model: P3DModel, out: str | Path, batch: int = 4, opset: int = 17) -> Path:
    """Trace the encoder into ``out`` (atomic) with a dynamic batch axis."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = model.encoder.cpu().eval()
    pts, cols = _sample_clusters(batch)
    b = prepare_batch(pts, cols, model.cfg.grouping)
    tmp = out.with_name(out.name + '.tmp')
    dyn = {n: {0: 'batch'} for n in INPUT_NAMES}
    dyn[OUTPUT_NAME] = {0: 'batch'}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)   # legacy exporter: dynamic_axes
        torch.onnx.export(enc, (b.patches, b.centers, b.scale), str(tmp),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=dyn, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    os.replace(tmp, out)
    return out


def check_parity(model: P3DModel, onnx_path: str | Path, batches: tuple[int, ...] = (1, 7, 32),
                 seed: int = 1) -> dict:
    """Max abs difference of ORT vs torch embeddings on real grouped clusters."""
    from p3d_perception.runtime import OnnxRuntime
    rt = OnnxRuntime(onnx_path, 'cpu')
    worst = 0.0
    for n in batches:
        pts, cols = _sample_clusters(n, seed + n)
        b = prepare_batch(pts, cols, model.cfg.grouping)
        with torch.no_grad():
            ref = torch.nn.functional.normalize(
                model.encoder.cpu().eval()(b.patches, b.centers, b.scale), dim=-1)
        got = rt(b.patches, b.centers, b.scale)
        worst = max(worst, float((ref - got).abs().max()))
    return {'max_abs_diff': worst, 'batches': list(batches), 'tolerance': PARITY_TOLERANCE,
            'ok': worst <= PARITY_TOLERANCE}


def export_onnx(model_dir: str | Path, out: str | Path, batch: int = 4, opset: int = 17) -> dict:
    """``p3d export``: model directory -> ONNX file + parity report."""
    model, card = load_model(model_dir)
    path = export_encoder(model, out, batch, opset)
    report = {'model': str(model_dir), 'onnx': str(path), 'opset': opset,
              'size_bytes': path.stat().st_size,
              'inputs': {'patches': ['batch', model.cfg.grouping.num_groups,
                                     model.cfg.grouping.group_size, 6],
                         'centers': ['batch', model.cfg.grouping.num_groups, 3],
                         'scale': ['batch', 1]},
              'output': ['batch', model.space.dim],
              'parity': check_parity(model, path)}
    if not report['parity']['ok']:
        raise RuntimeError(f'ONNX export differs from torch by '
                           f'{report["parity"]["max_abs_diff"]:.2e} (> {PARITY_TOLERANCE})')
    return report


def export_onnx_cached(model: P3DModel, model_dir: str | Path) -> Path:
    """An ONNX copy of a model's encoder in the temp dir, keyed by its weights' hash."""
    digest = hashlib.sha1(Path(model_dir, 'model.safetensors').read_bytes()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / 'p3d_onnx' / f'encoder_{digest}.onnx'
    if not path.is_file():
        LOG.info('exporting encoder to %s for ONNX Runtime', path)
        export_encoder(model, path)
    return path
