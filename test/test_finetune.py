# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Fine-tuning on a bag dataset: LoRA, learning, resume, 2-process gloo, the saved model."""

import collections
import csv
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch

from p3d_perception.model.checkpoint import load_model, read_card
from p3d_perception.model.lora import LoRAConfig, apply_lora, lora_state, merge_lora

pytestmark = pytest.mark.slow

CATEGORIES = ['mug', 'bowl', 'cereal box', 'banana']


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp('model') / 'tiny', vocabulary=CATEGORIES,
                           command='test_finetune fixture')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory, tiny_model):
    """A real bag of two moving-camera scenes, extracted and labelled from ground truth."""
    from p3d_perception.bagio import write_scene_bag
    from p3d_perception.commands.synth import make_scene_frames
    from p3d_perception.training.bags import extract_dataset
    root = tmp_path_factory.mktemp('ft')
    frames, ids = make_scene_frames(2, 3, seed=8, categories=CATEGORIES, n_objects=(4, 4),
                                    clutter=False)
    bag = write_scene_bag(root / 'bag', frames, scene_ids=ids)
    out = root / 'dataset'
    extract_dataset([bag], out, every=1, model=tiny_model, device='cpu', progress=False)
    rows = list(csv.DictReader((out / 'clusters.csv').open(encoding='utf-8')))
    votes = collections.defaultdict(collections.Counter)
    for r in rows:
        if r['gt_label'] and float(r['gt_iou']) >= 0.5:
            votes[int(r['group_id'])][r['gt_label']] += 1
    with (out / 'labels.csv').open(encoding='utf-8') as f:
        reader = csv.DictReader(f)
        fields, table = reader.fieldnames, list(reader)
    for r in table:
        v = votes.get(int(r['group_id']))
        r['label'] = v.most_common(1)[0][0] if v else ''
    with (out / 'labels.csv').open('w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)
    return out


def _cfg(**kw):
    from p3d_perception.training.finetune import FinetuneConfig
    cfg = FinetuneConfig(batch_size=16, lr=1e-2, warmup_steps=2, val_fraction=0.0,
                         eval_every=5, device='cpu', replay_fraction=0.0)
    cfg.ssl.steps = 0
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_lora_starts_as_identity_trains_little_and_merges_exactly(make_tiny_model):
    model = make_tiny_model(seed=1)
    enc = model.encoder
    x = (torch.randn(3, 16, 8, 6), torch.randn(3, 16, 3), torch.randn(3, 1))
    ref = enc(*x).detach()
    names = apply_lora(enc, LoRAConfig(rank=2))
    assert names and all('blocks' in n or n == 'head.1' for n in names)
    torch.testing.assert_close(enc(*x), ref)               # B = 0: nothing changed yet
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert trainable == sum(v.numel() for v in lora_state(enc).values())
    with torch.no_grad():
        for k, p in enc.named_parameters():
            if k.endswith('lora_b'):
                p.normal_(0, 0.1)
    adapted = enc(*x).detach()
    assert (adapted - ref).abs().max() > 1e-3
    assert merge_lora(enc) == len(names)
    torch.testing.assert_close(enc(*x), adapted, atol=1e-5, rtol=1e-5)
    assert not any('lora' in k for k in enc.state_dict())  # the original architecture


def test_lora_on_the_patch_embedding_trains_and_merges(make_tiny_model):
    # PatchEmbed applies its local+global layer as two slices of the weight, so an
    # adapter there must reach the forward pass through the sliced weight as well
    model = make_tiny_model(seed=2)
    enc = model.encoder
    x = (torch.randn(3, 16, 8, 6), torch.randn(3, 16, 3), torch.randn(3, 1))
    ref = enc(*x).detach()
    names = apply_lora(enc, LoRAConfig(rank=2, targets=('patch_embed.*',)))
    assert 'patch_embed.second.0' in names
    with torch.no_grad():
        for k, p in enc.named_parameters():
            if k.endswith('lora_b'):
                p.normal_(0, 0.1)
    out = enc(*x)
    out.sum().backward()
    lora_b = dict(enc.named_parameters())['patch_embed.second.0.lora_b']
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
    adapted = out.detach()
    assert (adapted - ref).abs().max() > 1e-3
    merge_lora(enc)
    torch.testing.assert_close(enc(*x), adapted, atol=1e-5, rtol=1e-5)


def test_bad_lora_targets_are_refused_with_the_layers_named(make_tiny_model):
    from p3d_perception.config import ConfigError
    model = make_tiny_model()
    with pytest.raises(ConfigError, match='blocks.0.attn.qkv'):
        apply_lora(model.encoder, LoRAConfig(targets=('nothing.*',)))


def test_finetune_improves_accuracy_and_saves_a_plain_model(tiny_model, dataset, tmp_path):
    from p3d_perception.training.bags import load_dataset, read_labels
    from p3d_perception.training.finetune import accuracy, dataset_clusters, finetune
    ds = load_dataset(dataset)
    labels = read_labels(ds)
    classes = sorted(set(labels.values()))
    assert len(classes) >= 3
    data = dataset_clusters(ds, labels, classes)
    data = data.subset(np.flatnonzero(data.labels >= 0))
    before_model, _ = load_model(tiny_model)
    before = accuracy(before_model, data, classes, 'cpu')
    out = tmp_path / 'tuned'
    result = finetune(tiny_model, dataset, None, out, _cfg(steps=60))
    assert set(result['new_labels']) == set(classes)
    assert 0 < result['trainable']['share'] < 0.2
    after_model, card = load_model(out)      # loads with the original architecture
    after = accuracy(after_model, data, classes, 'cpu')
    assert after >= before + 0.2, (before, after)
    assert set(classes) == set(card['label_prototypes']) <= set(card['vocabulary'])
    ft = card['training']['finetunes'][-1]
    assert ft['dataset'] == str(dataset) and ft['train_clusters']
    assert (out / 'finetune_curve.png').stat().st_size > 5000
    assert not list(out.glob('*.tmp*'))


def test_resume_continues_from_the_last_checkpoint(tiny_model, dataset, tmp_path):
    from p3d_perception.training.finetune import LOG_CSV, STATE, finetune
    out = tmp_path / 'resumed'
    finetune(tiny_model, dataset, None, out, _cfg(steps=10))
    first = [r['step'] for r in csv.DictReader((out / LOG_CSV).open())]
    assert first == ['5', '10'] and (out / STATE).is_file()
    result = finetune(tiny_model, dataset, None, out, _cfg(steps=20), resume=True)
    steps = [r['step'] for r in csv.DictReader((out / LOG_CSV).open())]
    assert steps == ['5', '10', '15', '20']          # continued at 10, nothing redone
    assert result['steps_run'] == 20
    assert read_card(out)['training']['finetunes'][-1]['steps_run'] == 20


def test_self_supervised_step_runs_before_labels(tiny_model, dataset, tmp_path):
    from p3d_perception.training.finetune import LOG_CSV, finetune
    cfg = _cfg(steps=5)
    cfg.ssl.steps = 10
    result = finetune(tiny_model, dataset, None, tmp_path / 'ssl', cfg)
    assert result['ssl']['steps'] == 10 and np.isfinite(result['ssl']['final_loss'])
    stages = [r['stage'] for r in csv.DictReader((tmp_path / 'ssl' / LOG_CSV).open())]
    assert stages[0] == 'ssl' and stages[-1] == 'finetune'


def test_two_process_gloo_run(tiny_model, dataset, tmp_path):
    out = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         '-m', 'p3d_perception.cli', 'finetune', '--dataset', str(dataset), '--out', str(out),
         '--model', str(tiny_model), '--steps', '6', '--ssl-steps', '4', '--device', 'cpu',
         '--num-threads', '1'],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ft = read_card(out)['training']['finetunes'][-1]
    assert ft['world_size'] == 2 and ft['steps_run'] == 6 and ft['ssl']['steps'] == 4
    load_model(out)


