# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d bench finetune-real`` end to end on a tiny configuration.

Two real learn scans, two real clutter scans, a tiny real model and a few steps: the
whole user path (from-pcd, bags extract, label-from-gt, finetune --dataset, eval-real)
must run and report what the full benchmark reports. Only the direction of one figure
is asserted (the labels help an untrained model); its size says nothing.
"""

import contextlib
import io
import json

import pytest

from p3d_perception.cli import main

pytestmark = pytest.mark.slow


def test_tiny_finetune_real_runs_the_user_path(tmp_path, make_tiny_model, mosd_dir):
    clutter = mosd_dir.parent / 'mosd_clutter'
    if not clutter.is_dir():
        pytest.skip(f'{clutter} not found')
    model = make_tiny_model(tmp_path / 'tiny', prompt_labels=['mug', 'bowl'],
                            vocabulary=['cereal box', 'tin', 'mug', 'bowl'])
    out = tmp_path / 'results' / 'finetune_real.json'
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(['bench', 'finetune-real', '--learn', str(mosd_dir), '--learn-scenes',
                   'learn3', 'learn33', '--test', str(clutter),
                   '--test-scenes', 'test44', 'test46',
                   '--model', str(model), '--steps', '3', '--ssl-steps', '2',
                   '--known-views', '1', '--work', str(tmp_path / 'work'),
                   '--json-out', str(out)])
    text = buf.getvalue()
    assert rc == 0, text
    assert '[finetune-real] from-pcd: 2 scans -> 2 bags' in text
    r = json.loads(out.read_text())
    assert r['benchmark'] == 'finetune-real' and r['learn_scans'] == 2
    assert r['starting_model_why'] == 'given'
    ds = r['dataset']
    assert ds['labelled_groups'] >= 2 and ds['clusters'] >= ds['groups'] >= 3
    assert set(ds['labelled_clusters_per_label']) <= {'cereal box', 'tin', 'mug', 'cup', 'bowl'}
    assert all(n <= 20 for n in ds['labelled_clusters_per_label'].values())
    for when in ('before', 'after'):
        for mode in ('gt', 'pipeline'):
            assert 0.0 <= r[when][mode]['top1'] <= 1.0
            assert r[when][mode]['objects'] == r['test_objects'] == 10
            split = r[when][mode]
            assert split['other_classes']['classes'] == ['can']     # test46's can
            assert split['labelled_classes']['objects'] == 9        # boxes and tins
    assert 0.0 <= r['after']['pipeline']['found'] <= 1.0
    # the imprinted prototypes and the example cache carry the labels even after three
    # steps: an untrained model that knows none of them gains on the labelled categories
    assert r['after']['gt']['top1'] > r['before']['gt']['top1']
    nl = r['nearest_labelled']
    assert nl['labelled_clusters'] == sum(ds['labelled_clusters_per_label'].values())
    assert 0.0 <= nl['nearest_neighbour']['top1'] <= 1.0
    prop = r['proposals_on_learn_groups']
    assert prop['groups'] == ds['groups'] - ds['junk_groups']
    assert prop['accept_above_0']['prefilled_share'] == 1.0
    known = r['known_synthetic']
    assert known['views'] == 2 and 'drop_points' in known
    assert r['finetune']['steps_run'] <= 3 and r['finetune']['ssl']['steps'] == 2
    for png in r['confusion_png_after'].values():
        assert png.startswith(str(out.parent)) and (out.parent / png.split('/')[-1]).is_file()
    assert r['times']['finetune_wall_s'] > 0
