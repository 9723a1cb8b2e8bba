# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d synth scenes|objects|preview``: make synthetic bags, view sets and pictures.

The synthetic world is the project's only source of labelled 3D data, so it
has to be one command away: rosbag2 files for the node, the demo and
segmentation checks; .npz single-object views for training; and a PNG a
person looks at to see whether the world still looks like a tabletop.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _categories(text: str | None):
    if not text:
        return None
    from p3d_perception.training.synthetic import CATEGORIES
    cats = [c.strip() for c in text.split(',') if c.strip()]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(f'unknown categories {bad}; known: {", ".join(CATEGORIES)}')
    return cats


def _cameras():
    from p3d_perception.training.synthetic import CAMERA_PRESETS
    return sorted(CAMERA_PRESETS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('synth', help='synthetic tabletop world: bags, object views, previews',
                       description=__doc__.splitlines()[0])
    kinds = p.add_subparsers(dest='synth_kind', metavar='KIND')
    kinds.required = True
    cams = ['d435', 'kinect', 'azure_kinect']

    s = kinds.add_parser('scenes', help='render scenes into a rosbag2 (PointCloud2 + truth)')
    s.add_argument('--out', type=Path, required=True, help='bag directory to create')
    s.add_argument('--scenes', type=int, default=4)
    s.add_argument('--frames-per-scene', type=int, default=1,
                   help='frames per scene from a slowly moving camera')
    s.add_argument('--seed', type=int, default=0)
    s.add_argument('--camera', default='d435', choices=cams)
    s.add_argument('--categories', default=None, help='comma-separated subset')
    s.add_argument('--objects', default='1,15', help='objects per scene: N or MIN,MAX')
    s.add_argument('--no-clutter', action='store_true',
                   help='separated objects only (no touching, stacking, distractors)')
    s.add_argument('--support', default='table', choices=['table', 'floor'])
    s.add_argument('--storage', default='mcap', choices=['mcap', 'sqlite3'])
    s.add_argument('--rate', type=float, default=10.0, help='frame rate of the stamps (Hz)')
    s.add_argument('--overwrite', action='store_true')
    s.set_defaults(func=run_scenes)

    o = kinds.add_parser('objects', help='single-object partial views as .npz for training')
    o.add_argument('--out', type=Path, required=True)
    o.add_argument('--views-per-category', type=int, required=True)
    o.add_argument('--seed', type=int, default=0)
    o.add_argument('--categories', default=None, help='comma-separated subset')
    o.add_argument('--camera', default='d435', choices=cams)
    o.add_argument('--n-points', type=int, default=None, help='cap points per view')
    o.add_argument('--frame', default='gravity', choices=['gravity', 'camera'])
    o.set_defaults(func=run_objects)

    v = kinds.add_parser('preview', help='PNG of a few scenes and their ground truth')
    v.add_argument('--out', type=Path, default=Path('preview.png'))
    v.add_argument('--scenes', type=int, default=4)
    v.add_argument('--seed', type=int, default=0)
    v.add_argument('--camera', default='d435', choices=cams)
    v.add_argument('--objects', default='3,10')
    v.add_argument('--views', action='store_true',
                   help='also a sheet of single-object views (one per category)')
    v.set_defaults(func=run_preview)


def _range(text: str) -> tuple[int, int]:
    parts = [int(x) for x in str(text).split(',')]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2 or parts[0] > parts[1] or parts[0] < 0:
        raise ValueError(f'--objects must be N or MIN,MAX, got {text!r}')
    return parts[0], parts[1]


def make_scene_frames(n_scenes: int, frames_per_scene: int, seed: int, camera: str = 'd435',
                      categories=None, n_objects=(1, 15), clutter: bool = True,
                      support: str = 'table', rate_hz: float = 10.0, progress: bool = False):
    """Frames (stamped) and their scene indices for a synthetic bag."""
    import numpy as np
    from p3d_perception.training.synthetic import camera_trajectory, generate_scene, render
    if n_scenes < 1 or frames_per_scene < 1:
        raise ValueError('need at least one scene and one frame per scene')
    period = int(round(1e9 / rate_hz))
    start = 1_700_000_000_000_000_000 + int(seed) * 1_000_000_000
    frames, scene_ids = [], []
    ss = np.random.SeedSequence(int(seed))
    children = ss.spawn(n_scenes)
    it = range(n_scenes)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, unit='scene', desc='scenes')
    for i in it:
        rng = np.random.default_rng(children[i])
        scene = generate_scene(rng, categories=categories, n_objects=n_objects,
                               clutter=clutter, support=support)
        poses = camera_trajectory(scene, frames_per_scene, rng)
        for pose in poses:
            f = render(scene, camera, rng, pose=pose,
                       stamp_ns=start + len(frames) * period)
            frames.append(f)
            scene_ids.append(i)
    return frames, scene_ids


