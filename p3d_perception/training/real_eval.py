# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d eval-real``: recognition measured on real scans with hand-labelled objects.

A model's figure on its own synthetic views says little about a robot's camera (the
first bundled model was 96 % right there and 35 % on real Kinect objects, below always
answering the commonest class). So this scores a model where users are: real scans with
per-point instance ground truth (mOSD format: a ``label`` field, ``label // 10`` the
object, 1-9 the table) and a ``categories.json`` naming each object, two ways:

- ``gt``: each ground-truth object's points are the cluster: recognition alone;
- ``pipeline``: the node's own path (:meth:`Pipeline.process`): a ground-truth object
  counts as right only when a detection overlaps it at IoU >= 0.5 and has a right label,
  so missed and merged objects count as wrong.

Beside the model, in the same report, two baselines nobody should mistake a model for:
always answering the commonest class, and a nearest-class-mean classifier on a handful
of gravity-aligned shape features (height, footprint, circle and rectangle fits), fitted
leave-one-scene-out on the scans themselves. A frozen-embedding nearest-class-mean, also
leave-one-scene-out, shows how much a last adaptation step on real data could add.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from p3d_perception.cloud import read_pcd
from p3d_perception.config import ConfigError, from_dict, load_yaml

LOG = logging.getLogger(__name__)

#: IoU at which a detection counts as having found a ground-truth object
MATCH_IOU = 0.5


@dataclasses.dataclass
class Rule:
    """Which labels are right for a ground-truth category (first matching rule wins)."""

    label: str
    name: str
    accept: list[str]
    note_contains: str = ''


@dataclasses.dataclass
class RealEvalConfig:
    vocabulary: list[str]
    rules: list[Rule]
    #: queries' min_score: an absent object must score below it (the node's
    #: query.default_min_score)
    min_score: float = 0.3

    def validate(self) -> None:
        if not self.vocabulary:
            raise ConfigError('eval-real: vocabulary must not be empty')
        if not self.rules:
            raise ConfigError('eval-real: at least one rule is needed')
        for r in self.rules:
            if not r.accept:
                raise ConfigError(f'eval-real: rule for {r.label!r} accepts no label')


def load_config(path: str | Path) -> RealEvalConfig:
    data = load_yaml(path)
    rules = [from_dict(Rule, r, prefix='rules.') for r in data.get('rules') or []]
    cfg = RealEvalConfig(vocabulary=[str(v) for v in data.get('vocabulary') or []],
                         rules=rules, min_score=float(data.get('min_score', 0.3)))
    cfg.validate()
    return cfg


@dataclasses.dataclass
class RealObject:
    """One hand-labelled object of a real scan, with the points that make it."""

    scene: str
    object_id: int
    name: str                  # class in reports (the rule's name)
    label: str                 # the label a fine-tune teaches for it (the rule's first)
    accept: frozenset[str]     # labels that count as right
    note: str
    indices: np.ndarray        # into the scan's points
    points: np.ndarray         # (N, 3) float32, the scan's frame
    colors: np.ndarray | None  # (N, 3) uint8


@dataclasses.dataclass
class RealScene:
    name: str
    path: Path
    up: np.ndarray             # table normal, towards the camera
    table_offset: float        # plane: up . x + offset = 0
    objects: list[RealObject]


def scene_key(path: Path) -> tuple[str, int]:
    m = re.search(r'(\d+)$', path.stem)
    return path.stem.rstrip('0123456789'), int(m.group(1)) if m else -1


def _rule_for(cfg: RealEvalConfig, entry: dict) -> Rule | None:
    label, note = str(entry.get('label', '')), str(entry.get('note', '')).lower()
    for r in cfg.rules:
        if r.label == label and (not r.note_contains or r.note_contains.lower() in note):
            return r
    return None


