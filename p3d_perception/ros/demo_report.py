# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""What the demo shows a person: tables of detections/answers and a picture.

Detections are compared with the synthetic bag's ground truth (nearest object
centre) so the demo reports its own accuracy instead of asking to be trusted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p3d_perception.cloud import Cloud
from p3d_perception.ros.messages import matrix_from_quaternion


#: ground truth of the synthetic world's unlabelled distractor shapes
DISTRACTOR = 'unknown'


def _center(det) -> np.ndarray:
    p = det.pose.position
    return np.array([p.x, p.y, p.z])


def truth_for(det, gt: dict | None) -> str | None:
    """Category of the ground-truth object nearest to the detection (within 10 cm)."""
    if not gt:
        return None
    objects = gt.get('objects', gt) if isinstance(gt, dict) else gt
    best, best_d = None, 0.10
    for obj in objects:
        pose = np.asarray(obj.get('pose', obj.get('pose_camera')), dtype=np.float64)
        centre = pose[:3, 3] if pose.shape == (4, 4) else pose[:3]
        size = np.asarray(obj.get('size', [0, 0, 0]), dtype=np.float64)
        # the pose is the object's base on the table; compare with its middle
        mid = centre + (pose[:3, 2] * size[2] / 2 if pose.shape == (4, 4) else 0)
        d = float(np.linalg.norm(mid - _center(det)))
        if d < best_d:
            best, best_d = obj.get('category'), d
    return best


def summarise(detections_msg, answers, gt: dict | None) -> dict:
    rows = []
    for det in detections_msg.detections:
        truth = truth_for(det, gt)
        rows.append({
            'id': det.object_id, 'label': det.label, 'score': round(float(det.score), 3),
            'alternatives': [f'{lbl} {s:.2f}' for lbl, s in
                             zip(det.alternative_labels[1:3], det.alternative_scores[1:3])],
            'center_m': [round(float(v), 3) for v in _center(det)],
            'size_m': [round(det.size.x, 3), round(det.size.y, 3), round(det.size.z, 3)],
            'points': det.point_count, 'ground_truth': truth,
            # the world's distractor shapes belong to no category: nothing to name them by
            'correct': None if truth in (None, DISTRACTOR) else truth == det.label})
    judged = [r for r in rows if r['correct'] is not None]
    qa = []
    for query, resp, want in answers:
        top = truth_for(resp.matches[0], gt) if resp.success and resp.matches else None
        if want is None:
            right = None            # a user's own question: nothing to judge it by
        elif not want:
            right = bool(resp.success and not resp.matches)
        else:
            right = top in want
        qa.append({'query': query, 'success': resp.success, 'message': resp.message,
                   'expected': None if want is None else (list(want) or 'no match'),
                   'top_ground_truth': top, 'correct': right,
                   'matches': [{'id': m.object_id, 'label': m.label,
                                'score': round(float(s), 3)}
                               for m, s in zip(resp.matches, resp.scores)]})
    judged_q = [a for a in qa if a['correct'] is not None]
    n_truth = len(gt.get('objects', [])) if isinstance(gt, dict) else (len(gt) if gt else 0)
    return {'detections': rows, 'answers': qa,
            'ground_truth_objects': n_truth,
            'labels_correct': sum(bool(r['correct']) for r in judged),
            'labels_judged': len(judged),
            'queries_correct': sum(bool(a['correct']) for a in judged_q),
            'queries_judged': len(judged_q)}


