# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""A tiny real training run on synthetic views: loss falls, resume works, artefacts exist."""

import csv

import numpy as np
import pytest

from p3d_perception.config import from_dict
from p3d_perception.model.checkpoint import read_card
from p3d_perception.training import train as train_mod
from p3d_perception.training.augment import AugmentConfig, augment_view
from p3d_perception.training.train import TrainConfig, pretrain, prompt_tune

CATS = ['mug', 'plate', 'banana', 'book']


def _cfg(tmp_path, epochs=4):
    return from_dict(TrainConfig, {
        'name': 'tiny',
        'model': {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
                  'encoder': {'width': 32, 'depth': 1, 'heads': 2, 'patch_hidden': 16}},
        'data': {'categories': CATS, 'held_out': ['book'], 'views_per_category': 12,
                 'val_views_per_category': 3, 'cache_dir': str(tmp_path / 'cache')},
        'optim': {'epochs': epochs, 'batch_size': 12, 'lr': 3e-3, 'warmup_steps': 2},
        'prompt_tuning': {'steps': 15, 'augment_passes': 1},
        'device': 'cpu',
    })


def _rows(path):
    return list(csv.DictReader(path.open()))


def test_augment_view_damages_but_keeps_shape():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)).astype(np.float32) * 0.05
    pts[:, 2] += 0.1
    cols = rng.integers(0, 255, (500, 3), dtype=np.uint8)
    dropped = 0
    for _ in range(40):
        p, c = augment_view(pts, cols, AugmentConfig(), rng)
        assert p.dtype == np.float32 and p.shape[1] == 3 and len(p) >= 24
        assert np.isfinite(p).all()
        dropped += c is None
        if c is not None:
            assert c.shape == p.shape and c.dtype == np.uint8
    assert 8 <= dropped <= 32          # colour dropped with p=0.5


def test_tiny_pretrain_reduces_loss_resumes_and_prompt_tunes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    out = tmp_path / 'model'
    real_plot = train_mod.plot_curves
    calls = {'n': 0}

    def interrupt_after_first_epoch(*a):
        calls['n'] += 1
        if calls['n'] == 2:
            raise KeyboardInterrupt('simulated interruption')
        real_plot(*a)

    monkeypatch.setattr(train_mod, 'plot_curves', interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out, command='test')
    assert (out / 'train_state.safetensors').is_file()
    assert not (out / 'model.safetensors').exists()
    monkeypatch.setattr(train_mod, 'plot_curves', real_plot)
    pretrain(cfg, out, resume=True, command='test --resume')
    rows = _rows(out / 'log.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2, 3, 4]      # resumed, nothing repeated
    losses = [float(r['loss']) for r in rows]
    assert losses[-1] < losses[0]
    assert (out / 'curve.png').stat().st_size > 1000
    assert not (out / 'train_state.safetensors').exists()
    card = read_card(out)
    assert card['training']['held_out_categories'] == ['book']
    assert card['vocabulary'] == ['mug', 'plate', 'banana', 'book']
    assert card['training']['command'] == 'test --resume'

    prompt_tune(cfg, out, command='test prompt')
    card = read_card(out)
    assert card['prompt_labels'] == ['mug', 'plate', 'banana']
    prompt_rows = [r for r in _rows(out / 'log.csv') if r['stage'] == 'prompt']
    assert prompt_rows and float(prompt_rows[-1]['loss']) < float(prompt_rows[0]['loss']) + 0.05
    assert 'prompt_val_top1_seen' in card['metrics']

    # fine-tuning starts from the trained weights: its first epoch beats scratch's first
    ft = _cfg(tmp_path, epochs=1)
    ft.init_from = str(out)
    pretrain(ft, tmp_path / 'ft', command='test finetune')
    assert float(_rows(tmp_path / 'ft' / 'log.csv')[0]['loss']) < losses[0]
    assert read_card(tmp_path / 'ft')['training']['init_from'] == str(out)
    bad = _cfg(tmp_path, epochs=1)
    bad.init_from = str(out)
    bad.model.encoder.width = 48
    with pytest.raises(Exception, match='model config differs'):
        pretrain(bad, tmp_path / 'bad', command='x')


def test_openclip_random_space_trains_with_rendered_images(tmp_path):
    """Point<->text and point<->image (CG3D visual prompts) losses on the OpenCLIP path."""
    cfg = _cfg(tmp_path, epochs=2)
    cfg.model.text_space = 'openclip:p3d-tiny/random'
    cfg.loss.image_size = 32
    out = pretrain(cfg, tmp_path / 'oc', command='test openclip')
    rows = _rows(out / 'log.csv')
    assert all(r['image'] for r in rows)             # image loss was computed
    import torch
    from p3d_perception.model.checkpoint import load_model
    from p3d_perception.model.factory import create_model
    m, _ = load_model(out)
    torch.manual_seed(cfg.seed)                      # same init as the run
    init = create_model(cfg.model)
    assert not torch.allclose(m.prompt.visual, init.prompt.visual)   # CG3D prompts learned
    assert torch.allclose(m.prompt.ctx, init.prompt.ctx)             # text head untouched
    from p3d_perception.recognize import Recognizer
    rec = Recognizer.from_checkpoint(out, device='cpu')
    assert rec.text_space == 'openclip:p3d-tiny/random'
    rng = np.random.default_rng(0)
    res = rec.classify([rng.normal(size=(300, 3)).astype(np.float32) * 0.05])
    assert res[0].embedding.shape == (64,) and res[0].label in CATS


def test_cli_train_eval_export(tmp_path, capsys):
    """The p3d subcommands wire up: train pretrain/prompt, eval (PNG + JSON), export."""
    import json

    import yaml

    from p3d_perception.cli import main
    from p3d_perception.config import to_dict
    cfg = _cfg(tmp_path, epochs=1)
    cfg.prompt_tuning.steps = 3
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / 'cli_model'
    assert main(['train', 'pretrain', '--config', str(path), '--out', str(out)]) == 0
    assert main(['train', 'prompt', '--config', str(path), '--out', str(out)]) == 0
    assert main(['eval', '--model', str(out), '--views-per-category', '2', '--seed', '9',
                 '--calibrate', '--update-card']) == 0
    report = json.loads((out / 'eval' / 'eval.json').read_text())
    assert report['summary']['vocabulary_size'] == 4
    assert (out / 'eval' / 'confusion_deployed.png').stat().st_size > 1000
    assert 'eval' in read_card(out)['metrics'] and 'open_vocab' in read_card(out)
    assert main(['export', '--model', str(out), '--out', str(tmp_path / 'e.onnx')]) == 0
    assert (tmp_path / 'e.onnx').is_file()
    assert main(['eval', '--model', str(tmp_path / 'missing')]) == 1
    assert 'model not found' in capsys.readouterr().err
