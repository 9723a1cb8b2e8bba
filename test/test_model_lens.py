# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Frozen-backbone (ViT-Lens / Any2Point) encoder: frozen layers match, few params train."""

import numpy as np
import pytest
import torch

from p3d_perception.config import from_dict
from p3d_perception.model.checkpoint import load_model, save_model
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.export import check_parity, export_encoder
from p3d_perception.model.factory import create_model
from p3d_perception.model.grouping import prepare_batch
from p3d_perception.model.text_space import load_text_space

LENS = {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
        'encoder': {'kind': 'frozen_lens', 'patch_hidden': 16, 'adapter_dim': 8,
                    'lens_layers': 2}}


def _batch(cfg, n=3):
    rng = np.random.default_rng(0)
    return prepare_batch([rng.normal(size=(200, 3)).astype(np.float32) for _ in range(n)],
                         None, cfg.grouping)


def test_rebuilt_bert_layer_equals_transformers_layer():
    from p3d_perception.model.lens import FrozenBertLayer
    space = load_text_space('minilm')
    hf = space.bert.encoder.layer[0]
    mine = FrozenBertLayer(hf, space.bert.config.num_attention_heads, 1e-12).eval()
    x = torch.randn(2, 5, 384)
    with torch.no_grad():
        ref = hf(x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        torch.testing.assert_close(mine(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('space', ['minilm', 'openclip:p3d-tiny/random'])
def test_only_lens_parts_train_and_backbone_is_not_saved(space, tmp_path):
    cfg = from_dict(ModelConfig, dict(LENS, text_space=space))
    model = create_model(cfg)
    enc = model.encoder
    total = sum(p.numel() for p in enc.parameters())
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert 0 < trainable < total
    if space == 'minilm':
        assert trainable / total < 0.1
    emb = model.encode_points(_batch(cfg))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    emb.sum().backward()
    for name, p in enc.named_parameters():
        if name.startswith(enc.frozen_prefixes):
            assert p.grad is None, name
    assert enc.patch_embed.first[0].weight.grad is not None
    state = model.saved_state()
    assert not any(k.startswith('encoder.backbone.') for k in state)
    save_model(model, tmp_path / 'lens', vocabulary=['mug'], prompt_labels=[])
    loaded, card = load_model(tmp_path / 'lens')
    b = _batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_points(b), model.eval().encode_points(b))


def test_lens_exports_to_onnx(tmp_path):
    cfg = from_dict(ModelConfig, dict(LENS, text_space='openclip:p3d-tiny/random'))
    model = create_model(cfg).eval()
    path = export_encoder(model, tmp_path / 'lens.onnx')
    assert check_parity(model, path, batches=(1, 5))['ok']
