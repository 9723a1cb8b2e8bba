# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""ONNX export of the encoder matches torch, and the ORT backend serves the Recognizer."""

import numpy as np
import pytest
import torch

from p3d_perception.config import from_dict
from p3d_perception.model.checkpoint import save_model
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.factory import create_model
from p3d_perception.recognize import ModelError, Recognizer
from p3d_perception.runtime import OnnxRuntime
from p3d_perception.training.export import export_onnx

TINY = {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
        'encoder': {'width': 32, 'depth': 2, 'heads': 2, 'patch_hidden': 16}}


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = create_model(from_dict(ModelConfig, TINY))
    out = tmp_path_factory.mktemp('x') / 'tiny'
    save_model(model, out, vocabulary=['mug', 'bowl'], prompt_labels=[])
    return out


def test_export_parity_and_dynamic_batch(model_dir, tmp_path):
    report = export_onnx(model_dir, tmp_path / 'enc.onnx')
    assert report['parity']['ok'] and report['parity']['max_abs_diff'] <= 1e-4
    assert report['parity']['batches'] == [1, 7, 32]
    import onnx
    m = onnx.load(str(tmp_path / 'enc.onnx'))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'


def test_onnxruntime_backend_matches_torch(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(int(rng.integers(50, 500)), 3)).astype(np.float32) * 0.04
              for _ in range(5)]
    rt = Recognizer.from_checkpoint(model_dir, device='cpu')
    export_onnx(model_dir, model_dir / 'encoder.onnx')
    ro = Recognizer.from_checkpoint(model_dir, device='cpu', backend='onnxruntime')
    assert ro.backend == 'onnxruntime' and ro.device == 'cpu'
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    a, b = rt.classify(clouds), ro.classify(clouds)
    assert [x.label for x in a] == [x.label for x in b]
    with pytest.raises(ModelError, match='unknown ONNX Runtime device'):
        OnnxRuntime(model_dir / 'encoder.onnx', 'quantum')
    with pytest.raises(ModelError, match='backend'):
        Recognizer.from_checkpoint(model_dir, backend='tflite')
