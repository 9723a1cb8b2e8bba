# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""A "new robot" learns new objects from its own bags: accuracy before/after fine-tuning.

The new robot differs from what the bundled model was trained on in every way the
synthetic world allows: a time-of-flight camera (Azure Kinect preset) with twice the
depth noise and more flying pixels, a lower and closer head (elevation 18-35 deg,
0.55-1.0 m instead of 30-60 deg, 0.7-1.5 m), and categories the bundled model never
trained on. Its bags are recorded, extracted with ``p3d bags extract``, labelled the
way a person would (whole object groups, at most ``--labels-per-class`` clusters per
category, from the bags' ground truth), fine-tuned with ``p3d finetune`` with and
without the self-supervised step, and evaluated on bags of other scenes. Beside the
fine-tunes, ``frozen_features`` scores the starting model's own embeddings of the same
labelled clusters (nearest class mean, nearest neighbour): how much of the result the
features carry before any training. ``--camera d435 --noise-scale 1 --elevation 30,60
--distance 0.7,1.5`` runs the same with the bundled model's own sensor and viewpoint,
the control without a sensor gap. With
``--self-train-above S`` a second round does what a user might do next: the
fine-tuned model's proposals scoring at least S fill the groups nobody labelled
(``p3d bags label --accept-above``), and the fine-tune runs again on both.
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path
import shutil
import time

import numpy as np

#: five of the bundled model's six held-out categories; the sixth, frying pan, is left
#: out because segmentation removes a pan's floor with the table (best cluster IoU 0.38
#: on these bags), so too few clusters would qualify as labelled or test samples
NEW = ('cup', 'pear', 'kettle', 'jar', 'tissue box')
#: known categories, including each new one's closest look-alike (mug, apple, teapot,
#: can, cereal box), so "new" cannot be learnt as "looks unfamiliar"
OLD = ('mug', 'apple', 'teapot', 'can', 'cereal box', 'bowl', 'bottle', 'banana', 'book',
       'milk carton')


_KIND = {'tof': 'time of flight', 'stereo': 'active stereo'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--new', default=','.join(NEW), help='categories to learn (comma list)')
    parser.add_argument('--old', default=','.join(OLD),
                        help='known categories also on the tables (comma list)')
    parser.add_argument('--train-scenes', type=int, default=30,
                        help='recorded tables to learn from (a person labels a few groups)')
    parser.add_argument('--test-scenes', type=int, default=30)
    parser.add_argument('--frames-per-scene', type=int, default=3)
    parser.add_argument('--objects', default='4,7', help='objects per scene, MIN,MAX')
    parser.add_argument('--labels-per-class', type=int, default=20,
                        help='labelled clusters per category the fine-tune may use')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--ssl-steps', type=int, default=150)
    parser.add_argument('--model', default='',
                        help='starting model (default: p3d_minilm_small, which holds the '
                             'default new categories out of training; the bundled model '
                             'was trained on them)')
    parser.add_argument('--work', default='.p3d_cache/bench_finetune',
                        help='folder for the bags, datasets and models')
    parser.add_argument('--seed', type=int, default=2026)
    parser.add_argument('--camera', default='azure_kinect',
                        help='camera preset the new robot starts from (azure_kinect: time of '
                        'flight, unlike the bundled model\'s d435; d435 with --noise-scale 1 '
                        '--elevation 30,60 --distance 0.7,1.5 is the bundled model\'s own '
                        'sensor and viewpoint, the control without a sensor gap)')
    parser.add_argument('--noise-scale', type=float, default=2.0,
                        help='depth noise of the new robot relative to its camera preset')
    parser.add_argument('--self-train-above', type=float, default=0.0,
                        help='also run a second round: accept the fine-tuned model\'s '
                        'proposals on the unlabelled groups scoring at least this (p3d bags '
                        'label --accept-above) and fine-tune again; 0 = no second round '
                        '(measured with 90 tables at 0.4: +1.8, -20.5 and -6.7 points on new '
                        'categories for three seeds, so it is off)')
    parser.add_argument('--elevation', default='18,35', help='camera elevation range, deg')
    parser.add_argument('--distance', default='0.55,1.0', help='camera distance range, m')


def new_robot_camera(noise_scale: float = 2.0, preset: str = 'azure_kinect'):
    """A camera preset with its noise (and noise-driven artefacts) scaled."""
    from p3d_perception.training.synthetic.camera import get_camera
    base = get_camera(preset)
    extra = max(0.0, noise_scale - 1.0)
    kind = 'tof' if preset == 'azure_kinect' else preset
    return base.replace(name=f'new_robot_{kind}_x{noise_scale:g}',
                        tof_sigma0=base.tof_sigma0 * noise_scale,
                        tof_sigma1=base.tof_sigma1 * noise_scale,
                        disparity_sigma=base.disparity_sigma * noise_scale,
                        flying_pixel_prob=min(0.9, base.flying_pixel_prob + 0.1 * extra),
                        random_dropout=base.random_dropout * (1 + extra),
                        colour_noise=base.colour_noise * noise_scale)


def record_bags(folder: Path, n_scenes: int, frames: int, categories, n_objects,
                seed: int, cam, elevation: tuple[float, float],
                distance: tuple[float, float]) -> list[Path]:
    """One rosbag2 per scene, as the new robot's head sees it, with ground truth.

    One bag per table: a robot's recordings of different tables are different bags
    (all synthetic tables are called ``table``, so one bag would join them).
    """
    from tqdm import tqdm
    from p3d_perception.bagio import write_scene_bag
    from p3d_perception.training.synthetic import camera_trajectory, generate_scene, render
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    bags = []
    children = np.random.SeedSequence(seed).spawn(n_scenes)
    start = 1_700_000_000_000_000_000 + seed * 1_000_000_000
    for i in tqdm(range(n_scenes), desc=f'recording {folder.name}', unit='bag'):
        rng = np.random.default_rng(children[i])
        scene = generate_scene(rng, categories=list(categories), n_objects=n_objects)
        out = [render(scene, cam, rng, pose=pose, stamp_ns=start + (i * frames + k) * 10**8)
               for k, pose in enumerate(camera_trajectory(
                   scene, frames, rng, distance=distance, elevation=elevation,
                   speed_deg=6.0))]
        bags.append(write_scene_bag(folder / f'scene_{i:03d}', out, scene_ids=[i] * len(out)))
    return bags


def label_like_a_person(dataset: Path, wanted: set[str], per_class: int, seed: int) -> dict:
    """Fill labels.csv the way a person would: whole groups, clear views, a budget.

    A group gets the ground-truth category most of its clusters show (when at least 70 %
    agree), groups are taken in random order until a category has ``per_class``
    labelled clusters; everything else stays unlabelled.
    """
    rows = list(csv.DictReader((dataset / 'clusters.csv').open(encoding='utf-8')))
    by_group = collections.defaultdict(list)
    for r in rows:
        by_group[int(r['group_id'])].append(r)
    rng = np.random.default_rng(seed)
    budget = collections.Counter()
    chosen: dict[int, str] = {}
    for gid in rng.permutation(sorted(by_group)):
        members = by_group[int(gid)]
        gts = [r['gt_label'] for r in members if r['gt_label'] and float(r['gt_iou']) >= 0.5]
        if not gts:
            continue
        label, n = collections.Counter(gts).most_common(1)[0]
        if label not in wanted or n < 0.7 * len(members):
            continue
        if budget[label] + len(members) > per_class:
            continue
        budget[label] += len(members)
        chosen[int(gid)] = label
    path = dataset / 'labels.csv'
    with path.open(encoding='utf-8') as f:
        reader = csv.DictReader(f)
        fields, table = reader.fieldnames, list(reader)
    for r in table:
        r['label'] = chosen.get(int(r['group_id']), '')
    with path.open('w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)
    return dict(sorted(budget.items()))


def propose_round_two(dataset: Path, out: Path, model: Path, accept_above: float) -> dict:
    """Copy the labelled dataset and let ``model`` fill its unlabelled groups.

    This is ``p3d bags label DATASET --model M --accept-above S``: the labels a person
    wrote are kept, and every other group whose proposal scores at least ``S`` gets
    it. The bags' ground truth only scores the proposals, it never chooses them.
    """
    from p3d_perception.training.bags import load_dataset, read_group_labels, relabel_dataset
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(dataset, out)
    before = read_group_labels(dataset / 'labels.csv')
    relabel_dataset(out, model=model, device='cpu', accept_above=accept_above,
                    command='p3d bench finetune (round two)', progress=False)
    relabelled = load_dataset(out)
    after = read_group_labels(relabelled.labels_csv)
    truth = collections.defaultdict(collections.Counter)
    for r in relabelled.rows:
        truth[int(r['group_id'])][r['gt_label'] or '-'] += 1
    added = [g for g in after if g not in before]
    right = sum(truth[g].most_common(1)[0][0] == after[g] for g in added)
    return {'accept_above': accept_above, 'groups': len(relabelled.group_ids),
            'groups_labelled_by_the_person': len(before),
            'groups_labelled_by_proposals': len(added),
            'proposal_precision_vs_ground_truth': round(right / max(len(added), 1), 3),
            'time_s': round(time.time() - t0, 1)}


def _scores(report: dict, new: set[str], old: set[str]) -> dict:
    pred, lab = np.array(report['predictions']), np.array(report['labels'])
    is_new, is_old = np.isin(lab, list(new)), np.isin(lab, list(old))
    per = {c: round(float((pred[lab == c] == c).mean()), 3) for c in sorted(new | old)
           if (lab == c).any()}
    return {'new_top1': round(float((pred[is_new] == lab[is_new]).mean()), 4),
            'old_top1': round(float((pred[is_old] == lab[is_old]).mean()), 4),
            'new_clusters': int(is_new.sum()), 'old_clusters': int(is_old.sum()),
            'per_class_top1': per}


def frozen_features(model: Path, train_dataset: Path, test_dataset: Path,
                    new: set[str], old: set[str]) -> dict:
    """What the starting model's embeddings already tell apart, before any training.

    The labelled clusters' embeddings are the only training: each test cluster goes to
    the label of the nearest class mean (NCM) or the nearest labelled cluster (1-NN),
    among the labelled categories only (an easier test than the fine-tuned model's full
    vocabulary). A fine-tune that ends near these figures added little to what the
    features already told apart: better features, not more training, would move it.
    """
    from p3d_perception.recognize import Recognizer
    from p3d_perception.training.bags import load_dataset, read_labels
    from p3d_perception.training.evaluate import ground_truth_labels
    from p3d_perception.training.finetune import dataset_clusters
    rec = Recognizer.from_checkpoint(model, device='cpu')
    rec.set_up_vector(None)                 # dataset clusters are gravity-aligned already
    train_ds, test_ds = load_dataset(train_dataset), load_dataset(test_dataset)
    labelled = read_labels(train_ds)
    classes = sorted(set(labelled.values()))
    truth = {k: v for k, v in ground_truth_labels(test_ds).items() if v in classes}
    tr = dataset_clusters(train_ds, labelled, classes)
    te = dataset_clusters(test_ds, truth, classes)
    tr, te = (d.subset(np.flatnonzero(d.labels >= 0)) for d in (tr, te))
    a, b = rec.embed(tr.points, tr.colors), rec.embed(te.points, te.colors)
    means = np.stack([a[tr.labels == i].mean(0) for i in range(len(classes))])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    names = np.asarray(classes)
    out = {'vocabulary': f'the {len(classes)} labelled categories only',
           'labelled_clusters': int(len(tr)), 'test_clusters': int(len(te))}
    for key, pred in (('nearest_class_mean', (b @ means.T).argmax(1)),
                      ('nearest_neighbour', tr.labels[(b @ a.T).argmax(1)])):
        report = {'predictions': names[pred].tolist(), 'labels': names[te.labels].tolist()}
        scores = _scores(report, new, old)
        out[key] = {k: scores[k] for k in ('new_top1', 'old_top1', 'per_class_top1')}
    return out


def run(args: argparse.Namespace) -> dict:
    from p3d_perception.model.checkpoint import read_card
    from p3d_perception.resources import bundled_model_path
    from p3d_perception.training.bags import extract_dataset
    from p3d_perception.training.evaluate import evaluate_dataset
    from p3d_perception.training.finetune import FinetuneConfig, finetune
    new = [c.strip() for c in args.new.split(',') if c.strip()]
    old = [c.strip() for c in args.old.split(',') if c.strip()]
    lo, hi = (int(x) for x in args.objects.split(','))
    model = Path(args.model or bundled_model_path('p3d_minilm_small'))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    card = read_card(model)
    trained = set((card.get('training') or {}).get('train_categories') or [])
    overlap = sorted(set(new) & trained)
    if overlap:
        raise ValueError(f'--new must be categories {model} was not trained on: {overlap}')
    cam = new_robot_camera(args.noise_scale, args.camera)
    elevation = tuple(float(x) for x in args.elevation.split(','))
    distance = tuple(float(x) for x in args.distance.split(','))
    t_start = time.time()
    bags = {}
    for split, n, seed in (('train', args.train_scenes, args.seed),
                           ('test', args.test_scenes, args.seed + 1000)):
        bags[split] = record_bags(work / f'{split}_bags', n, args.frames_per_scene, new + old,
                                  (lo, hi), seed, cam, elevation, distance)
    datasets = {}
    for split in ('train', 'test'):
        datasets[split] = work / f'{split}_dataset'
        extract_dataset(bags[split], datasets[split], every=1, model=model, device='cpu',
                        overwrite=True, command='p3d bench finetune')
    budget = label_like_a_person(datasets['train'], set(new) | set(old),
                                 args.labels_per_class, args.seed)
    prep_s = time.time() - t_start

    before = evaluate_dataset(model, datasets['test'], ground_truth=True,
                              out_dir=work / 'eval_before')
    result = {
        'new_robot': {'camera': f'{cam.name}: {args.camera} preset ({_KIND[cam.depth_model]}; the '
                      f'bundled model saw a d435) with depth noise x{args.noise_scale:g}',
                      'viewpoint': f'elevation {elevation[0]:g}-{elevation[1]:g} deg, '
                      f'{distance[0]:g}-{distance[1]:g} m (bundled model data: 30-60 deg, '
                      '0.7-1.5 m)',
                      'new_categories': new, 'old_categories': old,
                      'train_scenes': args.train_scenes, 'test_scenes': args.test_scenes,
                      'frames_per_scene': args.frames_per_scene},
        'labelled_clusters_per_class': budget,
        'data_prep_s': round(prep_s, 1),
        'before': _scores(before, set(new), set(old)),
        'frozen_features': frozen_features(model, datasets['train'], datasets['test'],
                                           set(new), set(old)),
    }
    rounds = [('finetune', 0, datasets['train']),
              ('finetune_ssl', args.ssl_steps, datasets['train'])]
    if args.self_train_above > 0:
        rounds.append(('self_trained', args.ssl_steps, work / 'train_dataset_round2'))
    for name, ssl_steps, dataset in rounds:
        out = work / f'model_{name}'
        if out.exists():
            shutil.rmtree(out)
        cap = args.labels_per_class
        if name == 'self_trained':
            # the person's labels stay; confident proposals of the first round's model
            # fill the groups nobody labelled (so no cap on clusters per label)
            result['self_training'] = propose_round_two(
                datasets['train'], dataset, work / 'model_finetune_ssl',
                args.self_train_above)
            cap = 0
        cfg = FinetuneConfig(steps=args.steps, max_clusters_per_label=cap,
                             seed=args.seed, device='cpu')
        cfg.ssl.steps = ssl_steps
        t0 = time.time()
        info = finetune(model, dataset, None, out, cfg,
                        command=f'p3d bench finetune ({name})')
        wall = time.time() - t0
        after = evaluate_dataset(out, datasets['test'], ground_truth=True,
                                 out_dir=work / f'eval_{name}')
        scores = _scores(after, set(new), set(old))
        scores.update(
            old_drop_points=round(100 * (result['before']['old_top1'] - scores['old_top1']), 1),
            train_wall_s=round(wall, 1), trainable=info['trainable'],
            steps_run=info['steps_run'], best_step=info['best_step'],
            stopped_early=info['stopped_early'], ssl=info['ssl'],
            example_cache=info['example_cache'],
            confusion_png=after['deployed']['confusion_png'])
        if name == 'self_trained':
            # both rounds and the proposals count as training time
            scores['train_wall_s_both_rounds'] = round(
                wall + result['finetune_ssl']['train_wall_s'] + result['self_training']['time_s'],
                1)
        result[name] = scores
    result['goals'] = {'new_top1': '>= 0.85', 'old_drop_points': '<= 5',
                       'train_wall_s': '< 900 on this 2-core CPU',
                       'labelled_clusters_per_new_category': f'<= {args.labels_per_class}'}
    return result
