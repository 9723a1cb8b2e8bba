# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Organised clouds: connected components on the pixel grid.

The grid is cut at depth gaps and concave creases; neighbours are free on the
grid, so this is the fast path.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np
from scipy import ndimage

from p3d_perception.segmentation.config import SegmentationConfig
from p3d_perception.segmentation.geometry import _dot3, _norm3


#: pixels of context kept around the candidates' bounding box for the neighbourhood tests
CROP_MARGIN_PX = 12


def _shift(a: np.ndarray, dv: int, du: int, fill) -> np.ndarray:
    """a shifted so that out[v, u] = a[v + dv, u + du] (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape[:2]
    if abs(dv) >= h or abs(du) >= w:  # a shift past the whole grid (a small ROI) is all fill
        return out
    vs = slice(max(0, -dv), min(h, h - dv))
    us = slice(max(0, -du), min(w, w - du))
    vs2 = slice(max(0, dv), min(h, h + dv))
    us2 = slice(max(0, du), min(w, w + du))
    out[vs, us] = a[vs2, us2]
    return out


def _window_sum(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """out[i] = sum of a[i - r .. i + r] along ``axis`` (zeros beyond the ends), float32.

    Sums over power-of-two widths are built by doubling and the window is put
    together from them: about 2 log2(2r + 1) slice additions, cheaper than
    ndimage's line filters, which copy every line to a float64 buffer.
    """
    width_all = 2 * radius + 1
    n = a.shape[axis]

    def sl(lo: int, hi: int) -> tuple:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(lo, hi)
        return tuple(idx)

    shape = list(a.shape)
    shape[axis] = n + 2 * radius
    part = np.zeros(shape, dtype=np.float32)
    part[sl(radius, radius + n)] = a
    out = None
    width, off = 1, 0      # part[i] = sum of the padded row from i to i + width
    while True:
        if width_all & width:
            piece = part[sl(off, off + n)]
            out = piece.copy() if out is None else np.add(out, piece, out=out)
            off += width
        if 2 * width > width_all:
            return out
        m = part.shape[axis] - width
        part = part[sl(0, m)] + part[sl(width, width + m)]
        width *= 2


def _box_mean(grid: np.ndarray, valid: np.ndarray,
              radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of valid points in a (2r+1)^2 window, and the window's valid count.

    The window is separable: one pass per axis on the interleaved array.
    """
    masked = _masked(grid, valid)
    cnt = _window_sum(_window_sum(valid.astype(np.float32), radius, 0), radius, 1)
    out = _window_sum(_window_sum(masked, radius, 0), radius, 1)
    with np.errstate(invalid='ignore', divide='ignore'):
        out /= cnt[..., None]
    return out, cnt


