# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Undo what the cuts got wrong.

Shards rejoin the object they touch, a container's inside rejoins its wall, a
handle its body.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from p3d_perception.segmentation.config import SegmentationConfig
from p3d_perception.segmentation.geometry import (
    _bounds, _in_box, _label_groups, _mean_rows, _norm3, _outside_quad, _plane_basis, _unit)


#: widest gap (m) between the two sides of an object that one in front of it can explain
MAX_OCCLUDER = 0.25
#: an upper piece's foot: its points this far (m) above its lowest
FOOT_HEIGHT = 0.02
#: a foot narrower than this share of its piece's width cannot hold the piece up
NARROW_FOOT = 0.3


class _Piece(NamedTuple):
    """A cluster candidate as the merge step sees it."""

    indices: np.ndarray
    points: np.ndarray      # (N, 3) float64
    heights: np.ndarray     # (N,) above the support plane
    top: float              # 99th percentile height: the rim, robust to flying pixels
    lo: np.ndarray          # bounding box corners
    hi: np.ndarray


def _pieces(points: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
            plane: np.ndarray, reuse: dict[int, _Piece]) -> list[_Piece]:
    """The merge steps' view of ``groups``; a piece a previous step left as it was is reused."""
    n = np.asarray(plane[:3], dtype=np.float64)
    d = float(plane[3])
    pieces = []
    for g in groups:
        piece = reuse.get(int(labels[g[0]]))
        if piece is None or len(piece.indices) != len(g):
            p = np.take(points, g, axis=0).astype(np.float64)
            h = p @ n + d
            piece = _Piece(g, p, h, _percentile(h, 99), *_bounds(p))
        pieces.append(piece)
    return pieces


def _find(parent: list[int], i: int) -> int:
    """Union-find root of ``i``, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _relabel(labels: np.ndarray, groups: list[np.ndarray], pieces: list[_Piece],
             roots: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each piece takes the label of its union-find root; the groups of the result.

    Nothing joined (most frames) returns the inputs themselves, so the next step
    does not sort the labels into groups again.
    """
    if all(r == i for i, r in enumerate(roots)):
        return labels, groups
    out = labels.copy()
    for i, piece in enumerate(pieces):
        if roots[i] != i:
            out[piece.indices] = labels[pieces[roots[i]].indices[0]]
    return out, _label_groups(out)


def _merge_parts(points: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
                 plane: np.ndarray, cfg: SegmentationConfig
                 ) -> tuple[np.ndarray, list[np.ndarray], dict[int, _Piece]]:
    """Containers first, then handles against the whole containers.

    A handle is judged against its body's size; the wall behind a handle is
    often a piece of its own until the container step joins it to the body.
    ``groups`` are the labels' index groups, largest first (``_label_groups``).
    Returns the labels, their groups and the pieces left as they were, by label,
    for the next step.
    """
    labels, groups, kept = _merge_stage(points, labels, groups, plane, cfg, 'containers', {})
    labels, groups, kept = _merge_stage(points, labels, groups, plane, cfg, 'handles', kept)
    return _merge_stage(points, labels, groups, plane, cfg, 'feet', kept)


