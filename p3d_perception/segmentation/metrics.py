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
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction has {pred.size} labels, ground truth {gt.size}')
    gt_ids, gt_idx = np.unique(np.where(gt >= 0, gt, -1), return_inverse=True)
    pr_ids, pr_idx = np.unique(np.where(pred >= 0, pred, -1), return_inverse=True)
    table = np.bincount(gt_idx * pr_ids.size + pr_idx,
                        minlength=gt_ids.size * pr_ids.size).reshape(gt_ids.size, pr_ids.size)
    g_obj = gt_ids >= 0
    p_obj = pr_ids >= 0
    inter = table[g_obj][:, p_obj].astype(np.float64)
    g_size = table[g_obj].sum(axis=1).astype(np.float64)
    p_size = table[:, p_obj].sum(axis=0).astype(np.float64)
    union = g_size[:, None] + p_size[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(g_obj.sum())
    mostly_inside = inter >= 0.5 * p_size[None, :]
    big_part = inter >= part_fraction * g_size[:, None]
    over = int(((mostly_inside & big_part).sum(axis=1) >= 2).sum())
    under = int((big_part.sum(axis=0) >= 2).sum()) if inter.size else 0
    return {
        'objects': int(g_obj.sum()),
        'clusters': int(p_obj.sum()),
        'matched': int((best >= iou_threshold).sum()),
        'mean_iou': float(best.mean()) if best.size else 0.0,
        'best_iou': {int(i): round(float(b), 4) for i, b in zip(gt_ids[g_obj], best)},
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
