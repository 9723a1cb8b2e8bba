# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Unorganised clouds from one camera get the grid path back; merged views do not.

Drivers and filters often hand over a depth camera's cloud without its grid
(NaNs dropped, points shuffled, mOSD test56/test58). Projected through a
virtual pinhole at the viewpoint it segments like the organised frame; a cloud
made of two views is not an image and must keep the voxel path.
"""

import numpy as np

from p3d_perception.cloud import Cloud, read_pcd
from p3d_perception.segmentation import Segmenter, match_instances, mosd_ground_truth
from p3d_perception.segmentation.projection import project_single_view


def test_shuffled_scan_segments_like_the_organised_one(mosd_dir):
    cloud = read_pcd(mosd_dir.parent / 'mosd_clutter' / 'test62.pcd')
    gt, _ = mosd_ground_truth(cloud.fields['label'])
    organised = match_instances(Segmenter()(cloud).labels, gt)
    perm = np.random.default_rng(0).permutation(len(cloud))
    shuffled = Cloud(cloud.points[perm], cloud.colors[perm], 1, len(cloud))
    seg = Segmenter()(shuffled)
    assert 'project' in seg.timings_ms and 'cuts' in seg.timings_ms   # the grid path ran
    m = match_instances(seg.labels, gt[perm])
    assert m['matched'] >= organised['matched'] - 1 and m['matched'] >= 11


def test_unorganised_real_scan_is_projected(mosd_dir):
    cloud = read_pcd(mosd_dir.parent / 'mosd_clutter' / 'test58.pcd')
    assert not cloud.is_organized
    view = project_single_view(cloud.points, cloud.valid, (0.0, 0.0, 0.0))
    assert view is not None
    # Kinect's own lattice (f = 525 px) comes back within 15 %
    assert 0.85 < view.width / (525 * np.ptp(cloud.points[:, 0] / cloud.points[:, 2])) < 1.15
    gt, _ = mosd_ground_truth(cloud.fields['label'])
    assert match_instances(Segmenter()(cloud).labels, gt)['matched'] >= 11   # voxels: 9


def test_two_views_merged_keep_the_voxel_path():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-1, 1, (40000, 2)), np.zeros(40000)]
    box = rng.uniform(-0.05, 0.05, (6000, 3)) + [0, 0, 0.06]
    pts = np.vstack([plane, box]).astype(np.float32)
    # seen from above and from below the table: points lie on both sides of the sensor
    view = project_single_view(np.vstack([pts + [0, 0, -1.0], pts + [0, 0, 1.0]]),
                               np.ones(2 * len(pts), bool), (0.0, 0.0, 0.0))
    assert view is None


def test_virtual_image_bookkeeping_is_consistent(mosd_dir):
    # every pixel's owner lies in that pixel, every projected point's pixel shows a
    # point, and the crop to the focus points keeps all of them
    cloud = read_pcd(mosd_dir / 'learn1.pcd')
    perm = np.random.default_rng(1).permutation(len(cloud))
    pts, valid = cloud.points[perm], cloud.valid[perm]
    focus = valid & (np.arange(len(pts)) % 7 == 0) & (pts[:, 0] > np.nanmedian(pts[:, 0]))
    for f in (None, focus):
        view = project_single_view(pts, valid, (0.0, 0.0, 0.0), focus=f)
        assert view is not None
        owner, pixel = view.owner, view.pixel
        shown = np.flatnonzero(owner >= 0)
        assert len(shown) > 0.5 * (view.height * view.width)
        np.testing.assert_array_equal(pixel[owner[shown]], shown)
        projected = np.flatnonzero(pixel >= 0)
        assert valid[projected].all() and (owner[pixel[projected]] >= 0).all()
        grid = view.grid.reshape(-1, 3)
        assert np.isfinite(grid[shown]).all() and np.isnan(grid[owner < 0]).all()
        # the virtual camera keeps each owner's range from the sensor
        np.testing.assert_allclose(np.linalg.norm(grid[shown], axis=1),
                                   np.linalg.norm(pts[owner[shown]], axis=1), rtol=1e-5)
        if f is None:
            assert len(projected) == valid.sum()
        else:
            assert (pixel[np.flatnonzero(f)] >= 0).all()
            assert len(projected) < valid.sum()
