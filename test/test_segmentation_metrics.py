# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The evaluation protocol on hand-made labels whose answer is worked out by hand.

The published unseen-object-segmentation figures (overlap P/R/F, objects with
F >= 0.75) rest on a one-to-one Hungarian assignment; a greedy "best cluster per
object" would let one cluster count for two objects, so the example below is
built so that greedy and Hungarian disagree.
"""

import numpy as np
import pytest

from p3d_perception.segmentation import overlap_scores, scene_kind
from p3d_perception.segmentation.metrics import split_components


def _labels(*runs):
    """Concatenate (gt, pred, count) runs into per-point arrays."""
    gt = np.concatenate([np.full(n, g) for g, _, n in runs])
    pred = np.concatenate([np.full(n, p) for _, p, n in runs])
    return pred, gt


def test_hungarian_assignment_is_one_to_one_with_the_known_answer():
    # objects A (id 1) and B (id 2) of 100 points; cluster 0 holds 70 of A and 60 of B,
    # cluster 1 the other 30 of A, cluster 2 20 of B and 10 table points; 40 points of
    # B and 50 table points are unlabelled
    pred, gt = _labels((1, 0, 70), (2, 0, 60), (1, 1, 30), (2, 2, 20), (-1, 2, 10),
                       (2, -1, 20), (-1, -1, 50))
    s = overlap_scores(pred, gt)
    # pair F: A-0 .6087, A-1 .4615, B-0 .5217, B-2 .3077. Greedy gives cluster 0 to both;
    # one-to-one, A-0 + B-2 = .9164 < A-1 + B-0 = .9833, so A gets cluster 1, B cluster 0
    assert s['f_per_object'] == {1: pytest.approx(0.4615, abs=1e-4),
                                 2: pytest.approx(0.5217, abs=1e-4)}
    # matched intersection 30 + 60 over 190 cluster points and 200 object points
    assert s['precision'] == pytest.approx(90 / 190)
    assert s['recall'] == pytest.approx(90 / 200)
    p, r = 90 / 190, 90 / 200
    assert s['f_measure'] == pytest.approx(2 * p * r / (p + r))
    assert s['objects'] == 2 and s['clusters'] == 3 and s['objects_f075'] == 0


def test_perfect_split_and_empty_cases():
    pred, gt = _labels((1, 5, 40), (2, 7, 60), (-1, -1, 30))
    s = overlap_scores(pred, gt)
    assert s['precision'] == s['recall'] == s['f_measure'] == 1.0
    assert s['objects_f075'] == 2
    # an object cut in half: only the better half counts, F = 2 * .5 / 1.5 per object
    pred, gt = _labels((1, 0, 50), (1, 1, 50))
    s = overlap_scores(pred, gt)
    assert s['f_per_object'][1] == pytest.approx(2 / 3, abs=1e-4) and s['objects_f075'] == 0
    assert s['precision'] == pytest.approx(0.5) and s['recall'] == pytest.approx(0.5)
    nothing = overlap_scores(np.full(5, -1), np.array([1, 1, 1, -1, -1]))
    assert nothing['recall'] == 0.0 and nothing['f_per_object'] == {1: 0.0}


def test_split_components_separates_one_id_over_two_regions():
    gt = np.full((20, 30), -1)
    gt[2:8, 2:10] = 7          # 48 pixels
    gt[12:18, 15:28] = 7       # 78 pixels, the larger piece keeps the id
    gt[0, 29] = 7              # a speck
    out = split_components(gt.reshape(-1), [7], 20, 30, min_points=10).reshape(20, 30)
    assert (out[12:18, 15:28] == 7).all()
    assert len(np.unique(out[2:8, 2:10])) == 1 and out[3, 3] not in (-1, 7)
    assert out[0, 29] == -1


def test_scene_kinds_follow_the_osd_subsets():
    assert [scene_kind(n) for n in ('learn0', 'learn17', 'learn32', 'learn44', 'test15',
                                    'test24', 'test43', 'test56', 'foo')] == [
        'boxes', 'stacked', 'occluded', 'cylindric', 'boxes', 'occluded', 'mixed', 'complex',
        'other']
