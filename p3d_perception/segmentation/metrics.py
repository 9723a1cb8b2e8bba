# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Segmentation against per-point ground truth (the mOSD scans and synthetic scenes)."""

from __future__ import annotations

import numpy as np


def match_instances(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5,
                    part_fraction: float = 0.2) -> dict:
    """Compare per-point cluster labels with per-point ground-truth instance ids.

    ``pred``: cluster id per point (-1 = none); ``gt``: instance id per point (< 0 = no
    object). A ground-truth object is *matched* when one cluster has IoU >= threshold
    with it. It is *over-segmented* when two or more clusters each lie mostly (>= 50%)
    inside it and each hold >= ``part_fraction`` of it; a cluster is *under-segmenting*
    when it holds >= ``part_fraction`` of two or more objects.
    """
    inter, g_size, p_size, obj_ids = _contingency(pred, gt)
    union = g_size[:, None] + p_size[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(obj_ids))
    mostly_inside = inter >= 0.5 * p_size[None, :]
    big_part = inter >= part_fraction * g_size[:, None]
    over = int(((mostly_inside & big_part).sum(axis=1) >= 2).sum())
    under = int((big_part.sum(axis=0) >= 2).sum()) if inter.size else 0
    return {
        'objects': len(obj_ids),
        'clusters': len(p_size),
        'matched': int((best >= iou_threshold).sum()),
        'mean_iou': float(best.mean()) if best.size else 0.0,
        'best_iou': {int(i): round(float(b), 4) for i, b in zip(obj_ids, best)},
        'over_segmented': over,
        'under_segmented': under,
    }


def mosd_ground_truth(label: np.ndarray, parts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """mOSD ``label`` field -> (instance id per point, -1 = none; table mask).

    Objects are ``label // 10`` for labels >= 20 (``parts=True``: the label itself,
    i.e. disjoint visible parts of an occluded object count separately); 1-9 is table.
    """
    label = np.asarray(label).astype(np.int64)
    inst = np.where(label >= 20, label if parts else label // 10, -1)
    return inst, (label >= 1) & (label <= 9)


def _contingency(pred: np.ndarray, gt: np.ndarray):
    """Intersections (objects x clusters), object sizes and cluster sizes in points."""
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction has {pred.size} labels, ground truth {gt.size}')
    gt_ids, gt_idx = np.unique(np.where(gt >= 0, gt, -1), return_inverse=True)
    pr_ids, pr_idx = np.unique(np.where(pred >= 0, pred, -1), return_inverse=True)
    table = np.bincount(gt_idx * pr_ids.size + pr_idx,
                        minlength=gt_ids.size * pr_ids.size).reshape(gt_ids.size, pr_ids.size)
    g_obj, p_obj = gt_ids >= 0, pr_ids >= 0
    inter = table[g_obj][:, p_obj].astype(np.float64)
    return (inter, table[g_obj].sum(axis=1).astype(np.float64),
            table[:, p_obj].sum(axis=0).astype(np.float64), gt_ids[g_obj])


def overlap_scores(pred: np.ndarray, gt: np.ndarray, f_threshold: float = 0.75) -> dict:
    """The unseen-object-segmentation protocol (OSD/OCID results since UOIS, 2019).

    Every ground-truth object gets at most one cluster and every cluster at most
    one object: a Hungarian assignment maximising the summed per-pair F-measure
    (P = |o & c| / |c|, R = |o & c| / |o|). Overlap precision is the matched
    intersection over all cluster points, recall over all object points, F their
    harmonic mean; ``objects_f075`` counts objects whose own match has F >= 0.75.
    Clusters on the table count against precision, missed objects against
    recall; a cluster split in two keeps only its better half. Points labelled
    < 0 in both are ignored.
    """
    from scipy.optimize import linear_sum_assignment

    inter, g_size, p_size, ids = _contingency(pred, gt)
    n_obj = len(g_size)
    out = {'objects': n_obj, 'clusters': len(p_size), 'precision': 0.0, 'recall': 0.0,
           'f_measure': 0.0, 'objects_f075': 0, 'f_per_object': {int(i): 0.0 for i in ids}}
    if n_obj == 0 or len(p_size) == 0:
        if n_obj == 0 and len(p_size) == 0:
            out.update(precision=1.0, recall=1.0, f_measure=1.0)
        return out
    prec = inter / p_size[None, :]
    rec = inter / g_size[:, None]
    with np.errstate(invalid='ignore', divide='ignore'):
        f = np.where(inter > 0, 2 * prec * rec / (prec + rec), 0.0)
    rows, cols = linear_sum_assignment(-f)
    tp = float(inter[rows, cols].sum())
    p = tp / float(p_size.sum())
    r = tp / float(g_size.sum())
    per = np.zeros(n_obj)
    per[rows] = f[rows, cols]
    out.update(precision=p, recall=r, f_measure=2 * p * r / (p + r) if p + r > 0 else 0.0,
               objects_f075=int((per >= f_threshold).sum()),
               f_per_object={int(i): round(float(v), 4) for i, v in zip(ids, per)})
    return out


def split_components(gt: np.ndarray, ids, height: int, width: int,
                     points: np.ndarray | None = None, min_points: int = 200) -> np.ndarray:
    """Ground truth with each of ``ids`` split into its connected pieces.

    For an id that the dataset marks as covering several physical objects
    (mOSD test46 id 7: a cereal box and a canister apart in the image). Pieces
    under ``min_points`` become unlabelled. Organised clouds connect 8-neighbour
    pixels; unorganised ones points within 1 cm.
    """
    out = np.asarray(gt).copy()
    next_id = int(out.max()) + 1 if out.size else 1
    for obj in ids:
        mask = out == obj
        if not mask.any():
            continue
        if height > 1 and width > 1:
            from scipy import ndimage
            lab, num = ndimage.label(mask.reshape(height, width), np.ones((3, 3), bool))
            lab = lab.reshape(-1)[mask] - 1
        else:
            from scipy.sparse.csgraph import connected_components
            from scipy.spatial import cKDTree
            tree = cKDTree(np.asarray(points)[mask])
            num, lab = connected_components(tree.sparse_distance_matrix(tree, 0.01),
                                            directed=False)
        idx = np.flatnonzero(mask)
        sizes = np.bincount(lab, minlength=num)
        out[idx] = -1
        for rank, k in enumerate(np.argsort(-sizes)):
            if sizes[k] < min_points:
                break
            if rank == 0:
                out[idx[lab == k]] = obj       # the largest piece keeps the id
            else:
                out[idx[lab == k]] = next_id
                next_id += 1
    return out


#: Subsets of the Object Segmentation Database by scene number (its README).
OSD_KINDS = {
    'learn': ((0, 16, 'boxes'), (17, 24, 'stacked'), (25, 32, 'occluded'),
              (33, 44, 'cylindric')),
    'test': ((0, 15, 'boxes'), (16, 23, 'stacked'), (24, 30, 'occluded'),
             (31, 42, 'cylindric'), (43, 54, 'mixed'), (55, 65, 'complex')),
}


def scene_kind(name: str) -> str:
    """'boxes', 'stacked', ... for an OSD/mOSD scene name like ``learn18``; else 'other'."""
    import re
    m = re.fullmatch(r'(learn|test)(\d+)', name)
    if not m:
        return 'other'
    num = int(m.group(2))
    for lo, hi, kind in OSD_KINDS[m.group(1)]:
        if lo <= num <= hi:
            return kind
    return 'other'
