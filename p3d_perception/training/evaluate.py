# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d eval``: how well a model labels views it never saw, seen and held-out categories.

Scores every test view against the model's *full* vocabulary (trained plus held-out
names), exactly as the recogniser does at run time, and reports top-1/top-5 overall,
for trained categories, for held-out (open-vocabulary) categories and per class,
with a confusion-matrix PNG and a JSON report a person or CI can check.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from p3d_perception.training.data import generate_views, load_views_file, view_arrays

LOG = logging.getLogger(__name__)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if len(labels) == 0:
        return float('nan')
    k = min(k, scores.shape[1])
    return float((scores.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())


def evaluate_scores(scores: torch.Tensor, labels: np.ndarray,
                    vocabulary: Sequence[str], held_out: Sequence[str]) -> dict:
    """Metrics of (N, V) label scores; labels index ``vocabulary``."""
    lab = torch.as_tensor(labels)
    pred = scores.argmax(1)
    held_idx = [vocabulary.index(h) for h in held_out if h in vocabulary]
    is_held = torch.as_tensor(np.isin(labels, held_idx))
    per_class = {}
    for i, name in enumerate(vocabulary):
        m = lab == i
        if m.any():
            per_class[name] = round(float((pred[m] == i).float().mean()), 4)
    conf = np.zeros((len(vocabulary), len(vocabulary)), np.int64)
    np.add.at(conf, (labels, pred.numpy()), 1)
    res = {
        'num_views': int(len(lab)),
        'top1': _accuracy(scores, lab, 1), 'top5': _accuracy(scores, lab, 5),
        'seen_top1': _accuracy(scores[~is_held], lab[~is_held], 1),
        'seen_top5': _accuracy(scores[~is_held], lab[~is_held], 5),
        'heldout_top1': _accuracy(scores[is_held], lab[is_held], 1),
        'heldout_top5': _accuracy(scores[is_held], lab[is_held], 5),
        'per_class_top1': per_class,
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()} | {
        'confusion': conf}


def plot_confusion(conf: np.ndarray, names: Sequence[str], path: Path, title: str, *,
                   columns: Sequence[str] | None = None, counts: bool = False,
                   xlabel: str = 'predicted', ylabel: str = 'true') -> None:
    """Row-normalised confusion PNG.

    ``columns`` when the answers are not the row names (real scans: ground-truth
    categories against the labels answered).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    conf = np.asarray(conf, np.float64)
    cols = list(names if columns is None else columns)
    cell = 0.45 if counts else 0.28
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(cell * len(cols) + 3, cell * len(names) + 2.5))
    ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
    if counts:
        for (i, j), v in np.ndenumerate(conf):
            if v:
                ax.text(j, i, int(v), ha='center', va='center', fontsize=7,
                        color='white' if norm[i, j] > 0.6 else 'black')
    ax.set_xticks(range(len(cols)))
    if columns is None:
        ax.set_xticklabels(cols, rotation=90, fontsize=7)
    else:
        ax.set_xticklabels(cols, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8 if counts else 7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100 if counts else 90)
    plt.close(fig)


def evaluate_model(model_dir: str | Path, *, views=None, seed: int = 12345,
                   views_per_category: int = 30, categories: Sequence[str] | None = None,
                   camera: str = 'd435', device: str = 'cpu', out_dir: str | Path | None = None
                   ) -> dict:
    """Evaluate with the prompt head and with pure zero-shot prototypes; write reports."""
    from p3d_perception.recognize import Recognizer
    rec = Recognizer.from_checkpoint(model_dir, device=device)
    card = rec.card
    vocab = list(card.get('vocabulary') or rec.vocabulary)
    held = list((card.get('training') or {}).get('held_out_categories') or [])
    if views is None:
        cats = list(categories or vocab)
        views = generate_views(cats, views_per_category, seed, camera, cache_dir='')
        source = {'generator': 'synthetic', 'seed': seed,
                  'views_per_category': views_per_category, 'camera': camera}
    else:
        source = {'views': str(getattr(views, 'path', 'given'))}
    extra = [c for c in views.categories if c not in vocab]
    vocab = vocab + extra           # labels of the test data are always in the vocabulary
    pts, cols, labels = view_arrays(views, vocab)
    emb = torch.from_numpy(rec.embed(pts, cols))
    rec.set_vocabulary(vocab)
    out = Path(out_dir) if out_dir else Path(model_dir) / 'eval'
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    variants = (
        ('deployed', rec.label_probs(emb)),       # as the node labels: prompt head, bias, cache
        ('prompt_head', rec.label_logits(emb, seen_bias=False)),
        ('zero_shot', rec.label_logits(emb, rec._text_protos, seen_bias=False)),
    )
    for name, scores in variants:
        r = evaluate_scores(scores, labels, vocab, held)
        conf = r.pop('confusion')
        plot_confusion(conf, vocab, out / f'confusion_{name}.png',
                       f'{card.get("name")} ({name}): top-1 {r["top1"]:.3f}')
        r['confusion_png'] = str(out / f'confusion_{name}.png')
        results[name] = r
    summary = {
        'model': str(model_dir), 'data': source, 'vocabulary_size': len(vocab),
        'held_out_categories': held,
        'seen_bias': rec.seen_bias,
        'top1': results['deployed']['top1'], 'top5': results['deployed']['top5'],
        'seen_top1': results['deployed']['seen_top1'],
        'heldout_top1': results['deployed']['heldout_top1'],
        'heldout_top5': results['deployed']['heldout_top5'],
        'no_bias_seen_top1': results['prompt_head']['seen_top1'],
        'no_bias_heldout_top1': results['prompt_head']['heldout_top1'],
        'zero_shot_seen_top1': results['zero_shot']['seen_top1'],
        'zero_shot_heldout_top1': results['zero_shot']['heldout_top1'],
    }
    report = {'summary': summary, **results}
    (out / 'eval.json').write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    LOG.info('evaluation written to %s', out)
    return report


def ground_truth_labels(dataset) -> dict[int, str]:
    """cluster id -> category of a synthetic bag dataset's clusters that show one object.

    A cluster counts when it covers its object with IoU >= 0.5; '-' is background and
    'unknown' the world's unlabelled distractor shapes: neither is a category to score
    (nor a label to add to the vocabulary).
    """
    return {int(r['cluster_id']): r['gt_label'] for r in dataset.rows
            if r.get('gt_label') not in (None, '', '-', 'unknown')
            and float(r.get('gt_iou') or 0) >= 0.5}


def evaluate_dataset(model_dir: str | Path, dataset_dir: str | Path, *,
                     labels_file: str | Path | None = None, ground_truth: bool = False,
                     device: str = 'cpu', out_dir: str | Path | None = None) -> dict:
    """Evaluate on a bag dataset's labelled clusters (``p3d bags extract``).

    Labels come from the user's labels file, or with ``ground_truth`` from the
    synthetic bags' per-pixel truth (``gt_label``). Every cluster is scored against the
    model's full vocabulary plus any label it lacks, as the node would label it.
    """
    from p3d_perception.recognize import Recognizer
    from p3d_perception.training.bags import load_dataset, read_labels
    from p3d_perception.training.finetune import dataset_clusters
    rec = Recognizer.from_checkpoint(model_dir, device=device)
    card = rec.card
    dataset = load_dataset(dataset_dir)
    if ground_truth:
        labels = ground_truth_labels(dataset)
        source = {'dataset': str(dataset_dir),
                  'labels': 'ground truth (gt_iou >= 0.5; distractors and background left out)'}
    else:
        labels = read_labels(dataset, labels_file)
        source = {'dataset': str(dataset_dir), 'labels': str(labels_file or 'labels.csv')}
    if not labels:
        raise ValueError(f'{dataset_dir}: no labelled clusters to evaluate on')
    vocab = list(card.get('vocabulary') or rec.vocabulary)
    vocab += sorted({v for v in labels.values()} - set(vocab))
    data = dataset_clusters(dataset, labels, vocab)
    keep = np.flatnonzero(data.labels >= 0)
    data = data.subset(keep)
    rec.set_up_vector(None)                 # clusters are gravity-aligned already
    rec.set_vocabulary(vocab)
    emb = torch.from_numpy(rec.embed(data.points, data.colors))
    scores = rec.label_probs(emb)
    trained = list((card.get('training') or {}).get('train_categories') or [])
    held = [v for v in vocab if v not in trained]
    r = evaluate_scores(scores, data.labels, vocab, held)
    conf = r.pop('confusion')
    present = sorted(set(data.labels.tolist()) | set(scores.argmax(1).tolist()))
    out = Path(out_dir) if out_dir else Path(model_dir) / 'eval_bags'
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(conf[np.ix_(present, present)], [vocab[i] for i in present],
                   out / 'confusion_bags.png',
                   f'{card.get("name")} on {Path(dataset_dir).name}: top-1 {r["top1"]:.3f}')
    r['confusion_png'] = str(out / 'confusion_bags.png')
    summary = {'model': str(model_dir), 'data': source, 'clusters': int(len(keep)),
               'vocabulary_size': len(vocab), 'top1': r['top1'], 'top5': r['top5'],
               'per_class_top1': r['per_class_top1']}
    report = {'summary': summary, 'deployed': r,
              'predictions': [vocab[i] for i in scores.argmax(1).tolist()],
              'labels': [vocab[i] for i in data.labels.tolist()],
              'cluster_ids': [int(dataset.rows[i]['cluster_id']) for i in keep]}
    (out / 'eval.json').write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    LOG.info('evaluation on %s written to %s', dataset_dir, out)
    return report


def calibrate_seen_bias(model_dir: str | Path, *, seed: int | None = None,
                        views_per_category: int = 20, max_drop: float = 0.02,
                        camera: str = 'd435', device: str = 'cpu') -> dict:
    """Choose the calibrated-stacking bias from *seen-class* validation views only.

    The largest bias whose seen-class top-1 (against the full vocabulary, held-out names
    included) stays within ``max_drop`` of the unbiased one. No view of a held-out
    category is used, so held-out accuracy stays an honest open-vocabulary figure.
    """
    from p3d_perception.model.checkpoint import update_card
    from p3d_perception.recognize import Recognizer
    rec = Recognizer.from_checkpoint(model_dir, device=device)
    training = rec.card.get('training') or {}
    seen = list(training.get('train_categories') or rec.card.get('prompt_labels') or [])
    if not seen:
        raise ValueError(f'{model_dir}: the card lists no trained categories to calibrate on')
    seed = int(seed if seed is not None else (training.get('data') or {}).get('val_seed', 1000))
    views = generate_views(seen, views_per_category, seed, camera, cache_dir='')
    vocab = rec.vocabulary
    pts, cols, labels = view_arrays(views, vocab)
    emb = torch.from_numpy(rec.embed(pts, cols))
    cos = emb @ rec._protos.T
    trained = torch.tensor([v in rec._trained_labels for v in vocab], dtype=torch.float32)
    lab = torch.as_tensor(labels)
    grid = [round(0.005 * i, 3) for i in range(41)]
    accs = [float(((cos - g * trained).argmax(1) == lab).float().mean()) for g in grid]
    best = max(g for g, a in zip(grid, accs) if a >= accs[0] - max_drop)
    info = {'seen_bias': best, 'method': 'calibrated stacking (Chao et al. 2016)',
            'chosen_on': {'categories': 'trained only', 'seed': seed,
                          'views_per_category': views_per_category, 'max_seen_drop': max_drop},
            'seen_top1_unbiased': round(accs[0], 4),
            'seen_top1_at_bias': round(accs[grid.index(best)], 4)}
    update_card(model_dir, open_vocab=info)
    LOG.info('seen bias %.3f (seen top-1 %.3f -> %.3f)', best, accs[0], accs[grid.index(best)])
    return info


def evaluate_command(args) -> dict:
    if getattr(args, 'calibrate', False):
        calibrate_seen_bias(args.model, device=args.device, camera=args.camera)
    if getattr(args, 'dataset', None):
        return evaluate_dataset(args.model, args.dataset, labels_file=args.labels,
                                ground_truth=args.ground_truth, device=args.device,
                                out_dir=args.out)
    views = load_views_file(args.data) if args.data else None
    report = evaluate_model(args.model, views=views, seed=args.seed,
                            views_per_category=args.views_per_category,
                            categories=args.categories, camera=args.camera,
                            device=args.device, out_dir=args.out)
    if args.update_card:
        from p3d_perception.model.checkpoint import update_card
        s = report['summary']
        update_card(args.model, metrics={'eval': {k: v for k, v in s.items()
                                                  if k not in ('model',)}})
    return report
