# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Fine-tuning on real recordings, end to end as a user runs it: PCD -> bag -> labels -> model.

``p3d bench finetune`` proves the fine-tune on a synthetic new robot; a user starts
from real recordings. Here the mOSD learn scans play the robot's recordings and go
the user's whole way: ``p3d bags from-pcd`` (one bag per scan: each is another
scene), ``p3d bags extract`` (the node's segmentation and the starting model's
proposals), a labels file filled from categories.json the way a person would
(``p3d bags label-from-gt``: whole groups, ``-`` for junk, at most
``--labels-per-class`` labelled clusters per label), ``p3d finetune --dataset``, and
``p3d eval-real`` on the mOSD clutter scans, which nothing here trains on, before and
after: ground-truth clusters (recognition alone) and the node's own segmentation.
Beside it, ``nearest_labelled``: each clutter object takes the label of the nearest
labelled cluster in the starting model's embedding, what the labels give with no
training at all, so the figure shows what the fine-tune adds; and ``known``: top-1
on synthetic views of the categories the model already knew, before and after, so
forgetting shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import shutil
import time

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--learn', default='../shared/data/mosd_learn',
                   help="the robot's recordings: labelled PCD scans (mOSD format)")
    p.add_argument('--test', default='../shared/data/mosd_clutter',
                   help='held-out labelled scans to evaluate on (never trained on)')
    p.add_argument('--learn-scenes', nargs='+', default=None, metavar='NAME',
                   help='only these learn scans (file stems; default all)')
    p.add_argument('--test-scenes', nargs='+', default=None, metavar='NAME',
                   help='only these test scans (file stems; default all)')
    p.add_argument('--model', default=None,
                   help='starting model (default: the bundled one; if its card shows a '
                        'fine-tune on the test scans, the model that fine-tune started from)')
    p.add_argument('--rules', default=None,
                   help='eval-real rules: vocabulary and the label of each category '
                        '(default config/eval/real_kinect.yaml)')
    p.add_argument('--finetune-config', default=None,
                   help="fine-tune YAML (default: p3d finetune's defaults, what a user gets)")
    p.add_argument('--steps', type=int, default=None, help='override the fine-tune steps')
    p.add_argument('--ssl-steps', type=int, default=None,
                   help='override the self-supervised steps')
    p.add_argument('--labels-per-class', type=int, default=20,
                   help='labelled clusters per label (the person\'s budget)')
    p.add_argument('--modes', nargs='+', choices=('gt', 'pipeline'), default=['gt', 'pipeline'])
    p.add_argument('--known-views', type=int, default=10,
                   help='synthetic views per known category for the forgetting check '
                        '(0 = off)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', choices=('cpu', 'cuda', 'auto'), default='cpu')
    p.add_argument('--work', default='.p3d_cache/bench_finetune_real',
                   help='folder for the bags, dataset, model and eval reports')


def _say(text: str) -> None:
    print(f'[finetune-real] {text}', flush=True)


def starting_model(requested: str | None, test_dir: Path) -> tuple[Path, str]:
    """(model, why): the requested one, else the bundled one unless it saw the test scans.

    The bundled model's last step may be a fine-tune on real scans; if those include
    the test folder, its figure there is memory, so the model that step started from
    is taken instead (and the JSON says so).
    """
    from p3d_perception.model.checkpoint import read_card
    from p3d_perception.resources import default_model_path
    if requested:
        return Path(requested), 'given'
    bundled = default_model_path()
    steps = (read_card(bundled).get('training') or {}).get('finetunes') or []
    seen = [s for s in steps if test_dir.name in str(s.get('scans', ''))]
    if seen:
        base = Path(seen[0]['from'])
        if not base.is_dir():
            raise ValueError(f'the bundled model {bundled} was fine-tuned on {test_dir.name}, '
                             f'and the model it started from ({base}) is not here; pass '
                             '--model with a model that never saw the test scans')
        return base, (f'the bundled model {bundled.name} was fine-tuned on {test_dir.name}; '
                      'starting from its base')
    return Path(bundled), 'bundled'


