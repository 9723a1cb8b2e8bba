# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The bundled model through the public Recognizer API on freshly generated views."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from p3d_perception.recognize import InputError, Recognition, Recognizer

MODEL = Path(__file__).resolve().parents[1] / 'models' / 'p3d_minilm_small'
DRINKWARE = ('mug', 'cup', 'wine glass')
OTHER = ('hammer', 'drill', 'book', 'banana', 'shoe', 'laptop')


@pytest.fixture(scope='module')
def rec():
    if not (MODEL / 'model.safetensors').is_file():
        # The bundled model is issue 5's deliverable and is trained by
        # `p3d train pretrain|prompt --config config/train/minilm_small.yaml`; until it is
        # committed these checks cannot run (the node tests use a small real model).
        pytest.skip(f'bundled model not committed yet: {MODEL}/model.safetensors')
    return Recognizer.from_checkpoint(MODEL, device='cpu')


@pytest.fixture(scope='module')
def views():
    from p3d_perception.training.synthetic import CATEGORIES, generate_object_views
    return generate_object_views(list(CATEGORIES), 4, seed=4242)   # unseen seed/instances


def test_bundled_card_is_complete(rec):
    card = rec.card
    assert card['text_space'] == 'minilm' == rec.text_space
    assert card['training']['command'].startswith('p3d train pretrain')
    assert card['training']['prompt']['command'].startswith('p3d train prompt')
    assert len(card['training']['held_out_categories']) >= 6
    assert len(card['training']['train_categories']) >= 24
    assert (MODEL / 'model.safetensors').stat().st_size < 8 * 2 ** 20


def test_bundled_model_beats_chance_by_far(rec, views):
    cats = list(views.categories)
    rec.set_vocabulary(cats)
    pts = [views.view(i)[0] for i in range(len(views))]
    cols = [views.view(i)[1] for i in range(len(views))]
    labels = np.array([views.view(i)[2] for i in range(len(views))])
    res = rec.classify(pts, cols, top_k=5)
    assert len(res) == len(pts) and isinstance(res[0], Recognition)
    trained = set(rec.card['training']['train_categories'])
    seen = np.array([cats[y] in trained for y in labels])
    top1 = np.array([r.label == cats[y] for r, y in zip(res, labels)])
    top5 = np.array([cats[y] in r.top_labels for r, y in zip(res, labels)])
    chance = 1 / len(cats)
    assert top1[seen].mean() > 0.6 > 10 * chance
    assert top5.mean() > 0.6
    for r in res[:5]:
        assert abs(np.linalg.norm(r.embedding) - 1) < 1e-4
        assert r.top_scores == sorted(r.top_scores, reverse=True)
        assert 0 <= r.score <= 1 and r.label == r.top_labels[0]
    # xyz-only input (colour dropped in training) still works well
    res_xyz = rec.classify(pts, None)
    top1_xyz = np.array([r.label == cats[y] for r, y in zip(res_xyz, labels)])
    assert top1_xyz[seen].mean() > 0.5


def test_queries_rank_drinkware_first(rec, views):
    cats = list(views.categories)
    rec.set_vocabulary(cats)
    idx = [i for i in range(len(views)) if cats[views.view(i)[2]] in DRINKWARE + OTHER]
    emb = rec.embed([views.view(i)[0] for i in idx], [views.view(i)[1] for i in idx])
    names = [cats[views.view(i)[2]] for i in idx]
    scores = rec.score_query('something to drink from', emb)
    assert scores.shape == (len(idx),) and ((scores >= 0) & (scores <= 1)).all()
    drink = np.array([n in DRINKWARE for n in names])
    assert scores[drink].mean() > 2 * scores[~drink].mean()
    mug = rec.score_query('mug', emb)
    assert mug[np.array([n == 'mug' for n in names])].mean() > mug[~drink].mean()
    assert rec.score_query('mug', np.zeros((0, emb.shape[1]), np.float32)).shape == (0,)


def test_vocabulary_text_and_bad_input(rec, caplog):
    rec.set_vocabulary(['mug', 'toaster', 'mug'])
    assert rec.vocabulary == ['mug', 'toaster']
    t = rec.embed_text(['a red mug', 'toaster'])
    assert t.shape == (2, 384) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    with pytest.raises(InputError):
        rec.set_vocabulary([])
    with pytest.raises(InputError):
        rec.classify([np.zeros((10, 2), np.float32)])
    with pytest.raises(InputError):
        rec.score_query('mug', np.zeros((3, 5), np.float32))
    with pytest.raises(InputError):
        rec.score_query('  ', np.zeros((1, 384), np.float32))
    if not torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            r = Recognizer.from_checkpoint(MODEL, device='cuda')
        assert r.device == 'cpu' and 'CUDA' in caplog.text


def test_up_vector_rotates_clusters_into_gravity_frame(rec, views):
    from scipy.spatial.transform import Rotation
    rec.set_vocabulary(list(views.categories))
    pts = [views.view(i)[0] for i in range(0, len(views), 9)]
    ref = rec.embed(pts)
    rot = Rotation.from_euler('x', -90, degrees=True).as_matrix().astype(np.float32)
    turned = [p @ rot.T for p in pts]          # z-up -> y-down-like frame
    up = rot @ np.array([0, 0, 1.0])
    rec.set_up_vector(up)
    try:
        np.testing.assert_allclose(rec.embed(turned), ref, atol=1e-3)
    finally:
        rec.set_up_vector(None)


def test_described_labels_transfer_to_untrained_categories(rec):
    """The described-labels model names untrained categories better than the default."""
    from p3d_perception.training.synthetic import generate_object_views
    desc = Recognizer.from_checkpoint(MODEL.parent / 'p3d_minilm_desc', device='cpu')
    assert desc.model.cfg.label_text == 'descriptions'
    held = list(desc.card['training']['held_out_categories'])
    assert held == list(rec.card['training']['held_out_categories'])
    views = generate_object_views(held, 20, seed=4243)
    pts = [views.view(i)[0] for i in range(len(views))]
    cols = [views.view(i)[1] for i in range(len(views))]
    truth = [views.categories[views.view(i)[2]] for i in range(len(views))]
    top1 = {}
    for name, model in (('names', rec), ('descriptions', desc)):
        model.set_vocabulary(held)        # scored among the untrained names only
        top1[name] = np.mean([r.label == t for r, t in zip(model.classify(pts, cols), truth)])
    assert top1['descriptions'] > max(0.4, top1['names'] + 0.05), top1


def test_frozen_backbone_variant_trains_a_small_share_and_recognises(views):
    """models/p3d_minilm_lens: MiniLM's frozen layers come from the text space, not the file."""
    lens = MODEL.parent / 'p3d_minilm_lens'
    r = Recognizer.from_checkpoint(lens, device='cpu')
    card = r.card
    assert card['model']['encoder']['kind'] == 'frozen_lens'
    share = card['parameters']['encoder_trained_share']
    assert 0.0 < share <= 0.1
    # only the trained share is stored: fp32 weights of the trained parameters, no more
    assert (lens / 'model.safetensors').stat().st_size < 4.5 * card['parameters'][
        'encoder_trained'] + 2 ** 20
    trained = set(card['training']['train_categories'])
    cats = list(views.categories)
    keep = [i for i in range(len(views)) if cats[views.view(i)[2]] in trained]
    r.set_vocabulary(cats)
    res = r.classify([views.view(i)[0] for i in keep], [views.view(i)[1] for i in keep])
    top1 = np.mean([x.label == cats[views.view(i)[2]] for x, i in zip(res, keep)])
    assert top1 > 0.5 > 10 / len(cats)
