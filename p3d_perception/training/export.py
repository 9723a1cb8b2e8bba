# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d export``: ship a model's encoder as ONNX, with a report that proves it matches torch.

The export itself lives in ``p3d_perception.model.export`` because the runtime needs
it too; this module only adds what an operator wants from the command: the graph's
shapes and a parity check on real grouped clouds that fails the export if it drifts.
"""

from __future__ import annotations

from pathlib import Path

from p3d_perception.model.checkpoint import load_model
from p3d_perception.model.export import (
    check_parity, DEFAULT_BATCH, DEFAULT_OPSET, export_encoder, PARITY_TOLERANCE)


def export_onnx(model_dir: str | Path, out: str | Path, batch: int = DEFAULT_BATCH,
                opset: int = DEFAULT_OPSET) -> dict:
    """Model directory -> ONNX file + parity report; RuntimeError if parity fails."""
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
