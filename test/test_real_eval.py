# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d eval-real`` on real Kinect scans: rules, ground truth, baselines, the report."""

import json

import numpy as np
import pytest

from p3d_perception.cli import main
from p3d_perception.training.real_eval import (RealObject, load_config, load_scenes, score,
                                               shape_features)


@pytest.fixture(scope='module')
def rules(repo_root):
    return load_config(repo_root / 'config' / 'eval' / 'real_kinect.yaml')


def test_rules_name_each_real_object_and_what_counts_as_right(mosd_dir, rules):
    scenes, skipped = load_scenes([mosd_dir], rules, ['learn33', 'learn30'])
    by = {s.name: s for s in scenes}
    names = [o.name for o in by['learn33'].objects]
    assert names == ['tin', 'bowl', 'bowl', 'mug', 'cup']
    tin, _, _, mug, cup = by['learn33'].objects
    assert {'can', 'jar'} <= tin.accept and 'bowl' not in tin.accept
    assert 'cup' in mug.accept          # "handle hidden": either name is right
    assert cup.accept == {'cup', 'mug'}
    assert skipped == {'other': 1}      # learn30's grey block: no label names it
    assert all(len(o.indices) == len(o.points) > 1000 for o in by['learn33'].objects)


def test_table_normal_points_to_the_camera_and_objects_stand_on_it(mosd_dir, rules):
    (scene,), _ = load_scenes([mosd_dir], rules, ['learn0'])
    centre = np.concatenate([o.points for o in scene.objects]).mean(0)
    assert np.dot(scene.up, -centre) > 0
    for o in scene.objects:
        height = o.points @ scene.up + scene.table_offset
        assert np.median(height) > 0.02, 'objects lie above the table plane'
        assert np.percentile(height, 2) > -0.02


def test_shape_features_tell_a_box_from_a_cylinder():
    rng = np.random.default_rng(0)
    up = np.array([0.0, 0.0, 1.0])
    z = rng.uniform(0, 0.2, 3000)
    # two visible faces of a 20 x 10 cm box, and the visible half of a 4 cm radius tin
    t = rng.uniform(0, 1, 3000)
    face = rng.random(3000) < 0.6
    box = np.where(face[:, None], np.c_[t * 0.2, np.zeros(3000), z],
                   np.c_[np.zeros(3000), t * 0.1, z])
    a = rng.uniform(np.pi, 2 * np.pi, 3000)
    tin = np.c_[0.04 * np.cos(a), 0.04 * np.sin(a), z]
    fb, ft = shape_features(box, up, 0.0), shape_features(tin, up, 0.0)
    assert ft[5] < 0.05 < fb[5]          # circle residual: the tin is round
    assert fb[6] < ft[6]                 # rectangle residual: the box is boxy
    assert abs(ft[4] - 0.04) < 0.005     # the fitted radius is the tin's
    assert abs(fb[0] - 0.2) < 0.01 and abs(fb[2] - 0.2) < 0.02


def test_score_counts_accepted_labels_and_missed_objects():
    def obj(name, accept):
        return RealObject('s', 0, name, accept[0], frozenset(accept), '', np.zeros(1),
                          np.zeros((1, 3), np.float32), None)
    objects = [obj('box', ['cereal box', 'tea box']), obj('mug', ['mug', 'cup']),
               obj('bowl', ['bowl']), obj('bowl', ['bowl'])]
    preds = [['tea box', 'mug'], ['cup'], [], ['mug', 'bowl']]
    labels = ['cereal box', 'tea box', 'mug', 'cup', 'bowl']
    r = score(objects, preds, ['bowl', 'box', 'mug'], labels)
    assert r['top1'] == 0.5 and r['top3'] == 0.75
    assert r['per_class'] == {'bowl': {'objects': 2, 'top1': 0.0},
                              'box': {'objects': 1, 'top1': 1.0},
                              'mug': {'objects': 1, 'top1': 1.0}}
    conf = np.asarray(r['confusion'])
    assert conf[0, -1] == 1 and conf[0, 2] == 1   # a missed bowl, a bowl called mug