def fit_table(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane through the table's points, normal towards the camera."""
    c = points.mean(0)
    _, _, vt = np.linalg.svd(points[::max(1, len(points) // 20000)] - c, full_matrices=False)
    n = vt[2]
    if np.dot(n, -c) < 0:      # the camera sits at the origin, above the table
        n = -n
    return n.astype(np.float64), float(-np.dot(n, c))


def load_scenes(dirs: Sequence[str | Path], cfg: RealEvalConfig,
                scenes: Iterable[str] | None = None) -> tuple[list[RealScene], dict]:
    """Read every scan with a categories.json entry; returns (scenes, skipped counts)."""
    from p3d_perception.segmentation import mosd_ground_truth
    wanted = set(scenes) if scenes else None
    out, skipped = [], {}
    for d in dirs:
        d = Path(d)
        cats_file = d / 'categories.json'
        if not cats_file.is_file():
            raise ConfigError(f'{d}: no categories.json (one category per ground-truth '
                              'object is needed to score recognition)')
        cats = json.loads(cats_file.read_text(encoding='utf-8'))
        for f in sorted(d.glob('*.pcd'), key=scene_key):
            if f.stem not in cats or (wanted is not None and f.stem not in wanted):
                continue
            cloud = read_pcd(f)
            if 'label' not in cloud.fields:
                raise ConfigError(f'{f}: no per-point "label" field')
            inst, table = mosd_ground_truth(cloud.fields['label'])
            finite = np.isfinite(cloud.points).all(1)
            up, offset = fit_table(cloud.points[table & finite].astype(np.float64))
            objects = []
            for oid, entry in sorted(cats[f.stem].items(), key=lambda kv: int(kv[0])):
                rule = _rule_for(cfg, entry)
                if entry.get('exclude') or rule is None:
                    key = 'excluded' if entry.get('exclude') else str(entry.get('label'))
                    skipped[key] = skipped.get(key, 0) + 1
                    continue
                idx = np.flatnonzero((inst == int(oid)) & finite)
                if len(idx) == 0:
                    skipped['no points'] = skipped.get('no points', 0) + 1
                    continue
                objects.append(RealObject(
                    scene=f.stem, object_id=int(oid), name=rule.name, label=rule.accept[0],
                    accept=frozenset(rule.accept) | frozenset(entry.get('accept') or []),
                    note=str(entry.get('note', '')), indices=idx,
                    points=cloud.points[idx].astype(np.float32),
                    colors=None if cloud.colors is None else cloud.colors[idx]))
            out.append(RealScene(f.stem, f, up, offset, objects))
    if not out:
        raise ConfigError(f'no labelled scans found in {", ".join(map(str, dirs))}')
    return out, skipped


# ----------------------------------------------------------------------- shape baseline
def shape_features(points: np.ndarray, up: np.ndarray, offset: float) -> np.ndarray:
    """Gravity-aligned shape of a (partial) object: sizes and how round or boxy it is.

    height above the table, gap under it, the two footprint extents, the radius and
    relative residual of a circle fitted to the footprint, and the relative residual of
    the footprint's bounding rectangle: what a person would use to tell a box from a
    tin from a bowl without colour or learning.
    """
    p = np.asarray(points, np.float64)
    h = p @ up + offset
    top, bottom = np.percentile(h, 98), np.percentile(h, 2)
    flat = p - np.outer(p @ up, up)
    xy = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(xy[::max(1, len(xy) // 4000)], full_matrices=False)
    a0, b0 = xy @ vt[0], xy @ vt[1]
    sub = slice(None, None, max(1, len(a0) // 2000))
    # the footprint's rectangle: the orientation (3 degree steps) whose sides the points
    # hug best; a camera sees two faces of a box, whose principal axes run diagonally
    rect, ext = np.inf, [0.0, 0.0]
    for ang in np.deg2rad(np.arange(0, 90, 3)):
        a = np.cos(ang) * a0[sub] + np.sin(ang) * b0[sub]
        b = -np.sin(ang) * a0[sub] + np.cos(ang) * b0[sub]
        lo_a, hi_a = np.percentile(a, [2, 98])
        lo_b, hi_b = np.percentile(b, [2, 98])
        side = np.minimum(np.minimum(a - lo_a, hi_a - a), np.minimum(b - lo_b, hi_b - b))
        width = min(hi_a - lo_a, hi_b - lo_b)
        res = float(np.sqrt(np.mean(np.clip(side, 0, None) ** 2))) / max(width, 1e-3)
        if res < rect:
            rect, ext = res, sorted([hi_a - lo_a, hi_b - lo_b], reverse=True)
    a, b = a0, b0
    # Kasa circle fit: x^2 + y^2 = 2 cx x + 2 cy y + c
    A = np.stack([2 * a, 2 * b, np.ones_like(a)], 1)
    sol, *_ = np.linalg.lstsq(A, a * a + b * b, rcond=None)
    r = float(np.sqrt(max(sol[2] + sol[0] ** 2 + sol[1] ** 2, 1e-8)))
    circ = float(np.sqrt(np.mean((np.hypot(a - sol[0], b - sol[1]) - r) ** 2))) / max(r, 1e-3)
    return np.array([top, bottom, ext[0], ext[1], min(r, 0.5), circ, rect], np.float64)


def nearest_mean_loso(features: np.ndarray, names: Sequence[str], scenes: Sequence[str],
                      normalise: str = 'standard') -> list[str]:
    """Leave-one-scene-out nearest-class-mean predictions (a class present elsewhere)."""
    names, scenes = np.asarray(names), np.asarray(scenes)
    pred = []
    for i in range(len(names)):
        train = scenes != scenes[i]
        if not train.any():              # one scan: nothing to fit on
            pred.append('')
            continue
        x = features[train]
        if normalise == 'standard':
            mu, sd = x.mean(0), x.std(0) + 1e-9
            z, q = (x - mu) / sd, (features[i] - mu) / sd
        else:                                      # cosine, for unit embeddings
            z, q = x, features[i]
        classes = sorted(set(names[train]))
        means = np.stack([z[names[train] == c].mean(0) for c in classes])
        if normalise == 'standard':
            d = ((means - q) ** 2).sum(1)
        else:
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            d = -(means @ q)
        pred.append(classes[int(np.argmin(d))])
    return pred


# ----------------------------------------------------------------------- scoring
def score(objects: Sequence[RealObject], predictions: Sequence[Sequence[str]],
          classes: Sequence[str], labels: Sequence[str]) -> dict:
    """top-1/top-3, per class and a confusion matrix (rows classes, columns labels)."""
    n = len(objects)
    right1 = [bool(p) and p[0] in o.accept for o, p in zip(objects, predictions)]
    right3 = [any(x in o.accept for x in p[:3]) for o, p in zip(objects, predictions)]
    cols = list(labels) + ['(missed)']
    conf = np.zeros((len(classes), len(cols)), np.int64)
    per_class = {}
    for c in classes:
        idx = [i for i, o in enumerate(objects) if o.name == c]
        if idx:
            per_class[c] = {'objects': len(idx),
                            'top1': round(float(np.mean([right1[i] for i in idx])), 4)}
    for o, p in zip(objects, predictions):
        col = cols.index(p[0]) if p and p[0] in cols else len(cols) - 1
        conf[classes.index(o.name), col] += 1
    return {'objects': n, 'top1': round(float(np.mean(right1)), 4) if n else float('nan'),
            'top3': round(float(np.mean(right3)), 4) if n else float('nan'),
            'per_class': per_class, 'confusion': conf.tolist(), 'confusion_columns': cols}


def plot_confusion(result: dict, classes: Sequence[str], path: Path, title: str) -> None:
    """The confusion PNG of a ``score`` result: categories against the labels answered."""
    from p3d_perception.training.evaluate import plot_confusion as plot
    plot(result['confusion'], classes, path, title, columns=result['confusion_columns'],
         counts=True, xlabel='answered', ylabel='ground truth')


def _majority(objects: Sequence[RealObject], labels: Sequence[str]) -> tuple[str, float]:
    """The single label that would be right most often (an upper bound for 'always X')."""
    best = max(labels, key=lambda lab: sum(lab in o.accept for o in objects))
    return best, round(float(np.mean([best in o.accept for o in objects])), 4)


def _pipeline_predictions(scene: RealScene, pipeline) -> list[list[str]]:
    """Run the node's path on the scan; the labels of the detection matching each object."""
    cloud = read_pcd(scene.path)
    pipeline.memory.clear()
    result = pipeline.process(cloud)
    det_of_point = result.labels
    out = []
    for o in scene.objects:
        hits = det_of_point[o.indices]
        hits = hits[hits >= 0]
        best, best_iou = None, 0.0
        for k in np.unique(hits):
            inter = int((hits == k).sum())
            union = len(o.indices) + int((det_of_point == k).sum()) - inter
            if inter / union > best_iou:
                best, best_iou = int(k), inter / union
        if best is None or best_iou < MATCH_IOU:
            out.append([])
        else:
            out.append(list(result.detections[best].top_labels))
    return out


def query_figures(scenes: Sequence[RealScene], embeddings: Sequence[np.ndarray], rec,
                  classes: Sequence[str], min_score: float) -> dict:
    """Retrieval@1 of "a <class>" for classes in a scan; rejection of absent ones.

    A class is present in a scan when an object of that class is there, and absent when
    no object would be right under that name. The rest are names an object merely
    accepts ("a can" where the only cylinders are cookie tins, "a cup" for a mug whose
    handle is hidden): either answer is fair there, so they are reported on their own
    (``alias_*``) and not in the headline figures; ``retrieval_at_1_any_accepted_name``
    counts them as present, the stricter reading. Rejected means no object scores
    ``min_score`` or more, which is what the node answers as "no match".
    """
    rows = []
    for s, emb in zip(scenes, embeddings):
        if not s.objects:
            continue
        for c in classes:
            q = f'a {c}'
            sc = np.asarray(rec.score_query(q, emb))
            named = [o.name == c for o in s.objects]
            right = [o.name == c or c in o.accept for o in s.objects]
            best = int(np.argmax(sc))
            kind = 'present' if any(named) else 'alias' if any(right) else 'absent'
            ok = (bool(right[best] and sc[best] >= min_score) if kind != 'absent'
                  else bool(sc[best] < min_score))
            rows.append({'scene': s.name, 'query': q, 'kind': kind,
                         'present': kind != 'absent', 'right': ok,
                         'top_right': bool(right[best]), 'top': s.objects[best].name,
                         'score': round(float(sc[best]), 3)})

    def share(sel, t: float, rejection: bool = False) -> float:
        """Right at min_score ``t``: nothing reaches it (rejection), else the top does."""
        if not sel:
            return float('nan')
        return round(float(np.mean([r['score'] < t if rejection else
                                    r['top_right'] and r['score'] >= t for r in sel])), 4)

    present = [r for r in rows if r['kind'] == 'present']
    alias = [r for r in rows if r['kind'] == 'alias']
    absent = [r for r in rows if r['kind'] == 'absent']
    sweep = {str(t): {'retrieval_at_1': share(present, t),
                      'absent_rejection': share(absent, t, rejection=True)}
             for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)}
    return {'min_score': min_score, 'queries_present': len(present),
            'queries_absent': len(absent), 'queries_alias': len(alias),
            'retrieval_at_1': share(present, min_score),
            'absent_rejection': share(absent, min_score, rejection=True),
            'alias_retrieval_at_1': share(alias, min_score),
            'retrieval_at_1_any_accepted_name': share(present + alias, min_score),
            'sweep_min_score': sweep, 'per_query': rows}


def evaluate_real(model_dir: str | Path, dirs: Sequence[str | Path], *,
                  config: str | Path, out_dir: str | Path, modes: Sequence[str] = ('gt',),
                  colour: bool = True, device: str = 'cpu', precision: str = 'auto',
                  scenes: Iterable[str] | None = None,
                  pipeline_config: str | Path | None = None, progress: bool = True) -> dict:
    """Score ``model_dir`` on labelled real scans; write JSON and confusion PNGs."""
    from tqdm import tqdm

    from p3d_perception.recognize import Recognizer
    cfg = load_config(config)
    data, skipped = load_scenes(dirs, cfg, scenes)
    objects = [o for s in data for o in s.objects]
    classes = sorted({o.name for o in objects})
    rec = Recognizer.from_checkpoint(model_dir, device=device, vocabulary=cfg.vocabulary,
                                     precision=precision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(rec.vocabulary)
    majority_label, majority_top1 = _majority(objects, labels)
    feats = np.stack([shape_features(o.points, s.up, s.table_offset)
                      for s in data for o in s.objects])
    names = [o.name for o in objects]
    scene_of = [o.scene for o in objects]
    shape_pred = nearest_mean_loso(feats, names, scene_of)
    shape_right = float(np.mean([p == o.name or p in o.accept
                                 for p, o in zip(shape_pred, objects)]))
    report: dict = {
        'model': str(model_dir), 'data': [str(d) for d in dirs], 'config': str(config),
        'scenes': len(data), 'objects': len(objects), 'skipped': skipped,
        'classes': {c: names.count(c) for c in classes}, 'vocabulary': labels,
        'colour': colour, 'runtime': rec.runtime_name,
        'baselines': {
            'majority': {'label': majority_label, 'top1': majority_top1},
            'shape_nearest_mean_loso': {'top1': round(shape_right, 4),
                                        'features': ['top', 'bottom', 'length', 'width',
                                                     'circle_radius', 'circle_residual',
                                                     'rect_residual']},
        },
    }
    if 'gt' in modes:
        preds, embs, scene_embs = [], [], []
        for s in tqdm(data, desc='eval-real gt', disable=not progress):
            if not s.objects:
                scene_embs.append(np.zeros((0, 1), np.float32))
                continue
            rec.set_up_vector(s.up)
            r = rec.classify([o.points for o in s.objects],
                             [o.colors for o in s.objects]
                             if colour and s.objects[0].colors is not None else None,
                             top_k=len(labels))
            preds += [x.top_labels for x in r]
            embs += [x.embedding for x in r]
            scene_embs.append(np.stack([x.embedding for x in r]))
        res = score(objects, preds, classes, labels)
        res['queries'] = query_figures(data, scene_embs, rec, classes, cfg.min_score)
        emb_pred = nearest_mean_loso(np.stack(embs), names, scene_of, normalise='cosine')
        res['frozen_embedding_nearest_mean_loso_top1'] = round(float(np.mean(
            [p == o.name or p in o.accept for p, o in zip(emb_pred, objects)])), 4)
        res['confusion_png'] = str(out / 'confusion_gt.png')
        plot_confusion(res, classes, out / 'confusion_gt.png',
                       f'{Path(model_dir).name}, ground-truth clusters: '
                       f'top-1 {res["top1"]:.3f} (majority {majority_top1:.3f})')
        res['per_object'] = [{'scene': o.scene, 'id': o.object_id, 'class': o.name,
                              'answer': p[:3], 'note': o.note}
                             for o, p in zip(objects, preds)]
        report['gt'] = res
    if 'pipeline' in modes:
        from p3d_perception.config import load as load_cfg
        from p3d_perception.pipeline import Pipeline, PipelineConfig
        pcfg = load_cfg(PipelineConfig, pipeline_config) if pipeline_config else \
            PipelineConfig()
        pcfg.top_k = max(pcfg.top_k, 3)
        pipe = Pipeline(rec, pcfg)
        preds = []
        for s in tqdm(data, desc='eval-real pipeline', disable=not progress):
            preds += _pipeline_predictions(s, pipe)
        res = score(objects, preds, classes, labels)
        res['found'] = round(float(np.mean([bool(p) for p in preds])), 4)
        res['confusion_png'] = str(out / 'confusion_pipeline.png')
        plot_confusion(res, classes, out / 'confusion_pipeline.png',
                       f'{Path(model_dir).name}, own segmentation: top-1 {res["top1"]:.3f}'
                       f' (found {res["found"]:.3f})')
        report['pipeline'] = res
    (out / 'eval_real.json').write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    return report
