# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d bench real-recognition`` end to end on two real scans with a tiny model."""

import json

import pytest
import yaml

from p3d_perception.cli import main

pytestmark = pytest.mark.slow


def test_each_scan_is_scored_by_a_model_adapted_without_it(mosd_dir, tmp_path,
                                                           make_tiny_model, repo_root):
    base = make_tiny_model(tmp_path / 'tiny', vocabulary=['cereal box', 'bowl', 'mug'],
                           prompt_labels=['cereal box', 'bowl', 'mug'], command='test')
    cfg = yaml.safe_load((repo_root / 'config' / 'train' / 'finetune_real.yaml').read_text())
    cfg.update(steps=6, eval_every=3, replay_views_per_category=2, batch_size=8)
    (tmp_path / 'ft.yaml').write_text(yaml.safe_dump(cfg))
    out = tmp_path / 'cv'
    assert main(['bench', 'real-recognition', str(mosd_dir), '--model', str(base),
                 '--finetune-config', str(tmp_path / 'ft.yaml'), '--scenes', 'learn0',
                 'learn33', '--modes', 'gt', '--out', str(out),
                 '--json-out', str(tmp_path / 'r.json')]) == 0
    r = json.loads((tmp_path / 'r.json').read_text())
    assert r['folds'] == 2 and r['scenes'] == 2
    assert [f['test_scenes'] for f in r['per_fold']] == [['learn0'], ['learn33']]
    assert r['gt']['objects'] == 7 and 0 <= r['gt']['top1'] <= 1
    assert r['baselines']['majority'] > 0
    assert (out / 'confusion_gt.png').stat().st_size > 1000
    # the folds hold different categories; pooled rows are added up by name
    pooled = dict(zip(r['gt']['confusion_rows'], r['gt']['confusion']))
    assert {c: sum(row) for c, row in pooled.items()} == \
        {c: v['objects'] for c, v in r['gt']['per_class'].items()}
    # fold 0 adapted on learn33 only: its report scores learn0's two boxes
    fold0 = json.loads((out / 'fold0' / 'eval_real.json').read_text())
    assert fold0['objects'] == 2 and fold0['classes'] == {'box': 2}