def test_weight_ensemble_keeps_that_share_of_the_change(tiny_model, dataset, tmp_path):
    """WiSE-FT: every weight the fine-tune changed ends up start + share * change."""
    from p3d_perception.training.finetune import finetune
    kw = dict(steps=10, example_cache=False)
    finetune(tiny_model, dataset, None, tmp_path / 'full', _cfg(**kw))
    finetune(tiny_model, dataset, None, tmp_path / 'half', _cfg(weight_ensemble=0.5, **kw))
    models = [load_model(d)[0] for d in (tiny_model, tmp_path / 'full', tmp_path / 'half')]
    start, full, half = (m.state_dict() for m in models)
    changed = [k for k in start if not torch.equal(start[k], full[k])]
    assert any(k.startswith('encoder.blocks') for k in changed), changed
    for k in changed:
        torch.testing.assert_close(half[k], start[k] + 0.5 * (full[k] - start[k]),
                                   rtol=1e-4, atol=1e-6, msg=k)
    # the new labels' prototypes have no start: both runs keep the trained ones
    protos = [m.label_prototypes for m in models[1:]]
    assert protos[0] and protos[0].keys() == protos[1].keys()
    for c in protos[0]:
        torch.testing.assert_close(protos[0][c], protos[1][c], msg=c)
    ft = read_card(tmp_path / 'half')['training']['finetunes'][-1]
    assert ft['config']['weight_ensemble'] == 0.5