def _merge_stage(points: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
                 plane: np.ndarray, cfg: SegmentationConfig, stage: str,
                 reuse: dict[int, _Piece]
                 ) -> tuple[np.ndarray, list[np.ndarray], dict[int, _Piece]]:
    """Rejoin what the cuts split off an object: a container's inside, a handle.

    The inner wall meets the floor of a container in a concave crease, and the
    front rim hides part of the inside, so the crease and gap cuts that separate
    stacked objects also split every cup, bowl and pot in two. Both pieces end at
    the same rim height, their rims together ring an empty middle, and the inside
    is seen *through the opening*: the ray from the sensor to an inner point
    crosses the rim's height inside the ring. Two separate objects of equal height
    side by side have solid tops that do not ring anything.

    A handle meets its body in two thin creases. It is a thin upright slab, much
    smaller than the body, no higher than it, and it joins only the nearest body.

    ``reuse`` holds pieces of a previous stage by label; those this stage leaves as
    they were are returned the same way, so the next stage does not rebuild them.
    """
    from scipy.spatial import ConvexHull, QhullError, cKDTree

    if not groups:
        return labels, groups, {}
    n = np.asarray(plane[:3], dtype=np.float64)
    d = float(plane[3])
    view = np.asarray(cfg.viewpoint, dtype=np.float64)
    h_view = float(view @ n + d)
    basis = _plane_basis(n)
    rim = cfg.rim_tolerance
    pieces = _pieces(points, labels, [g for g in groups if len(g) >= 30][:64], plane, reuse)
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        return _find(parent, i)

    def seen_through_opening(a: _Piece, b: _Piece) -> bool:
        """Whether one piece is seen through the opening the two rims ring.

        The rim test is the same for either piece, so it runs once per pair, and only
        when a piece has enough points below the rim to be an inside at all.
        """
        top = max(a.top, b.top)
        if h_view <= top + rim:  # the sensor must look down into the opening
            return False
        lows = [(f, f.heights < top - 2 * rim) for f in (a, b)]
        lows = [(f, low) for f, low in lows if low.sum() >= 0.4 * len(f.heights)]
        if not lows:
            return False
        ring = np.vstack([a.points[a.heights >= top - rim],
                          b.points[b.heights >= top - rim]]) @ basis.T
        if len(ring) < 10:
            return False
        outer = _outside_quad(ring)     # the hull is built on the few that can be on it
        try:
            hull = ConvexHull(outer)
        except (QhullError, ValueError):
            return False
        # a rim rings an empty middle: rim points all around (11 of 16 sectors), none
        # near the centre
        rel = ring - outer[hull.vertices].mean(axis=0)
        radius = np.hypot(rel[:, 0], rel[:, 1])
        sectors = np.unique((np.arctan2(rel[:, 1], rel[:, 0]) / (np.pi / 8)).astype(int))
        if len(sectors) < 11 or radius.min() < 0.4 * np.median(radius):
            return False
        for f, low in lows:
            t = (top - h_view) / (f.heights[low] - h_view)
            q = (view + t[:, None] * (f.points[low] - view)) @ basis.T
            inside = (q @ hull.equations[:, :2].T + hull.equations[:, 2]
                      <= -0.5 * rim).all(axis=1)
            if inside.mean() >= 0.6:
                return True
        return False

    def inside_footprint(a: _Piece, b: _Piece) -> bool:
        """Whether ``b`` lies within ``a``'s footprint, lower than its rim.

        That is an inside whose rim the image border or an occluder cut, so that no ring
        shows for ``seen_through_opening``. Seen from above, a container's floor lies
        inside its wall's outline. An object beside it does not, one standing in it or
        on it rises above its rim, and two objects side by side have outlines that do not
        hold each other.
        """
        if h_view <= a.top + rim or b.top > a.top - rim:
            return False
        outer = _outside_quad(a.points[::max(1, len(a.points) // 2000)] @ basis.T)
        try:
            hull = ConvexHull(outer)
        except (QhullError, ValueError):
            return False
        q = b.points[::max(1, len(b.points) // 500)] @ basis.T
        inside = (q @ hull.equations[:, :2].T + hull.equations[:, 2] <= -rim).all(axis=1)
        return bool(inside.mean() >= 0.9)

    lows: dict[int, float] = {}

    def on_narrow_foot(base: int, part: int) -> bool:
        """Whether ``part`` stands on ``base``'s top on a foot too narrow to stand on.

        A lamp's pole on its base, a stem on its foot: cut at the concave crease where
        they meet, the upper piece touches the lower one only with a foot a fraction of
        its own width, which could not hold it up alone. An object put on another
        stands on its own bottom, as wide as it is (a box, a mug, a bottle on a book),
        and one behind another, its bottom hidden, does not reach down to its top.
        """
        a, b = pieces[base], pieces[part]
        if part not in lows:
            lows[part] = _percentile(b.heights, 1)
        low = lows[part]
        if abs(low - a.top) > rim or b.top < a.top + 4 * rim:
            return False
        foot = b.points[b.heights < low + FOOT_HEIGHT] @ basis.T
        if len(foot) < 10 or _spread(foot) > NARROW_FOOT * _spread(b.points @ basis.T):
            return False
        outer = _outside_quad(a.points[::max(1, len(a.points) // 2000)] @ basis.T)
        try:
            hull = ConvexHull(outer)
        except (QhullError, ValueError):
            return False
        centre = foot.mean(axis=0)
        return bool((hull.equations[:, :2] @ centre + hull.equations[:, 2] <= -rim).all())

    slab: dict[int, bool] = {}

    def handle_shaped(j: int) -> bool:
        """Thin across, with the thin axis lying flat.

        A phone or a plate lying beside an object is thin along the vertical.
        """
        if j not in slab:
            f = pieces[j]
            c = f.points - _mean_rows(f.points)
            var, vec = np.linalg.eigh(c.T @ c / len(c))
            sd = np.sqrt(np.maximum(var, 0))
            slab[j] = bool(sd[0] < 0.25 * sd[2] and sd[0] < 0.008 and abs(vec[:, 0] @ n) < 0.5)
        return slab[j]

    def is_handle(j: int, body: _Piece) -> bool:
        f = pieces[j]
        if len(f.points) > 0.25 * len(body.points) or f.top > body.top + rim:
            return False
        return handle_shaped(j)

    def near_box(p: np.ndarray, other: _Piece, link: float) -> np.ndarray:
        """The rows of ``p`` within ``link`` of ``other``'s bounding box."""
        return p[_in_box(p, other.lo - link, other.hi + link)]

    def gap(i: int, j: int, link: float) -> float:
        """Smallest distance between two pieces, or inf when it is over ``link``.

        On at most 1500 points each, and of those only the ones within ``link`` of the
        other piece's box: no other can be that close, so the k-d tree and its queries
        are built on those alone.
        """
        a, b = pieces[i], pieces[j]
        sa = near_box(a.points[::max(1, len(a.points) // 1500)], b, link)
        sb = near_box(b.points[::max(1, len(b.points) // 1500)], a, link)
        if len(sa) == 0 or len(sb) == 0:
            return float('inf')
        tree = cKDTree(sb, balanced_tree=False, compact_nodes=False)
        return float(tree.query(sa, k=1, distance_upper_bound=link)[0].min())

    handle_of: dict[int, tuple[float, int]] = {}   # handle -> (distance, nearest body)
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):     # sorted by size: i is the larger
            a, b = pieces[i], pieces[j]
            # the rim between the pieces is thin and often lost, hence a generous gap
            link = max(4 * rim, 2.0 * cfg.cluster_tolerance * float(np.linalg.norm(a.lo - view)))
            if (a.lo > b.hi + link).any() or (b.lo > a.hi + link).any():
                continue
            if stage == 'feet':
                if ((on_narrow_foot(i, j) or on_narrow_foot(j, i))
                        and gap(i, j, 4 * rim) <= 4 * rim):
                    parent[root(j)] = root(i)
                continue
            if abs(a.top - b.top) > rim and len(a.points) < 4 * len(b.points):
                continue
            if stage == 'handles' and not is_handle(j, a):
                continue    # the shape test is cheap, the distance needs a k-d tree
            dist = gap(i, j, link)
            if dist > link:
                continue
            if stage == 'containers':
                if seen_through_opening(a, b) or inside_footprint(a, b):
                    parent[root(j)] = root(i)
            elif dist < handle_of.get(j, (np.inf, -1))[0]:
                handle_of[j] = (dist, i)
    for j, (_, i) in handle_of.items():
        parent[root(j)] = root(i)
    roots = [root(i) for i in range(len(pieces))]
    out, groups = _relabel(labels, groups, pieces, roots)
    joined = {r for i, r in enumerate(roots) if r != i}
    unchanged = {int(labels[p.indices[0]]): p for i, p in enumerate(pieces)
                 if roots[i] == i and i not in joined}
    return out, groups, unchanged


def _spread(uv: np.ndarray) -> float:
    """Width of a footprint along its long axis: four standard deviations."""
    c = uv - uv.mean(axis=0)
    return 4.0 * float(np.sqrt(max(np.linalg.eigvalsh(c.T @ c / len(c))[-1], 0.0)))


def _percentile(a: np.ndarray, q: float) -> float:
    """np.percentile's linear estimate from a partial sort (several times faster there)."""
    pos = q / 100 * (len(a) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(a) - 1)
    part = np.partition(a, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def _absorb_fragments(points: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                      cfg: SegmentationConfig) -> np.ndarray:
    """Give crease shards and cut pixels to the object they touch.

    Sensor noise on curved or concave surfaces (a mug's inside, a bear's fur)
    breaks off many shards too small to be objects; they would be dropped, and
    the object they belong to would lose them. A shard within the gap tolerance
    of a real cluster joins it; one that touches none is left out as before.
    """
    from scipy.spatial import cKDTree

    lab = labels.copy()
    kept = np.flatnonzero(keep)
    kl = lab[kept]
    counts = np.bincount(kl[kl >= 0]) if (kl >= 0).any() else np.zeros(0, np.int64)
    small = counts < cfg.min_cluster_points
    is_loose = kl < 0
    is_loose[~is_loose] = small[kl[~is_loose]]
    if not is_loose.any() or is_loose.all():
        return lab
    loose_idx, big_idx = kept[is_loose], kept[~is_loose]
    q = np.take(points, loose_idx, axis=0).astype(np.float64)
    lo, hi = _bounds(q)
    lo, hi = lo - 0.05, hi + 0.05
    bp = np.take(points, big_idx, axis=0)
    near = _in_box(bp, lo, hi)
    if not near.any():
        return lab
    big_idx, bp = big_idx[near], bp[near].astype(np.float64)
    rng_ = _norm3(q - np.asarray(cfg.viewpoint))
    link = cfg.cluster_tolerance * np.maximum(rng_, 0.5) * 2.0
    # an unbalanced tree builds twice as fast, and this one answers one query
    tree = cKDTree(bp, balanced_tree=False, compact_nodes=False)
    dist, nn = tree.query(q, k=1, distance_upper_bound=float(link.max()))
    ok = np.isfinite(dist) & (dist <= link)
    lab[loose_idx] = -1
    lab[loose_idx[ok]] = lab[big_idx[nn[ok]]]
    return lab


def _face_near(piece: _Piece, at: np.ndarray, top: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(centroid, normal) of the top or the side a piece shows near ``at``, if flat there."""
    band = np.flatnonzero(np.abs(piece.points[:, 0] - at[0]) < 0.04)   # cheap first cut
    p = np.take(piece.points, band, axis=0)
    upper = np.take(piece.heights, band) >= piece.top - 0.015
    near = (_norm3(p - at) < 0.04) & (upper if top else ~upper)
    if near.sum() < 20:
        return None
    p = p[near]
    for _ in range(2):      # once more without the mixed pixels at an occluder's edge
        c = _mean_rows(p)
        var, vec = np.linalg.eigh((p - c).T @ (p - c) / len(p))
        off = np.abs((p - c) @ vec[:, 0])
        p = p[off <= max(0.003, 2.5 * float(np.median(off)))]
        if len(p) < 20:
            return None
    if np.sqrt(max(var[0], 0.0)) > 0.004:
        return None
    return c, vec[:, 0]


def _faces_run_on(a: _Piece, pa: np.ndarray, b: _Piece, pb: np.ndarray) -> bool:
    """Whether the faces the pieces show at their facing ends are one plane.

    The side faces where both show one, else the tops (a box lying flat seen from
    above shows only its top there).
    """
    for top in (False, True):
        fa, fb = _face_near(a, pa, top), _face_near(b, pb, top)
        if fa is not None and fb is not None:
            return abs(float(fa[1] @ fb[1])) >= 0.95 and \
                abs(float((fb[0] - fa[0]) @ fa[1])) <= 0.01
    return False


def _gap_samples(a: _Piece, b: _Piece, n: np.ndarray, d: float,
                 basis: np.ndarray) -> np.ndarray:
    """Points just below the rim over the part of the pair's footprint neither piece covers.

    If the two are one object, that is where the rest of it stands, and its top is
    what the sensor would have seen of it there.
    """
    from scipy.spatial import ConvexHull, QhullError, cKDTree

    own = np.vstack([a.points[::max(1, len(a.points) // 1500)],
                     b.points[::max(1, len(b.points) // 1500)]]) @ basis.T
    try:
        hull = ConvexHull(own)
    except (QhullError, ValueError):
        return np.zeros((0, 3))
    lo, hi = own.min(axis=0), own.max(axis=0)
    step = max(0.01, float(np.sqrt(np.prod(hi - lo) / 400)))
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step))
    q = np.column_stack([gx.ravel(), gy.ravel()])
    q = q[(q @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0).all(axis=1)]
    if len(q):
        q = q[cKDTree(own).query(q, k=1)[0] > 0.015]
    h = min(a.top, b.top) - 0.01     # below the rim: a ray past a far edge sees the table
    return -d * n + q @ basis + h * n


def _gap_hidden(points: np.ndarray, view: np.ndarray, samples: np.ndarray,
                tol: float = 0.004) -> bool:
    """Whether the sensor's view of ``samples`` is blocked by something nearer.

    What each ray met first is what the sensor saw there: a nearer surface hides the
    sample, one beyond it (the table, the wall) shows that nothing stands there, and
    a ray that met nothing (a depth shadow at an occluder's edge) says nothing either
    way. Most samples must be hidden, and hardly any seen through.
    """
    from scipy.spatial import cKDTree

    if len(samples) < 3:
        return False
    s = samples - view
    r = _norm3(s)
    mid = _unit((s / r[:, None]).mean(axis=0))
    axes = np.vstack([mid, _plane_basis(mid)])
    # gnomonic coordinates about the mean ray: distances there are angles, and three
    # BLAS matrix-vector products give them without normalising the cloud (NaNs drop out)
    own = s @ axes.T
    slope = own[:, 1:] / own[:, :1]
    reach = float(np.hypot(slope[:, 0], slope[:, 1]).max()) + tol
    ax = axes.astype(points.dtype)
    off = (view @ axes.T).astype(points.dtype)
    c0, c1, c2 = (points @ ax[k] - off[k] for k in range(3))
    near = np.flatnonzero((c0 > 0) & (c1 * c1 + c2 * c2 <= np.float32(reach ** 2) * c0 * c0))
    if near.size == 0:
        return False
    c = np.column_stack([np.take(c0, near), np.take(c1, near), np.take(c2, near)]
                        ).astype(np.float64)
    cs = c[:, 1:] / c[:, :1]
    tree = cKDTree(cs, balanced_tree=False, compact_nodes=False)
    dist, nn = tree.query(slope, k=1)
    seen = dist <= tol
    first = _norm3(c[np.minimum(nn, len(c) - 1)])
    through = int((seen & (first > r + 0.02)).sum())
    hidden = int((seen & (first < r - 0.02)).sum())
    return through <= 0.05 * len(r) and hidden >= 0.5 * len(r)


def _merge_occluded(points: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
                    plane: np.ndarray, cfg: SegmentationConfig,
                    reuse: dict[int, _Piece] | None = None
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rejoin the two sides of an object that one in front of it splits in two.

    A box behind a can shows a left and a right piece with nothing between them in
    the image but the can. Separate objects side by side differ in at least one of
    what the two sides of one object share: the same top height, a side face that
    runs on from one piece to the other as one plane, and a gap between them that
    is hidden, everywhere along it, by something nearer the sensor.
    ``reuse``: pieces of the previous merge step by label (see ``_merge_parts``).
    """
    from scipy.spatial import cKDTree

    sized = [g for g in groups if len(g) >= cfg.min_cluster_points][:64]
    if len(sized) < 3:     # two sides and an occluder
        return labels, groups
    n = np.asarray(plane[:3], dtype=np.float64)
    d = float(plane[3])
    view = np.asarray(cfg.viewpoint, dtype=np.float64)
    rim = cfg.rim_tolerance
    basis = _plane_basis(n)
    pieces = _pieces(points, labels, sized, plane, reuse or {})
    parent = list(range(len(pieces)))
    trees: dict[int, tuple[np.ndarray, cKDTree]] = {}

    def root(i: int) -> int:
        return _find(parent, i)

    def sampled(i: int) -> tuple[np.ndarray, cKDTree]:
        if i not in trees:
            sub = pieces[i].points[::max(1, len(pieces[i].points) // 1000)]
            trees[i] = (sub, cKDTree(sub, balanced_tree=False, compact_nodes=False))
        return trees[i]

    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            a, b = pieces[i], pieces[j]
            if abs(a.top - b.top) > rim or root(i) == root(j):
                continue
            lo, hi = np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi)
            if float((hi - lo).max()) > cfg.max_cluster_size:
                continue
            # what hides the middle of a tabletop object is another one, at most this wide
            apart = np.maximum(np.maximum(a.lo - b.hi, b.lo - a.hi), 0.0)
            if float(apart @ apart) > MAX_OCCLUDER ** 2:
                continue
            sa, tree = sampled(i)
            sb = sampled(j)[0]
            dist, nn = tree.query(sb, k=1)
            k = int(np.argmin(dist))
            pa, pb = sa[nn[k]], sb[k]
            if dist[k] < 0.02:      # touching: the cuts between them were meant
                continue
            if not _faces_run_on(a, pa, b, pb):
                continue
            hidden = _gap_hidden(points, view, _gap_samples(a, b, n, d, basis))
            if hidden:
                parent[root(j)] = root(i)
    return _relabel(labels, groups, pieces, [root(i) for i in range(len(pieces))])