def run_scenes(args: argparse.Namespace) -> int:
    from p3d_perception.bagio import write_scene_bag
    frames, ids = make_scene_frames(
        args.scenes, args.frames_per_scene, args.seed, args.camera, _categories(args.categories),
        _range(args.objects), not args.no_clutter, args.support, args.rate, progress=True)
    path = write_scene_bag(args.out, frames, storage=args.storage, overwrite=args.overwrite,
                           scene_ids=ids)
    n_obj = sum(len(f.objects) for f in frames)
    print(f'wrote {len(frames)} frames ({args.scenes} scenes, {n_obj} object instances in '
          f'all frames) to {path} [{args.storage}]')
    return 0


def run_objects(args: argparse.Namespace) -> int:
    from p3d_perception.training.synthetic import generate_object_views, save_object_views
    views = generate_object_views(_categories(args.categories), args.views_per_category,
                                  args.seed, camera=args.camera, n_points=args.n_points,
                                  frame=args.frame, progress=True)
    path = save_object_views(args.out, views)
    c = views.counts
    print(f'wrote {len(views)} views of {len(views.categories)} categories to {path} '
          f'(points per view: min {c.min()}, median {int(sorted(c)[len(c) // 2])}, '
          f'max {c.max()})')
    return 0


def _instance_rgb(inst, n):
    import numpy as np
    rng = np.random.default_rng(3)
    pal = rng.integers(40, 255, (max(n, 1) + 1, 3)).astype(np.uint8)
    pal[0] = (25, 25, 25)
    return pal[np.clip(inst, 0, n)]


def run_preview(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    frames, _ = make_scene_frames(args.scenes, 1, args.seed, args.camera,
                                  n_objects=_range(args.objects))
    fig, axes = plt.subplots(len(frames), 3, figsize=(13, 3.4 * len(frames)), squeeze=False)
    for row, f in zip(axes, frames):
        H, W = f.height, f.width
        row[0].imshow(f.colors.reshape(H, W, 3))
        row[0].set_title(f'colour ({f.camera}, {len(f.objects)} objects)', fontsize=9)
        d = np.where(f.depth > 0, f.depth, np.nan)
        im = row[1].imshow(d, cmap='turbo')
        fig.colorbar(im, ax=row[1], fraction=0.035, label='m')
        row[1].set_title(f'depth ({100 * (f.depth > 0).mean():.0f}% valid)', fontsize=9)
        inst = f.instance.reshape(H, W)
        row[2].imshow(_instance_rgb(inst, len(f.objects)))
        for o in f.objects:
            m = inst == o['id']
            if m.sum() > 30:
                ys, xs = np.nonzero(m)
                row[2].text(xs.mean(), ys.mean(), o['category'], fontsize=7, ha='center',
                            color='white', bbox=dict(facecolor='black', alpha=0.5, pad=1,
                                                     lw=0))
        row[2].set_title('instances (ground truth)', fontsize=9)
        for a in row:
            a.set_axis_off()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    print(f'saved {args.out}')
    if args.views:
        out = args.out.with_name(args.out.stem + '_views.png')
        _views_sheet(out, args.seed, args.camera)
        print(f'saved {out}')
    return 0


def _views_sheet(out: Path, seed: int, camera: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from p3d_perception.training.synthetic import CATEGORIES, generate_object_views
    views = generate_object_views(CATEGORIES, 1, seed, camera=camera)
    n = len(views)
    cols = 8
    rows = -(-n // cols)
    fig = plt.figure(figsize=(2.2 * cols, 2.3 * rows))
    for i in range(n):
        p, c, lab = views.view(i)
        ax = fig.add_subplot(rows, cols, i + 1, projection='3d')
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=c / 255.0, s=1, depthshade=False)
        ax.set_title(f'{views.categories[lab]} ({len(p)})', fontsize=8)
        ax.view_init(elev=25, azim=200)
        lo, hi = p.min(0), p.max(0)
        r = (hi - lo).max() / 2
        mid = (hi + lo) / 2
        ax.set_xlim(mid[0] - r, mid[0] + r)
        ax.set_ylim(mid[1] - r, mid[1] + r)
        ax.set_zlim(mid[2] - r, mid[2] + r)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)