def nearest_labelled(model: Path, dataset: Path, test_dir: Path, rules: str,
                     scenes: list[str] | None, device: str) -> dict:
    """Top-1 of the labels alone: nearest labelled cluster / class mean, no training.

    Both sides are embedded by the starting model the same way (gravity-aligned by
    their table, as the fine-tune sees them), among the labelled labels only; a test
    object counts when its own label is one of them, and is right when the answer is
    one its rule accepts.
    """
    from p3d_perception.recognize import Recognizer
    from p3d_perception.training.bags import load_dataset, read_labels
    from p3d_perception.training.finetune import dataset_clusters, gravity_aligned
    from p3d_perception.training.real_eval import load_config, load_scenes
    cfg = load_config(rules)
    rec = Recognizer.from_checkpoint(model, device=device, vocabulary=cfg.vocabulary)
    rec.set_up_vector(None)
    ds = load_dataset(dataset)
    labelled = read_labels(ds)
    classes = sorted(set(labelled.values()))
    tr = dataset_clusters(ds, labelled, classes)
    tr = tr.subset(np.flatnonzero(tr.labels >= 0))
    test, _ = load_scenes([test_dir], cfg, scenes)
    objects = [(s, o) for s in test for o in s.objects if o.label in classes]
    if not len(tr) or not objects:
        return {'labelled_clusters': int(len(tr)), 'test_objects': len(objects)}
    a = rec.embed(tr.points, tr.colors)
    b = rec.embed([gravity_aligned(o.points, s.up) for s, o in objects],
                  [o.colors for _, o in objects])
    means = np.stack([a[tr.labels == i].mean(0) for i in range(len(classes))])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    names = np.asarray(classes)
    out = {'vocabulary': f'the {len(classes)} labelled labels only',
           'labelled_clusters': int(len(tr)), 'test_objects': len(objects)}
    for key, pred in (('nearest_neighbour', tr.labels[(b @ a.T).argmax(1)]),
                      ('nearest_class_mean', (b @ means.T).argmax(1))):
        right = [names[k] in o.accept for k, (_, o) in zip(pred, objects)]
        per: dict[str, list[bool]] = {}
        for ok, (_, o) in zip(right, objects):
            per.setdefault(o.name, []).append(ok)
        out[key] = {'top1': round(float(np.mean(right)), 4),
                    'per_class': {c: {'objects': len(v), 'top1': round(float(np.mean(v)), 4)}
                                  for c, v in sorted(per.items())}}
    return out


def known_top1(models: dict[str, Path], categories: list[str], views: int, seed: int,
               device: str) -> dict:
    """Top-1 on synthetic views of the known categories, per model (full vocabulary)."""
    from p3d_perception.recognize import Recognizer
    from p3d_perception.training.data import generate_views, view_arrays
    if not categories or views <= 0:
        return {}
    pts, cols, labels = view_arrays(generate_views(categories, views, seed, 'd435'),
                                    categories)
    truth = np.asarray(categories)[labels]
    out = {'categories': len(categories), 'views': int(len(pts)), 'camera': 'd435',
           'seed': seed}
    for name, model in models.items():
        rec = Recognizer.from_checkpoint(model, device=device)
        rec.set_up_vector(None)          # synthetic views are gravity-aligned already
        pred = [r.label for r in rec.classify(pts, cols, top_k=1)]
        out[f'{name}_top1'] = round(float(np.mean(np.asarray(pred) == truth)), 4)
    if 'before_top1' in out and 'after_top1' in out:
        out['drop_points'] = round(100 * (out['before_top1'] - out['after_top1']), 1)
    return out


def proposal_figures(labels_csv: Path, truth: dict[int, tuple[str, frozenset]],
                     thresholds=(0.0, 0.3, 0.5, 0.8)) -> dict:
    """How far ``--accept-above S`` would carry a person: groups pre-filled, and how right.

    Over the groups that are one object: the share whose proposal scores at least S
    (what ``p3d bags extract --accept-above S`` pre-fills) and the share of those whose
    proposal their object's rule accepts.
    """
    import csv
    with open(labels_csv, newline='', encoding='utf-8') as fh:
        rows = {int(r['group_id']): r for r in csv.DictReader(fh)}
    scores = np.array([float(rows[g]['proposed_score']) for g in truth])
    right = np.array([rows[g]['proposed_label'] in acc for g, (_, acc) in truth.items()])
    out = {'groups': len(truth),
           'score_percentiles_10_50_90': [round(float(x), 3) for x in
                                          np.percentile(scores, [10, 50, 90])]
           if len(scores) else []}
    for t in thresholds:
        sel = scores >= t
        out[f'accept_above_{t:g}'] = {
            'prefilled_share': round(float(sel.mean()), 4) if len(sel) else 0.0,
            'precision': round(float(right[sel].mean()), 4) if sel.any() else None}
    return out