def test_eval_real_command_reports_model_and_baselines(mosd_dir, tmp_path, make_tiny_model,
                                                       capsys):
    model = make_tiny_model(tmp_path / 'tiny', vocabulary=['cereal box'], command='test')
    out = tmp_path / 'report'
    assert main(['eval-real', str(mosd_dir), '--model', str(model), '--scenes', 'learn0',
                 'learn33', '--out', str(out), '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'majority baseline' in printed and 'shape baseline' in printed
    report = json.loads((out / 'eval_real.json').read_text())
    assert report['objects'] == 7
    assert report['classes'] == {'bowl': 2, 'box': 2, 'cup': 1, 'mug': 1, 'tin': 1}
    # cereal box, mug and cup are each right for two objects: the first in the vocabulary
    assert report['baselines']['majority'] == {'label': 'cereal box', 'top1': round(2 / 7, 4)}
    gt, pipe = report['gt'], report['pipeline']
    right = [o['answer'][0] in {'box': ('cereal box', 'tissue box'), 'bowl': ('bowl',),
                                'cup': ('cup', 'mug'), 'mug': ('mug', 'cup'),
                                'tin': ('can', 'jar')}[o['class']] for o in gt['per_object']]
    assert gt['top1'] == round(float(np.mean(right)), 4)
    assert 0 < pipe['found'] <= 1, 'the segmenter finds some of the real objects'
    assert (out / 'confusion_gt.png').stat().st_size > 1000
    assert (out / 'confusion_pipeline.png').stat().st_size > 1000
    q = gt['queries']
    # learn0: a box (and no bowl, cup, mug, tin); learn33: all but a box
    assert (q['queries_present'], q['queries_absent']) == (1 + 4, 4 + 1)


class _LabelQueries:
    """A recognizer stand-in whose "embedding" is one score per query class."""

    def __init__(self, classes):
        self.classes = list(classes)

    def score_query(self, text, emb):
        return np.asarray(emb)[:, self.classes.index(text[2:])]


def test_query_figures_keep_names_an_object_only_accepts_apart():
    from pathlib import Path

    from p3d_perception.training.real_eval import RealScene, query_figures
    classes = ['can', 'mug', 'tin']

    def obj(name, accept):
        return RealObject('s', 0, name, name, frozenset(accept), '', np.zeros(1, int),
                          np.zeros((1, 3), np.float32), None)

    # one tin (which also answers to "can") and a mug; scores per query (can, mug, tin)
    scene = RealScene('s', Path('s.pcd'), np.array([0, 0, 1.0]), 0.0,
                      [obj('tin', {'tin', 'can'}), obj('mug', {'mug'})])
    emb = np.array([[0.1, 0.0, 0.9],      # the tin: "a tin" finds it, "a can" barely
                    [0.0, 0.8, 0.1]])     # the mug
    q = query_figures([scene], [emb], _LabelQueries(classes), classes, 0.3)
    kinds = {r['query']: r['kind'] for r in q['per_query']}
    assert kinds == {'a can': 'alias', 'a mug': 'present', 'a tin': 'present'}
    assert (q['queries_present'], q['queries_absent'], q['queries_alias']) == (2, 0, 1)
    assert q['retrieval_at_1'] == 1.0
    assert q['alias_retrieval_at_1'] == 0.0              # top is the tin, but at 0.1
    assert q['retrieval_at_1_any_accepted_name'] == round(2 / 3, 4)
    # without the tin, "a can" and "a tin" are absent and must stay below min_score
    alone = RealScene('m', Path('m.pcd'), np.array([0, 0, 1.0]), 0.0, [obj('mug', {'mug'})])
    q = query_figures([alone], [np.array([[0.35, 0.9, 0.1]])], _LabelQueries(classes),
                      classes, 0.3)
    assert (q['queries_present'], q['queries_absent']) == (1, 2)
    assert q['absent_rejection'] == 0.5                   # "a can" scored 0.35