def test_the_documented_config_is_the_defaults():
    """config/train/finetune.yaml lists every setting; it must not drift from the code."""
    from p3d_perception.config import load, to_dict
    from p3d_perception.training.finetune import FinetuneConfig
    path = Path(__file__).parents[1] / 'config' / 'train' / 'finetune.yaml'
    assert to_dict(load(FinetuneConfig, path)) == to_dict(FinetuneConfig())


def test_eval_on_a_bag_dataset_reports_per_class(tiny_model, dataset, tmp_path):
    from p3d_perception.training.evaluate import evaluate_dataset
    truth = evaluate_dataset(tiny_model, dataset, ground_truth=True, out_dir=tmp_path / 'gt')
    assert truth['summary']['clusters'] == len(truth['labels']) > 0
    assert set(truth['labels']) <= set(CATEGORIES)       # background never scored
    assert set(truth['summary']['per_class_top1']) <= set(CATEGORIES)
    assert (tmp_path / 'gt' / 'confusion_bags.png').stat().st_size > 5000
    user = evaluate_dataset(tiny_model, dataset, out_dir=tmp_path / 'user')   # labels.csv
    assert user['summary']['data']['labels'] == 'labels.csv' and user['summary']['clusters'] > 0
    assert len(user['predictions']) == len(user['cluster_ids']) == len(user['labels'])


def test_frozen_features_score_the_starting_models_embeddings(tiny_model, dataset):
    """The benchmark's feature probe: a labelled cluster's nearest labelled neighbour is itself."""
    from p3d_perception.benchmarks.finetune import frozen_features
    from p3d_perception.training.bags import load_dataset, read_labels
    labelled = read_labels(load_dataset(dataset))
    r = frozen_features(tiny_model, dataset, dataset, {'banana'},
                        set(CATEGORIES) - {'banana'})
    assert r['labelled_clusters'] == len(labelled) > 0
    assert 0 < r['test_clusters'] <= len(labelled)
    nn_ = r['nearest_neighbour']
    # the fixture's groups are pure (test_bags checks it), so each test cluster is a
    # labelled cluster carrying its own ground truth, and its own nearest neighbour
    assert nn_['new_top1'] == 1.0 and nn_['old_top1'] == 1.0
    assert set(nn_['per_class_top1']) <= set(CATEGORIES)
    assert 0.0 <= r['nearest_class_mean']['old_top1'] <= 1.0


def test_new_robot_camera_scales_the_presets_noise():
    from p3d_perception.benchmarks.finetune import new_robot_camera
    from p3d_perception.training.synthetic.camera import get_camera
    d435, tof = get_camera('d435'), get_camera('azure_kinect')
    same = new_robot_camera(1.0, 'd435')
    assert same.disparity_sigma == d435.disparity_sigma
    assert same.random_dropout == d435.random_dropout
    loud = new_robot_camera(2.0)
    assert loud.name == 'new_robot_tof_x2' and loud.depth_model == 'tof'
    assert loud.tof_sigma0 == 2 * tof.tof_sigma0 and loud.tof_sigma1 == 2 * tof.tof_sigma1
    assert loud.flying_pixel_prob > tof.flying_pixel_prob
    with pytest.raises(ValueError, match='unknown camera'):
        new_robot_camera(1.0, 'no_such_camera')


def test_example_cache_may_not_swallow_the_known_categories(tiny_model):
    """The cache adds weight only to the labels it holds.

    With one labelled label, a choice made on its validation groups alone takes every
    object for it.
    """
    from p3d_perception.training.data import generate_views, view_arrays
    from p3d_perception.training.finetune import ClusterSet, FinetuneConfig, _build_cache

    def views(cats, n, seed):
        pts, cols, lab = view_arrays(generate_views(cats, n, seed, 'd435'), cats)
        idx = np.asarray([CATEGORIES.index(cats[i]) for i in lab], np.int64)
        return ClusterSet(list(pts), list(cols), idx, np.arange(len(pts)))

    model, _ = load_model(tiny_model)
    train, val = views(['mug'], 6, 1), views(['mug'], 4, 2)
    guard = views(['bowl', 'cereal box', 'banana'], 6, 3)
    cfg = FinetuneConfig(cache_alphas=(0.0, 1.0, 4.0, 16.0, 64.0), cache_max_known_drop=0.02)
    info = _build_cache(model, train, val, CATEGORIES, cfg, 'cpu', guard)
    kg = info['known_guard']
    assert kg['views'] == len(guard)
    assert kg['top1_without'] - kg['top1_with'] <= 0.02, info
    # without the veto the same data takes a cache that costs the known categories
    free = _build_cache(model, train, val, CATEGORIES,
                        FinetuneConfig(cache_alphas=(16.0, 64.0), cache_max_known_drop=1.0),
                        'cpu', guard)
    assert free['alpha'] >= 1.0
    assert free['known_guard']['top1_without'] - free['known_guard']['top1_with'] > 0.02, free


