# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The bundled model on real Kinect clutter it was not adapted on: well above the baselines."""

import pytest


#: real clutter scans the bundled model's real-data step did not train on (its card says so)
HELD_OUT_CLUTTER = ['test46', 'test50', 'test54', 'test58', 'test62']


@pytest.fixture(scope='module')
def clutter_dir(mosd_dir):
    path = mosd_dir.parent / 'mosd_clutter'
    if not path.is_dir():
        pytest.skip(f'real clutter scans not found at {path}')
    return path


@pytest.fixture(scope='module')
def held_out_report(clutter_dir, repo_root, tmp_path_factory):
    from p3d_perception.resources import default_model_path
    from p3d_perception.training.real_eval import evaluate_real
    return evaluate_real(default_model_path(), [clutter_dir],
                         config=repo_root / 'config' / 'eval' / 'real_kinect.yaml',
                         out_dir=tmp_path_factory.mktemp('held_out'), modes=('gt',),
                         scenes=HELD_OUT_CLUTTER, progress=False)


@pytest.mark.slow
def test_bundled_model_beats_majority_and_shape_baselines_on_real_clutter(held_out_report):
    r = held_out_report
    assert r['objects'] >= 45
    top1 = r['gt']['top1']
    assert top1 >= r['baselines']['majority']['top1'] + 0.2, r['gt']['per_class']
    assert top1 >= r['baselines']['shape_nearest_mean_loso']['top1'] + 0.25


@pytest.mark.slow
def test_queries_find_what_is_there_and_reject_what_is_not(held_out_report):
    q = held_out_report['gt']['queries']
    assert q['queries_present'] >= 20 and q['queries_absent'] >= 10 and q['queries_alias'] >= 1
    assert q['absent_rejection'] >= 0.8, [x for x in q['per_query'] if not x['present']]
    assert q['retrieval_at_1'] >= 0.6, [x for x in q['per_query'] if x['kind'] == 'present']
    # by hand: test50 has a chips tube and a tablet tube (tins) and no mug
    rows = {(x['scene'], x['query']): x for x in q['per_query']}
    assert rows[('test50', 'a tin')]['right']
    mug = rows[('test50', 'a mug')]
    assert mug['present'] is False and mug['right'], mug