def _pooled(per_class: dict, names) -> dict:
    n = sum(v['objects'] for c, v in per_class.items() if c in names)
    right = sum(v['top1'] * v['objects'] for c, v in per_class.items() if c in names)
    return {'objects': int(n), 'top1': round(right / n, 4) if n else None}


def _summary(report: dict, modes, labelled_classes: set[str]) -> dict:
    """The eval-real figures, also split into classes the labels taught and the others.

    The test scans hold classes the learn scans never show (books, drink cartons,
    cans, bottles in mOSD clutter): only the starting model and the replay of its
    synthetic categories speak for those, so one pooled figure would hide where the
    fine-tune acts.
    """
    out = {}
    for m in modes:
        r = report[m]
        others = set(r['per_class']) - labelled_classes
        out[m] = {'top1': r['top1'], 'top3': r['top3'], 'objects': r['objects'],
                  'labelled_classes': _pooled(r['per_class'], labelled_classes),
                  'other_classes': {**_pooled(r['per_class'], others),
                                    'classes': sorted(others)},
                  'per_class': r['per_class'], 'confusion_png': r['confusion_png']}
        if m == 'pipeline':
            out[m]['found'] = r['found']
    return out


def run(args: argparse.Namespace) -> dict:
    from p3d_perception.config import load
    from p3d_perception.model.checkpoint import read_card
    from p3d_perception.resources import share_dir
    from p3d_perception.training.bags import (extract_dataset, label_from_ground_truth,
                                              scans_to_bags)
    from p3d_perception.training.finetune import FinetuneConfig, finetune
    from p3d_perception.training.real_eval import evaluate_real, load_config
    learn, test = Path(args.learn), Path(args.test)
    rules = args.rules or str(share_dir() / 'config' / 'eval' / 'real_kinect.yaml')
    vocabulary = load_config(rules).vocabulary
    model, why = starting_model(args.model, test)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # the PNGs go beside the JSON `p3d bench` writes
    name = getattr(args, 'name', 'finetune-real')
    json_out = Path(getattr(args, 'json_out', None) or Path('benchmarks/results') / f'{name}.json')
    t_all = time.time()
    times: dict[str, float] = {}

    t0 = time.time()
    scans = ([learn / f'{n}.pcd' for n in args.learn_scenes] if args.learn_scenes
             else [learn])
    made = scans_to_bags(scans, work / 'learn_bags', bag_per_scan=True)
    times['from_pcd_s'] = round(time.time() - t0, 1)
    _say(f'from-pcd: {len(made.scans)} scans -> {len(made.bags)} bags '
         f'({len(made.skipped)} skipped) in {times["from_pcd_s"]} s')

    t0 = time.time()
    dataset = work / 'learn_dataset'
    extracted = extract_dataset(made.bags, dataset, every=1, model=model, vocabulary=vocabulary,
                                device=args.device, overwrite=True, progress=False,
                                command='p3d bench finetune-real')
    times['extract_s'] = round(time.time() - t0, 1)
    _say(f'bags extract: {extracted.clusters} clusters in {extracted.groups} groups from '
         f'{extracted.clouds_used} scans in {times["extract_s"]} s')

    t0 = time.time()
    labelled = label_from_ground_truth(dataset, rules, max_per_label=args.labels_per_class,
                                       seed=args.seed, command='p3d bench finetune-real')
    times['label_s'] = round(time.time() - t0, 1)
    proposals = proposal_figures(labelled.path, labelled.truth)
    _say(f'labels: {labelled.labelled_groups} of {labelled.groups} groups labelled '
         f'({labelled.clusters_per_label}), {labelled.junk_groups} junk, '
         f'{labelled.over_budget_groups} over budget')

    evals = {}
    _say(f'eval-real before ({model}) on {test} ...')
    t0 = time.time()
    evals['before'] = evaluate_real(model, [test], config=rules, out_dir=work / 'eval_before',
                                    modes=args.modes, device=args.device,
                                    scenes=args.test_scenes, progress=False)
    times['eval_before_s'] = round(time.time() - t0, 1)
    _say('nearest labelled cluster on the starting model\'s embeddings ...')
    frozen = nearest_labelled(model, dataset, test, rules, args.test_scenes, args.device)

    cfg = load(FinetuneConfig, args.finetune_config) if args.finetune_config \
        else FinetuneConfig()
    cfg.max_clusters_per_label = args.labels_per_class
    cfg.seed, cfg.device = args.seed, args.device
    if args.steps is not None:
        cfg.steps = args.steps
    if args.ssl_steps is not None:
        cfg.ssl.steps = args.ssl_steps
    tuned = work / 'model_finetuned'
    _say(f'finetune --dataset {dataset}: {cfg.steps} steps, {cfg.ssl.steps} SSL steps ...')
    t0 = time.time()
    info = finetune(model, dataset, None, tuned, cfg, command='p3d bench finetune-real')
    times['finetune_wall_s'] = round(time.time() - t0, 1)
    _say(f'finetune: {times["finetune_wall_s"]} s, best step {info["best_step"]}, '
         f'val top-1 {info["best_val_top1"]}')

    _say('eval-real after ...')
    t0 = time.time()
    evals['after'] = evaluate_real(tuned, [test], config=rules, out_dir=work / 'eval_after',
                                   modes=args.modes, device=args.device,
                                   scenes=args.test_scenes, progress=False)
    times['eval_after_s'] = round(time.time() - t0, 1)

    known = list((read_card(model).get('prompt_labels')) or [])
    known_figure = {}
    if args.known_views > 0 and known:
        _say(f'known categories: {args.known_views} synthetic views each of {len(known)} ...')
        known_figure = known_top1({'before': model, 'after': tuned}, known, args.known_views,
                                  args.seed + 99, args.device)

    json_out.parent.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for m in args.modes:
        png = json_out.with_name(f'{json_out.stem}_confusion_{m}.png')
        shutil.copyfile(evals['after'][m]['confusion_png'], png)
        pngs[m] = str(png)
    times['total_s'] = round(time.time() - t_all, 1)
    # eval-real reports classes by rule name; the labels written are each rule's accept[0]
    name_of = {r.accept[0]: r.name for r in reversed(load_config(rules).rules)}
    taught = {name_of.get(lab, lab) for lab in labelled.clusters_per_label}
    result = {
        'starting_model': str(model), 'starting_model_why': why,
        'learn': str(learn), 'test': str(test), 'rules': rules,
        'learn_scans': len(made.scans), 'learn_scans_skipped': made.skipped,
        'test_scenes': evals['before']['scenes'], 'test_objects': evals['before']['objects'],
        'test_classes': evals['before']['classes'],
        'dataset': {'clusters': extracted.clusters, 'groups': extracted.groups,
                    'labelled_groups': labelled.labelled_groups,
                    'junk_groups': labelled.junk_groups,
                    'over_budget_groups': labelled.over_budget_groups,
                    'labelled_clusters_per_label': labelled.clusters_per_label},
        'proposals_on_learn_groups': proposals,
        'baselines': evals['before']['baselines'],
        'before': _summary(evals['before'], args.modes, taught),
        'after': _summary(evals['after'], args.modes, taught),
        'gain_points': {m: round(100 * (evals['after'][m]['top1']
                                        - evals['before'][m]['top1']), 1)
                        for m in args.modes},
        'nearest_labelled': frozen,
        'known_synthetic': known_figure,
        'finetune': {k: info[k] for k in ('new_labels', 'train_clusters', 'val_clusters',
                                          'steps_run', 'best_step', 'best_val_top1',
                                          'stopped_early', 'train_time_s', 'trainable',
                                          'ssl', 'example_cache')},
        'finetune_config': args.finetune_config or 'p3d finetune defaults',
        'confusion_png_after': pngs,
        'times': times,
        'goals': {'after.gt.top1': '>= 0.90', 'after.pipeline.top1': '>= 0.80',
                  'known_synthetic.drop_points': '<= 5', 'times.finetune_wall_s': '<= 600'},
    }
    (work / 'summary.json').write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    gains = ', '.join(f'{m} {evals["before"][m]["top1"]:.3f} -> {evals["after"][m]["top1"]:.3f}'
                      for m in args.modes)
    _say(f'done in {times["total_s"]} s: top-1 {gains}')
    return result