def _masked(grid: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 grid with invalid pixels (NaN or out of range) set to zero."""
    return np.where(valid[..., None], grid, np.float32(0)).astype(np.float32, copy=False)


def _organized_labels(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray,
                      cfg: SegmentationConfig, stride: int,
                      timings: dict, colors: np.ndarray | None = None) -> np.ndarray:
    """Connected components on the pixel grid cut at depth gaps and concave creases.

    Work happens inside the bounding box of the candidate pixels (plus a margin for
    the neighbourhood filters): objects usually cover a small part of the image.
    """
    labels_full = np.full(cand.shape, -1, dtype=np.int32)
    if not cand.any():
        return labels_full
    rows, cols = np.flatnonzero(cand.any(axis=1)), np.flatnonzero(cand.any(axis=0))
    m = CROP_MARGIN_PX
    box = (slice(max(rows[0] - m, 0), rows[-1] + m + 1), slice(max(cols[0] - m, 0),
                                                               cols[-1] + m + 1))
    labels_full[box] = _grid_labels(np.ascontiguousarray(grid[box]), cand[box], valid[box],
                                    cfg, stride, timings,
                                    None if colors is None else colors[box])
    return labels_full


def _grid_labels(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray,
                 cfg: SegmentationConfig, stride: int, timings: dict,
                 colors: np.ndarray | None = None) -> np.ndarray:
    """Components of the candidate pixels; cut pixels rejoin a close neighbour after.

    Depth-gap tests become two edge masks (right, down) computed once by slicing, and
    the rejoin sweeps reuse them, so no full-grid shifted copies are made per sweep.
    """
    t0 = time.perf_counter()
    grid = grid.astype(np.float32, copy=False)
    rng_ = _norm3(grid)
    thr = (np.float32(cfg.cluster_tolerance * max(1.0, stride / 2.0))
           * np.maximum(rng_, np.float32(0.5)))
    # edge masks: ok_r[v, u] links (v, u)-(v, u+1), ok_d[v, u] links (v, u)-(v+1, u);
    # an invalid end (NaN) counts as a gap
    with np.errstate(invalid='ignore'):
        ok_r = _norm3(grid[:, 1:] - grid[:, :-1]) <= thr[:, :-1]
        ok_d = _norm3(grid[1:] - grid[:-1]) <= thr[:-1]
        ok_r &= valid[:, 1:] & valid[:, :-1]
        ok_d &= valid[1:] & valid[:-1]
    cut = ~valid.copy()
    cut[:, :-1] |= ~ok_r
    cut[:, -1] = True
    cut[:-1] |= ~ok_d
    cut[-1] = True
    # one estimate a frame serves the crease window and the pixel areas of the hole cut
    focal = _focal_estimate(grid, valid) / stride
    if cfg.concave_cut:
        r_px = _crease_radius_px(cand, rng_, cfg, focal)
        crease, hole = _crease_mask(grid, cand, valid, colors, cfg, r_px)
        if cfg.crease_reach:
            # a crease line stops a pixel or two short of the outline it runs to (the
            # window there straddles the depth edge); what lies between them is cut too
            near_c, near_o = crease, cut | ~cand
            for _ in range(cfg.crease_reach):
                near_c, near_o = _dilate_cross(near_c), _dilate_cross(near_o)
            crease = crease | (near_c & near_o & cand)
        cut |= crease
    else:
        hole = None
    core = cand & ~cut
    if cfg.neck_px:
        # two objects whose cut lines leave a narrow corridor between them (the convex
        # corner of a box under an overhanging one) part where the corridor is
        outer = ~core
        for k in range(3 * cfg.neck_px):
            outer = _dilate_cross(outer)
            if k + 1 == cfg.neck_px:
                neck = core & outer
        hole = neck if hole is None else hole | neck
        deep = core & ~outer    # an object is thicker than the neck it is cut at
    else:
        deep = None
    timings['cuts'] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    if hole is None:
        labels, num = ndimage.label(core)
        labels -= 1  # -1 background
    else:
        area = rng_ * rng_ / np.float32(focal * focal)     # m^2 a pixel covers there
        labels = _keep_object_sized(core, hole, area, cfg.hole_cut_min_area, deep)
    # give cut candidate pixels the label of a close 4-neighbour (a few sweeps)
    _rejoin(labels, cand & (labels < 0), ok_r, ok_d, 3 * max(1, 4 // stride))
    timings['components'] = (time.perf_counter() - t0) * 1e3
    return labels


def _rejoin(labels: np.ndarray, todo: np.ndarray, ok_r: np.ndarray, ok_d: np.ndarray,
            sweeps: int) -> None:
    """Cut pixels take the label of a 4-neighbour they are not separated from by a gap.

    Each sweep tries the right, lower, left and upper neighbour in turn; a move reads
    the labels as they were before it. The cut pixels are a thin minority (crease
    lines), so the sweeps run over their coordinates rather than the whole grid.
    """
    h, w = labels.shape
    flat = labels.reshape(-1)
    tv, tu = np.nonzero(todo)
    pix = tv * w + tu
    # per cut pixel, one bit per move: may it link to that neighbour (inside the grid,
    # no gap)? A pixel that takes a label drops its bits and leaves at the sweep's end
    bits = np.zeros(pix.size, dtype=np.uint8)
    m = tu < w - 1
    bits[m] |= ok_r[tv[m], tu[m]].view(np.uint8)
    m = tv < h - 1
    bits[m] |= ok_d[tv[m], tu[m]].view(np.uint8) << 1
    m = tu > 0
    bits[m] |= ok_r[tv[m], tu[m] - 1].view(np.uint8) << 2
    m = tv > 0
    bits[m] |= ok_d[tv[m] - 1, tu[m]].view(np.uint8) << 3
    keep = bits > 0                    # no link at all: nothing to take a label from
    pix, bits = pix[keep], bits[keep]
    offsets = (1, w, -1, -w)
    for _ in range(sweeps):
        if pix.size == 0:
            break
        changed = False
        for k, off in enumerate(offsets):
            has = (bits & np.uint8(1 << k)) > 0
            if not has.any():
                continue
            at = pix[has]
            nbr = flat[at + off]
            ok = nbr >= 0
            if ok.any():
                flat[at[ok]] = nbr[ok]
                done = np.flatnonzero(has)[ok]
                bits[done] = 0
                changed = True
        if not changed:
            break
        keep = bits > 0
        pix, bits = pix[keep], bits[keep]


def _crease_radius_px(cand: np.ndarray, rng_: np.ndarray, cfg: SegmentationConfig,
                      focal_px: float) -> int:
    """Window radius in pixels matching crease_radius at the candidates' median range."""
    med = float(np.nanmedian(rng_[cand])) if cand.any() else 1.0
    return int(np.clip(round(cfg.crease_radius * focal_px / max(med, 1e-3)), 1, 8))


def _crease_mask(grid: np.ndarray, cand: np.ndarray, valid: np.ndarray,
                 colors: np.ndarray | None, cfg: SegmentationConfig, r_px: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels to cut at: concave creases, and with rgb the shallow ones that change colour.

    Returned apart from them (None when there are none): the hole cut, where a crease
    line runs into missing depth.
    """
    conc, normals = _creases(grid, valid, r_px, cfg)
    with np.errstate(invalid='ignore'):
        crease = conc > cfg.crease_threshold
        if colors is not None and cfg.colour_cut:
            # a shallow valley alone is surface noise or a dent; where the surface also
            # turns and the colour changes across it, two objects meet (a print edge or
            # a jar's lid changes colour, not direction)
            weak = (conc > cfg.colour_crease_threshold) & cand
            weak &= _normal_turn(normals, r_px, math.cos(math.radians(20)))
            weak &= _colour_edges(colors, valid, r_px, cfg.colour_threshold)
            crease |= weak
    # a crease line found with one-pixel gaps in it would not separate anything:
    # 4-connected components leak through any gap
    for _ in range(cfg.crease_dilate):
        crease = _dilate_cross(crease)
    hole = None
    if cfg.hole_cut:
        # next to missing depth the crease test has too few neighbours to say; a
        # crease line that runs into such a patch goes on across it
        undecided = np.isnan(conc) & valid & cand
        if undecided.any():
            patches, _ = ndimage.label(undecided, structure=np.ones((3, 3), bool))
            meets = np.unique(patches[_dilate_cross(crease) & undecided])
            meets = meets[meets > 0]
            if meets.size:
                hole = np.isin(patches, meets) & ~crease
                for _ in range(cfg.crease_dilate):
                    hole = _dilate_cross(hole)
    return crease, hole


def _keep_object_sized(core: np.ndarray, hole: np.ndarray, area: np.ndarray,
                       min_area: float, deep: np.ndarray | None = None) -> np.ndarray:
    """Components of ``core`` cut at ``hole`` where that separates object-sized pieces.

    The crease test is undecided around every patch of missing depth, and on a
    speckled surface (a D435's shadows along a mug's handle) the cut there dices it.
    Where the cut separated pieces that are each object-sized (``min_area`` m^2 of
    visible surface) it stays; smaller pieces go back to the largest piece of the
    region they were cut from, and a region left in one piece keeps its hole pixels.
    With ``deep`` (pixels far from any cut), a piece must also reach into it: a strip
    of surface between two creases is not an object however long it is.
    """
    whole, n_whole = ndimage.label(core)
    pieces, n = ndimage.label(core & ~hole)
    at = np.flatnonzero(pieces)
    lab = np.take(pieces, at)
    region = np.zeros(n + 1, dtype=np.int64)
    region[lab] = np.take(whole, at)
    if np.count_nonzero(np.bincount(region[1:], minlength=n_whole + 1) > 1) == 0:
        return whole - 1        # the hole cut separated nothing
    size = np.bincount(lab, weights=np.take(area, at), minlength=n + 1)
    big = size >= min_area
    if deep is not None:        # pixels far from any cut: a piece must reach into them
        big &= np.bincount(pieces[deep & (pieces > 0)], minlength=n + 1) > 0
    big[0] = False
    order = np.lexsort((-size[1:], region[1:])) + 1  # by region, largest piece first
    firsts = np.flatnonzero(np.r_[True, region[order[1:]] != region[order[:-1]]])
    largest = np.zeros(n_whole + 1, dtype=np.int64)
    largest[region[order[firsts]]] = order[firsts]
    n_big = np.bincount(region[big], minlength=n_whole + 1)
    whole_again = n_big < 2                          # nothing object-sized was cut off
    to = np.where(big & ~whole_again[region], np.arange(n + 1), largest[region]) - 1
    to[0] = -1
    # a region all neck or hole (a strip between creases) is left to the rejoin sweeps,
    # which give it to the surface it was cut from
    region_to = np.where(whole_again, largest - 1, -1)
    region_to[0] = -1
    out = to[pieces]
    joined = region_to[whole]
    np.copyto(out, joined, where=joined >= 0)
    return out.astype(np.int32, copy=False)


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    """One step of binary dilation by the 4-neighbour cross, by slices (no ndimage pass)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _creases(grid: np.ndarray, valid: np.ndarray, r_px: int,
             cfg: SegmentationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Concavity per pixel (NaN where too few neighbours) and normals.

    A pixel is concave when its neighbourhood mean lies on the open side of the
    surface: ``(mean - point) . normal / crease_radius``.
    """
    vx, vy, vz = (float(c) for c in cfg.viewpoint)
    return _creases_kernel(np.ascontiguousarray(grid, dtype=np.float32),
                           np.ascontiguousarray(valid), int(r_px), vx, vy, vz,
                           1.0 / cfg.crease_radius, 0.5 * (2 * r_px + 1) ** 2)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the crease kernel now, on a tiny grid.

    Otherwise the first frame pays for it: 0.5 s with the cache, 3-4 s without.
    """
    _creases_kernel(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), bool), 1,
                    0.0, 0.0, 0.0, 1.0, 1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _creases_kernel(grid, valid, r, vx, vy, vz, inv_radius, min_count):  # pragma: no cover
    """The crease test in three passes over a summed-area table of the valid points.

    In numpy it took about forty full-grid passes (two window means, four shifted
    copies, cross products, norms), a quarter of the whole frame; compiled, every
    window is four table reads. Per pixel (v, u), with ``small`` the 3x3 mean (clipped
    at the border) and ``big`` the (2r+1)^2 mean of the valid points:
    the normal is ``(small[v, u+r] - small[v, u-r]) x (small[v+r, u] - small[v-r, u])``
    turned toward the viewpoint (NaN within r of the border or beside an empty 3x3
    window), and the concavity ``(big - small) . normal / crease_radius``, NaN where the
    big window holds ``min_count`` valid points or fewer. Sums are float64, so the
    table loses nothing over a frame.
    """
    h, w = valid.shape
    sat = np.zeros((h + 1, w + 1, 4))
    for v in range(h):
        a0 = a1 = a2 = a3 = 0.0
        for u in range(w):
            if valid[v, u]:
                a0 += grid[v, u, 0]
                a1 += grid[v, u, 1]
                a2 += grid[v, u, 2]
                a3 += 1.0
            sat[v + 1, u + 1, 0] = sat[v, u + 1, 0] + a0
            sat[v + 1, u + 1, 1] = sat[v, u + 1, 1] + a1
            sat[v + 1, u + 1, 2] = sat[v, u + 1, 2] + a2
            sat[v + 1, u + 1, 3] = sat[v, u + 1, 3] + a3
    small = np.empty((h, w, 3), dtype=np.float32)
    for v in range(h):
        v0, v1 = max(v - 1, 0), min(v + 2, h)
        for u in range(w):
            u0, u1 = max(u - 1, 0), min(u + 2, w)
            c = sat[v1, u1, 3] - sat[v0, u1, 3] - sat[v1, u0, 3] + sat[v0, u0, 3]
            for k in range(3):
                t = sat[v1, u1, k] - sat[v0, u1, k] - sat[v1, u0, k] + sat[v0, u0, k]
                small[v, u, k] = t / c if c > 0 else np.nan
    conc = np.full((h, w), np.nan, dtype=np.float32)
    normals = np.full((h, w, 3), np.nan, dtype=np.float32)
    for v in range(r, h - r):       # the normal needs r pixels on every side
        v0, v1 = v - r, v + r + 1
        for u in range(r, w - r):
            dx0 = small[v, u + r, 0] - small[v, u - r, 0]
            dx1 = small[v, u + r, 1] - small[v, u - r, 1]
            dx2 = small[v, u + r, 2] - small[v, u - r, 2]
            dy0 = small[v + r, u, 0] - small[v - r, u, 0]
            dy1 = small[v + r, u, 1] - small[v - r, u, 1]
            dy2 = small[v + r, u, 2] - small[v - r, u, 2]
            n0 = dx1 * dy2 - dx2 * dy1
            n1 = dx2 * dy0 - dx0 * dy2
            n2 = dx0 * dy1 - dx1 * dy0
            s0, s1, s2 = small[v, u, 0], small[v, u, 1], small[v, u, 2]
            f = 1.0 / np.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
            if (vx - s0) * n0 + (vy - s1) * n1 + (vz - s2) * n2 < 0:
                f = -f
            n0, n1, n2 = n0 * f, n1 * f, n2 * f
            normals[v, u, 0], normals[v, u, 1], normals[v, u, 2] = n0, n1, n2
            u0, u1 = u - r, u + r + 1
            c = sat[v1, u1, 3] - sat[v0, u1, 3] - sat[v1, u0, 3] + sat[v0, u0, 3]
            if c > min_count:
                b0 = (sat[v1, u1, 0] - sat[v0, u1, 0] - sat[v1, u0, 0] + sat[v0, u0, 0]) / c
                b1 = (sat[v1, u1, 1] - sat[v0, u1, 1] - sat[v1, u0, 1] + sat[v0, u0, 1]) / c
                b2 = (sat[v1, u1, 2] - sat[v0, u1, 2] - sat[v1, u0, 2] + sat[v0, u0, 2]) / c
                conc[v, u] = ((b0 - s0) * n0 + (b1 - s1) * n1 + (b2 - s2) * n2) * inv_radius
    return conc, normals


def _normal_turn(normals: np.ndarray, r_px: int, cos_max: float) -> np.ndarray:
    """Pixels where the surface normals r_px to either side differ by more than acos(cos_max)."""
    turn = np.zeros(normals.shape[:2], dtype=bool)
    with np.errstate(invalid='ignore'):
        for dv, du in ((0, r_px), (r_px, 0)):
            a = _shift(normals, dv, du, np.nan)
            b = _shift(normals, -dv, -du, np.nan)
            turn |= _dot3(a, b.transpose(2, 0, 1)) < cos_max
    return turn


def _colour_edges(colors: np.ndarray, valid: np.ndarray, r_px: int,
                  threshold: float) -> np.ndarray:
    """Pixels whose two sides (r_px away, across or along) differ in colour.

    Colours are 3x3 means of valid pixels in [0, 1] RGB, compared by Euclidean
    distance, on the same scale as the crease test so the two cues line up.
    """
    c, _ = _box_mean(colors.astype(np.float32) * np.float32(1 / 255), valid, 1)
    best = np.zeros(valid.shape, dtype=np.float32)
    for dv, du in ((0, r_px), (r_px, 0)):
        d = _norm3(_shift(c, dv, du, np.nan) - _shift(c, -dv, -du, np.nan))
        np.fmax(best, d, out=best)
    return best > threshold


def _focal_estimate(grid: np.ndarray, valid: np.ndarray) -> float:
    """Focal length in pixels of this grid, from neighbouring valid points (x/z steps)."""
    h, w = valid.shape
    rows = slice(h // 4, 3 * h // 4, max(1, h // 40))
    x, z = grid[rows, :, 0], grid[rows, :, 2]
    v = valid[rows]
    ok = v[:, 1:] & v[:, :-1]
    du = (x[:, 1:] / z[:, 1:] - x[:, :-1] / z[:, :-1])[ok]
    if du.size < 10:
        return 525.0
    step = float(np.median(np.abs(du)))
    return 1.0 / step if step > 0 else 525.0


def _upsample_labels(sub_labels: np.ndarray, points: np.ndarray, keep: np.ndarray,
                     h: int, w: int, s: int, tol: float) -> np.ndarray:
    """Full-resolution labels from a stride-s grid: the nearest labelled sub-pixel nearby.

    Only the kept (object candidate) pixels are visited.
    """
    full = np.full(h * w, -1, dtype=np.int32)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return full
    sh, sw = sub_labels.shape
    v, u = idx // w, idx % w
    p = np.take(points, idx, axis=0)
    # the gap allowed grows with range, as in the grid cuts
    thr = tol * np.maximum(np.sqrt((p * p).sum(axis=1)), 0.5)
    best = np.full(idx.size, np.inf, dtype=np.float32)
    sub_pts = points.reshape(h, w, 3)[::s, ::s]
    for ov in (0, 1):
        for ou in (0, 1):
            iv = np.minimum(v // s + ov, sh - 1)
            iu = np.minimum(u // s + ou, sw - 1)
            lab = sub_labels[iv, iu]
            d = _norm3(p - sub_pts[iv, iu])
            with np.errstate(invalid='ignore'):
                ok = (lab >= 0) & (d < best) & (d <= thr)
            full[idx[ok]] = lab[ok]
            best[ok] = d[ok]
    return full