def test_label_balance_evens_out_the_commonest_label():
    from p3d_perception.training.finetune import label_weights
    labels = np.array([3] * 64 + [1] * 16 + [2] * 4)
    assert label_weights(labels, 1.0) is None                      # plain uniform draws
    sqrt = label_weights(labels, 0.5)
    assert np.isclose(sqrt.sum(), 1.0)
    # square-root sampling: shares 8 : 4 : 2 instead of 64 : 16 : 4
    assert np.allclose([sqrt[labels == k].sum() for k in (3, 1, 2)], [8 / 14, 4 / 14, 2 / 14])
    even = label_weights(labels, 0.0)
    assert np.allclose([even[labels == k].sum() for k in (3, 1, 2)], 1 / 3)


def test_checkpoint_choice_breaks_top1_ties_by_the_true_labels_probability():
    from p3d_perception.training.finetune import better_checkpoint
    assert better_checkpoint(0.80, 0.30, 0.78, 0.90)       # more right wins outright
    assert not better_checkpoint(0.76, 0.99, 0.78, 0.10)   # fewer right never wins
    assert better_checkpoint(0.78, 0.61, 0.78, 0.60)       # a tie goes to the surer model
    assert not better_checkpoint(0.78, 0.60, 0.78, 0.60)   # an exact repeat is no gain
    assert not better_checkpoint(float('nan'), float('nan'), -1.0, -1.0)
    assert better_checkpoint(0.0, 0.05, -1.0, -1.0)        # the first evaluation counts


def test_replay_distillation_keeps_known_views_near_the_start(make_tiny_model, dataset,
                                                              tmp_path):
    """The pull toward the starting model must show on the replay views it is applied to."""
    import torch.nn.functional as F
    from p3d_perception.model.grouping import prepare_batch
    from p3d_perception.training.finetune import LOG_CSV, finetune, replay_views
    known = CATEGORIES[:2]          # the model's own labels: they get replay views
    tiny_model = make_tiny_model(tmp_path / 'known', vocabulary=CATEGORIES, prompt_labels=known,
                                 command='test_finetune distillation')
    start, _ = load_model(tiny_model)
    # lr 0.1 collapses the tiny untrained encoder to one output for every view, which
    # hides any drift; at 0.01 the plain run drifts 6-200x more than the distilled one
    # (four model seeds measured: distilled / plain 0.004-0.17)
    kw = dict(steps=30, replay_fraction=0.5, replay_views_per_category=4, lr=1e-2,
              example_cache=False)
    views = replay_views(known, _cfg(**kw))
    b = prepare_batch(list(views.points), [None] * len(views), start.cfg.grouping,
                      np.random.default_rng(0), 'cpu')

    def log_probs(model):
        with torch.no_grad():
            emb = model.encoder.eval()(b.patches, b.centers, b.scale)
            return (model.scale() * emb @ model.prompt_prototypes(known).T).log_softmax(-1)

    def drift(model_dir):       # KL from the starting model's label distribution
        ref, tuned = log_probs(start), log_probs(load_model(model_dir)[0])
        return float(F.kl_div(tuned, ref, log_target=True, reduction='batchmean'))

    finetune(tiny_model, dataset, None, tmp_path / 'plain', _cfg(replay_distill_weight=0.0, **kw))
    finetune(tiny_model, dataset, None, tmp_path / 'distilled',
             _cfg(replay_distill_weight=1000.0, **kw))
    plain, distilled = drift(tmp_path / 'plain'), drift(tmp_path / 'distilled')
    assert distilled < 0.5 * plain, (plain, distilled)
    logged = [r['distill'] for r in csv.DictReader((tmp_path / 'distilled' / LOG_CSV).open())]
    assert logged and all(float(v) >= 0 for v in logged)
    assert not any(r['distill'] for r in csv.DictReader((tmp_path / 'plain' / LOG_CSV).open()))