def print_tables(report: dict, bag: Path, frames: int) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    t = Table(title=f'Detections, last of {frames} frames from {bag}')
    for col in ('id', 'label', 'score', 'next best', 'centre (m)', 'size (m)', 'points',
                'ground truth'):
        t.add_column(col)
    for r in report['detections']:
        truth = r['ground_truth'] or '-'
        if truth == DISTRACTOR:
            truth = 'distractor (not judged)'
        mark = {None: '', True: ' [green]ok[/]', False: ' [red]wrong[/]'}[r['correct']]
        t.add_row(str(r['id']), r['label'], f"{r['score']:.2f}", ', '.join(r['alternatives']),
                  ' '.join(f'{v:+.2f}' for v in r['center_m']),
                  'x'.join(f'{v:.2f}' for v in r['size_m']), str(r['points']), truth + mark)
    console.print(t)
    if report['labels_judged']:
        console.print(f"labels matching ground truth: {report['labels_correct']}/"
                      f"{report['labels_judged']} detections near a ground-truth object "
                      f"({report['ground_truth_objects']} objects in the scene)")
    q = Table(title='/query_object')
    for col in ('query', 'answer (id label score)', 'right answer', 'message'):
        q.add_column(col)
    for a in report['answers']:
        want = a['expected']
        want = '-' if want is None else (want if isinstance(want, str) else ' or '.join(want))
        mark = {None: '', True: ' [green]ok[/]', False: ' [red]wrong[/]'}[a['correct']]
        q.add_row(a['query'], '; '.join(f"#{m['id']} {m['label']} {m['score']:.2f}"
                                        for m in a['matches']) or '-', want + mark,
                  a['message'])
    console.print(q)
    if report['queries_judged']:
        console.print(f"queries answered right: {report['queries_correct']}/"
                      f"{report['queries_judged']} (present objects found first, absent "
                      "ones answered with no match)")


def _box_corners(det) -> np.ndarray:
    r = matrix_from_quaternion(det.pose.orientation)
    half = np.array([det.size.x, det.size.y, det.size.z]) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return _center(det) + (signs * half) @ r.T


_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6),
          (5, 7), (6, 7)]


def save_png(path: Path, cloud: Cloud, detections_msg, answers, K, gt) -> Path:
    """The camera image (from the organised cloud's colours) with boxes and answers."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from p3d_perception.ros.messages import label_color

    h, w = cloud.height, cloud.width
    if cloud.colors is not None and h > 1:
        image = cloud.colors.reshape(h, w, 3).copy()
        image[~cloud.valid.reshape(h, w)] = 40
    else:
        image = np.full((max(h, 1), max(w, 1), 3), 40, np.uint8)
    answer_ids = {}
    for query, resp, _ in answers:
        if resp.success and resp.matches:
            answer_ids.setdefault(resp.matches[0].object_id, []).append(query)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(15, 6.5),
                                   gridspec_kw={'width_ratios': [3, 1.3]})
    ax.imshow(image)
    ax.set_axis_off()
    for det in detections_msg.detections:
        if K is None:
            break
        c = label_color(det.label)
        corners = _box_corners(det)
        if np.any(corners[:, 2] <= 0.05):
            continue
        uv = (corners @ K.T)[:, :2] / corners[:, 2:3]
        highlighted = det.object_id in answer_ids
        for a, b in _EDGES:
            ax.plot(uv[[a, b], 0], uv[[a, b], 1], color=(1, .9, 0) if highlighted
                    else (c.r, c.g, c.b), lw=2.5 if highlighted else 1.3)
        top = uv[np.argmin(uv[:, 1])]
        ax.text(top[0], top[1] - 4, f'#{det.object_id} {det.label} {det.score:.2f}',
                color='white', fontsize=8, ha='center', va='bottom',
                bbox=dict(facecolor=(c.r, c.g, c.b), alpha=0.75, pad=1.5, lw=0))
    ax.set_title(f'{len(detections_msg.detections)} objects detected by p3d_perception')
    side.set_axis_off()
    lines = ['/query_object answers', '']
    for query, resp, _ in answers:
        best = (f'#{resp.matches[0].object_id} {resp.matches[0].label} '
                f'({resp.scores[0]:.2f})' if resp.success and resp.matches else '-')
        lines.append(f'"{query}"')
        lines.append(f'   -> {best}')
    if gt:
        cats = sorted(o.get('category', '?') for o in gt.get('objects', []))
        lines += ['', 'ground truth in the scene:'] + [f'   {c}' for c in cats]
    side.text(0, 1, '\n'.join(lines), va='top', family='monospace', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
