# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The synthetic world must look like a tabletop to the models trained on it.

These tests pin what training, the demo and segmentation rely on: a broad,
distinguishable object catalogue of watertight metric meshes; scenes whose
objects never interpenetrate; a camera whose noise grows with depth like a
real one; partial single-object views; determinism for a seed.
"""

import numpy as np
import open3d as o3d
import pytest

from p3d_perception.training import synthetic as syn
from p3d_perception.training.synthetic import (
    CAMERA_PRESETS, CATEGORIES, generate_object_views, generate_scene, load_object_views,
    make_object, render, save_object_views)
from p3d_perception.training.synthetic.camera import look_at

SMALL = CAMERA_PRESETS['d435'].replace(width=320, height=240, fx=191.5, fy=191.5, cx=160.0,
                                       cy=120.0)


def test_catalogue_is_broad_with_semantic_neighbours():
    assert len(CATEGORIES) >= 32
    assert len(set(CATEGORIES)) == len(CATEGORIES)
    for name in CATEGORIES:
        assert name == name.strip().lower() and name.replace(' ', '').isalpha(), name
    for a, b in [('mug', 'cup'), ('bowl', 'plate'), ('can', 'bottle'), ('apple', 'orange'),
                 ('teapot', 'kettle'), ('saucepan', 'frying pan')]:
        assert a in CATEGORIES and b in CATEGORIES


@pytest.mark.parametrize('category', CATEGORIES)
def test_meshes_are_watertight_metric_and_resting(category):
    for seed in (0, 1):
        obj = make_object(category, np.random.default_rng(seed))
        assert obj.category == category
        mesh = obj.mesh
        assert isinstance(mesh, o3d.geometry.TriangleMesh)
        assert mesh.is_watertight(), f'{category} seed {seed} is not watertight'
        v = obj.vertices
        size = obj.size
        assert 0.02 <= size.max() <= 0.6, f'{category}: size {size} m is not tabletop-sized'
        assert abs(v[:, 2].min()) < 1e-9, 'must rest on z = 0'
        lo, hi = v[:, :2].min(0), v[:, :2].max(0)
        assert np.allclose(lo + hi, 0.0, atol=1e-9), 'must be centred in xy'
        assert obj.vertex_colors.dtype == np.uint8 and len(obj.vertex_colors) == len(v)
        # closed surfaces enclose positive volume (outward normals)
        a, b, c = (v[obj.triangles[:, k]] for k in range(3))
        assert np.einsum('ij,ij->i', a, np.cross(b, c)).sum() / 6 > 0


# metres: (height lo, hi), (largest extent lo, hi) of the objects real tabletop scans show
# (a tissue box's height includes the tissue standing out of it)
REAL_SIZES = {
    'cereal box': ((0.25, 0.36), (0.25, 0.36)), 'tissue box': ((0.07, 0.19), (0.11, 0.26)),
    'book': ((0.02, 0.06), (0.19, 0.29)), 'can': ((0.10, 0.16), (0.10, 0.16)),
    'jar': ((0.09, 0.17), (0.09, 0.17)), 'mug': ((0.08, 0.115), (0.10, 0.15)),
    'cup': ((0.08, 0.14), (0.08, 0.14)), 'bowl': ((0.045, 0.08), (0.13, 0.22)),
    'plate': ((0.016, 0.03), (0.18, 0.28)), 'bottle': ((0.18, 0.32), (0.18, 0.32)),
    'tin': ((0.045, 0.26), (0.09, 0.27)), 'drink carton': ((0.10, 0.28), (0.10, 0.28)),
    'snack box': ((0.03, 0.18), (0.10, 0.30)), 'tea box': ((0.055, 0.13), (0.065, 0.135)),
}


@pytest.mark.parametrize('category', sorted(REAL_SIZES))
def test_real_tabletop_categories_have_real_sizes(category):
    (h_lo, h_hi), (m_lo, m_hi) = REAL_SIZES[category]
    sizes = np.array([make_object(category, np.random.default_rng(k)).size for k in range(40)])
    tol = 0.005
    assert sizes[:, 2].min() >= h_lo - tol and sizes[:, 2].max() <= h_hi + tol, sizes[:, 2]
    assert sizes.max(1).min() >= m_lo - tol and sizes.max(1).max() <= m_hi + tol
    assert np.ptp(sizes.max(1)) > 0.1 * m_lo          # instances differ in size


def test_instances_vary_and_are_deterministic():
    for category in ('mug', 'bottle', 'shoe'):
        a = make_object(category, np.random.default_rng(5))
        b = make_object(category, np.random.default_rng(5))
        c = make_object(category, np.random.default_rng(6))
        assert np.array_equal(a.vertices, b.vertices)
        assert np.array_equal(a.vertex_colors, b.vertex_colors)
        assert not np.allclose(a.size, c.size, rtol=0.02)
    with pytest.raises(ValueError, match='unknown category'):
        make_object('spaceship', np.random.default_rng(0))


def _features(points):
    """Shape statistics a depth camera sees regardless of viewpoint."""
    z = points[:, 2]
    xy = points[:, :2] - points[:, :2].mean(0)
    ev = np.sort(np.linalg.eigvalsh(np.cov(xy.T)))[::-1]
    height = np.percentile(z, 98) - np.percentile(z, 2)
    return np.log([height + 1e-3, np.sqrt(ev[0]) + 1e-3, np.sqrt(ev[1]) + 1e-3])


def test_categories_are_distinguishable_from_views():
    cats = ['plate', 'bottle', 'cereal box', 'banana', 'laptop', 'ball']
    views = generate_object_views(cats, 12, seed=11)
    feats = np.array([_features(views.view(i)[0]) for i in range(len(views))])
    labels = views.labels
    centroids = np.array([feats[labels == k].mean(0) for k in range(len(cats))])
    within = np.mean([np.linalg.norm(feats[labels == k] - centroids[k], axis=1).mean()
                      for k in range(len(cats))])
    between = np.mean([np.linalg.norm(centroids[i] - centroids[j])
                       for i in range(len(cats)) for j in range(i + 1, len(cats))])
    assert between > 2.0 * within, (between, within)
    # leave-one-out nearest centroid on three numbers already separates them well
    correct = 0
    for i in range(len(feats)):
        m = labels == labels[i]
        cents = centroids.copy()
        cents[labels[i]] = (feats[m].sum(0) - feats[i]) / (m.sum() - 1)
        correct += int(np.argmin(np.linalg.norm(cents - feats[i], axis=1)) == labels[i])
    assert correct / len(feats) >= 0.75


def test_object_views_contract_and_determinism(tmp_path):
    cats = ['mug', 'bowl', 'drill']
    v1 = generate_object_views(cats, 5, seed=3)
    v2 = generate_object_views(cats, 5, seed=3)
    v3 = generate_object_views(cats, 5, seed=4)
    assert len(v1) == 15 and v1.categories == tuple(cats)
    assert np.array_equal(v1.points, v2.points) and np.array_equal(v1.colors, v2.colors)
    assert not np.array_equal(v1.instance_seed, v3.instance_seed)
    assert v1.points.dtype == np.float32 and v1.colors.dtype == np.uint8
    assert v1.offsets.dtype == np.int64 and v1.offsets[-1] == len(v1.points)
    assert np.bincount(v1.labels).tolist() == [5, 5, 5]
    counts = v1.counts
    assert counts.min() >= 48 and len(set(counts.tolist())) > 5   # own sizes
    assert np.isfinite(v1.points).all()
    for i in range(len(v1)):
        p, c, label = v1.view(i)
        size = make_object(cats[label], np.random.default_rng(v1.instance_seed[i])).size
        # gravity frame: above the table, within the object's height (+ noise)
        assert np.percentile(p[:, 2], 5) > -0.01
        assert np.percentile(p[:, 2], 95) < size[2] + 0.03
        # a partial view: never much more than the object's extent
        ext = np.percentile(p, 98, axis=0) - np.percentile(p, 2, axis=0)
        assert ext[:2].max() < np.linalg.norm(size[:2]) + 0.05
    # n_points caps every view
    capped = generate_object_views(['cereal box'], 3, seed=3, n_points=100)
    assert capped.counts.max() <= 100
    # save / load round trip, no pickles
    path = save_object_views(tmp_path / 'v.npz', v1)
    back = load_object_views(path)
    assert back.categories == v1.categories
    for name in ('points', 'colors', 'offsets', 'labels', 'instance_seed'):
        assert np.array_equal(getattr(back, name), getattr(v1, name)), name
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    sub = v1.subset([0, 7, 14])
    assert len(sub) == 3 and np.array_equal(sub.view(1)[0], v1.view(7)[0])


def test_object_views_bad_input(tmp_path):
    with pytest.raises(ValueError, match='unknown categories'):
        generate_object_views(['mug', 'warp drive'], 2, 0)
    with pytest.raises(ValueError, match='views_per_category'):
        generate_object_views(['mug'], 0, 0)
    with pytest.raises(ValueError, match='unknown camera'):
        generate_object_views(['mug'], 1, 0, camera='hololens')
    bad = tmp_path / 'bad.npz'
    bad.write_bytes(b'not a zip file at all')
    with pytest.raises(ValueError, match='cannot read'):
        load_object_views(bad)
    other = tmp_path / 'other.npz'
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match='not an object-views file'):
        load_object_views(other)
    with pytest.raises(FileNotFoundError):
        load_object_views(tmp_path / 'missing.npz')


def _signed_distance(mesh_v, mesh_t, query):
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(mesh_v.astype(np.float32)),
                     o3d.core.Tensor(mesh_t.astype(np.uint32)))
    return rc.compute_signed_distance(o3d.core.Tensor(query.astype(np.float32))).numpy()


STACKING = ('book', 'plate', 'basket', 'apple', 'orange', 'mug', 'can', 'remote control')


@pytest.mark.parametrize('categories', [None, STACKING])
def test_scenes_do_not_interpenetrate_and_have_contacts(categories):
    touching = stacked = 0
    for seed in range(5):
        scene = generate_scene(seed, n_objects=(6, 10), categories=categories)
        objs = scene.objects
        assert 1 <= len(objs) and [o.id for o in objs] == list(range(1, len(objs) + 1))
        world = [o.mesh.transformed(o.pose) for o in objs]
        for i, a in enumerate(objs):
            # inside the table top and resting on it or on its support
            assert world[i][:, 2].min() >= -1e-6
            for j, b in enumerate(objs):
                if i == j:
                    continue
                d = _signed_distance(world[j], b.mesh.triangles, world[i])
                assert d.min() > -1e-4, f'seed {seed}: {a.category} inside {b.category}'
                if j > i and d.min() < 0.006:
                    touching += 1
            stacked += int(a.support != 0)
    assert touching >= 2, 'clutter scenes should have objects that touch'
    if categories is not None:     # with things to stand on, some objects stand on them
        assert stacked >= 2, 'clutter scenes should sometimes stack objects'


def test_render_contract_and_determinism():
    scene = generate_scene(2, n_objects=(4, 6))
    f = render(scene, SMALL, 7)
    H, W = 240, 320
    assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
    assert f.points.shape == (H * W, 3) and f.points.dtype == np.float32
    assert f.colors.shape == (H * W, 3) and f.colors.dtype == np.uint8
    assert f.instance.shape == (H * W,) and f.instance.dtype == np.int32
    missing = f.depth.reshape(-1) == 0
    assert np.isnan(f.points[missing]).all() and np.isfinite(f.points[~missing]).all()
    assert np.allclose(f.points[~missing, 2], f.depth.reshape(-1)[~missing])
    assert 0.3 < (~missing).mean() < 1.0
    assert f.frame_id == 'camera_depth_optical_frame'
    assert np.allclose(f.K, [[191.5, 0, 160], [0, 191.5, 120], [0, 0, 1]])
    ids = {o['id'] for o in f.objects}
    assert set(np.unique(f.instance)) - {0} <= ids
    # instance points lie inside their object's box (object frame), up to noise
    for o in f.objects:
        m = (f.instance == o['id']) & ~missing
        if m.sum() < 50:
            continue
        inv = np.linalg.inv(o['pose'])
        p = f.points[m] @ inv[:3, :3].T + inv[:3, 3]
        half = o['size'] / 2 + 0.03
        inside = (np.abs(p[:, 0]) < half[0]) & (np.abs(p[:, 1]) < half[1]) \
            & (p[:, 2] > -0.03) & (p[:, 2] < o['size'][2] + 0.03)
        assert inside.mean() > 0.9, o['category']
    # the table plane in the camera frame matches T_camera_table
    # background points lie on the table top or the floor (T_camera_table is right)
    tab = (f.instance == 0) & ~missing
    pt = f.points[tab] @ f.T_table_camera[:3, :3].T + f.T_table_camera[:3, 3]
    tol = 0.01 + 3 * SMALL.depth_sigma(f.points[tab, 2])
    on = (np.abs(pt[:, 2]) < tol) | (np.abs(pt[:, 2] - scene.floor_z) < tol)
    assert on.mean() > 0.9 and (np.abs(pt[:, 2]) < 0.02).sum() > 1000
    g = render(scene, SMALL, 7)
    assert np.array_equal(f.depth, g.depth) and np.array_equal(f.colors, g.colors)
    h = render(scene, SMALL, 8)
    assert not np.array_equal(f.depth, h.depth)


def test_render_shortcut_sees_what_casting_every_ray_sees(monkeypatch):
    """Table top and floor are hit analytically; nothing may change by it."""
    from p3d_perception.training.synthetic import scene as scene_mod
    from p3d_perception.training.synthetic.camera import orbit_pose
    rng = np.random.default_rng(0)
    for seed, support in ((3, 'table'), (4, 'floor')):
        scene = generate_scene(seed, n_objects=(6, 10), support=support)
        poses = [orbit_pose(scene.centre(), rng.uniform(0.4, 2.5), rng.uniform(5, 85),
                            rng.uniform(0, 360), rng.normal(0, 10)) for _ in range(4)]
        poses.append(look_at([1.2, -0.9, 0.05], [0.0, 0.0, -0.2]))   # low, under the rim
        for pose in poses:
            fast = render(scene, SMALL, 1, pose=pose, noise=False)
            with monkeypatch.context() as m:
                m.setattr(scene_mod, '_part_pixels', lambda *a: False)   # cast every ray
                full = render(scene, SMALL, 1, pose=pose, noise=False)
            assert np.array_equal(fast.instance, full.instance)
            dc = np.abs(fast.colors.astype(int) - full.colors)     # light: cos to 1e-7
            assert dc.max() <= 1 and (dc > 0).mean() < 1e-3
            assert np.abs(fast.depth - full.depth).max() <= 0.0011   # 1 mm rounding
            assert (fast.depth != full.depth).mean() < 1e-3


@pytest.mark.parametrize('camera', sorted(CAMERA_PRESETS))
def test_depth_noise_grows_with_distance(camera):
    cam = CAMERA_PRESETS[camera]
    cam = cam.replace(width=cam.width // 2, height=cam.height // 2, fx=cam.fx / 2,
                      fy=cam.fy / 2, cx=cam.cx / 2, cy=cam.cy / 2)
    scene = generate_scene(0, n_objects=0, support='floor')
    sig = []
    for height in (0.7, 1.4, 2.8):
        pose = look_at([0.0, -0.3, height], [0.0, 0.0, 0.0])
        clean = render(scene, cam, 0, pose=pose, noise=False, colour=False).depth
        noisy = render(scene, cam, 0, pose=pose, colour=False).depth
        ok = (clean > 0) & (noisy > 0)
        r = (noisy - clean)[ok]
        sig.append(1.4826 * np.median(np.abs(r - np.median(r))))   # robust std
        assert ok.mean() > 0.8
    assert sig[0] < sig[1] < sig[2], sig
    assert sig[2] > 2.0 * sig[0], sig
    assert sig[0] < 0.01


def test_sensor_model_drops_grazing_and_edges():
    from p3d_perception.training.synthetic.camera import apply_depth_model
    cam = CAMERA_PRESETS['d435']
    rng = np.random.default_rng(0)
    z = np.full((100, 100), 1.0, np.float32)
    z[:, 50:] = 2.0                      # a depth step
    cos = np.ones_like(z)
    cos[:50, :50] = 0.02                 # ~89 deg: grazing
    d = apply_depth_model(cam, z, cos, rng)
    assert (d[:50, :50] == 0).mean() > 0.95
    assert (d[50:, :40] == 0).mean() < 0.02
    far_edge = d[50:, 50]                # background side of the step
    assert (far_edge == 0).mean() > 0.15
    fly = far_edge[(far_edge > 1.1) & (far_edge < 1.9)]
    assert len(fly) > 0, 'flying pixels between foreground and background'


def test_public_api_names():
    for name in ('CATEGORIES', 'make_object', 'generate_scene', 'CAMERA_PRESETS', 'render',
                 'generate_object_views', 'ObjectViews', 'save_object_views',
                 'load_object_views', '__version__'):
        assert hasattr(syn, name), name
    for name in ('d435', 'kinect', 'azure_kinect'):
        c = CAMERA_PRESETS[name]
        assert c.width >= 640 and c.height >= 480 and c.fx > 300
