# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Objects lying on objects, thin flat ones, and touching boxes told apart by colour.

Dense clutter merges objects wherever nothing in the depth separates them. The
crease cut separates an object standing on another (they meet in a valley);
where the valley is too shallow for geometry alone but the print changes across
it, the colour cut does (mOSD learn25: a cereal box lying across a white box).
"""

import numpy as np
import pytest

from p3d_perception.cloud import read_pcd
from p3d_perception.segmentation import (
    SegmentationConfig, Segmenter, match_instances, mosd_ground_truth)
from p3d_perception.training.synthetic.camera import orbit_pose
from p3d_perception.training.synthetic.catalogue import box, cylinder
from p3d_perception.training.synthetic.scene import arranged_scene, render, solid, yaw_pose


def _stack_scene():
    """A book flat on the table with a box standing on it; a flat box on a big box.

    The upper box lies inside the lower one's top: where it overhangs, its
    bottom edge over the lower box's side is convex and nothing cuts it (README).
    """
    objs = [
        (solid([box(0.24, 0.17, 0.035)], (30, 40, 120), 'book'), yaw_pose(-0.2, 0.0, 0, 0.3)),
        (solid([box(0.10, 0.07, 0.16)], (230, 200, 40), 'box'),
         yaw_pose(-0.2, 0.0, 0.035, 0.9)),
        (solid([box(0.26, 0.18, 0.10)], (200, 200, 200), 'box'), yaw_pose(0.18, 0.02, 0, -0.2)),
        (solid([box(0.15, 0.10, 0.05)], (200, 40, 40), 'box'),
         yaw_pose(0.17, 0.03, 0.10, 0.1)),
        (solid([cylinder(0.035, 0.11)], (60, 150, 60), 'can'), yaw_pose(0.0, -0.2, 0, 0)),
    ]
    return arranged_scene(objs, table_size=(1.4, 0.9))


@pytest.mark.parametrize('elevation,azimuth', [(45.0, -90.0), (60.0, -60.0)])
def test_stacked_and_lying_objects_are_their_own_clusters(elevation, azimuth):
    scene = _stack_scene()
    pose = orbit_pose(np.array([0.0, 0.0, 0.05]), 1.0, elevation, azimuth)
    frame = render(scene, 'kinect', np.random.default_rng(1), pose=pose)
    from p3d_perception.cloud import Cloud
    seg = Segmenter()(Cloud(frame.points, frame.colors, frame.height, frame.width))
    gt = np.where(frame.instance > 0, frame.instance, -1)
    m = match_instances(seg.labels, gt)
    assert m['matched'] == m['objects'] == 5, m['best_iou']
    assert m['under_segmented'] == 0


def test_colour_change_across_a_shallow_valley_splits_touching_boxes(mosd_dir):
    cloud = read_pcd(mosd_dir / 'learn25.pcd')
    gt, _ = mosd_ground_truth(cloud.fields['label'])
    with_colour = match_instances(
        Segmenter(SegmentationConfig(colour_cut=True))(cloud).labels, gt)
    assert with_colour['matched'] == with_colour['objects'] == 2
    # without the neck cut (below), depth alone leaves the two boxes joined
    depth_only = match_instances(
        Segmenter(SegmentationConfig(colour_cut=False, neck_px=0))(cloud).labels, gt)
    assert depth_only['matched'] < 2 and depth_only['under_segmented'] == 1
    # xyz-only clouds take the depth-only path
    from p3d_perception.cloud import Cloud
    bare = Cloud(cloud.points, None, cloud.height, cloud.width)
    assert np.array_equal(Segmenter(SegmentationConfig(colour_cut=True))(bare).labels >= 0,
                          Segmenter(SegmentationConfig(colour_cut=False))(cloud).labels >= 0)


def _behind_scene(gap: float):
    """A long box lying behind a tall can that hides its middle from the camera.

    With ``gap`` > 0 the long box is two boxes of the same height ``gap`` apart
    (the can hides some of the gap, the table shows through the rest).
    """
    half = (0.30 - gap) / 2
    if gap:
        back = [(solid([box(half, 0.08, 0.07)], (200, 60, 60), 'box'),
                 yaw_pose(-(gap + half) / 2, 0.12, 0, 0.0)),
                (solid([box(half, 0.08, 0.07)], (200, 60, 60), 'box'),
                 yaw_pose((gap + half) / 2, 0.12, 0, 0.0))]
    else:
        back = [(solid([box(0.30, 0.08, 0.07)], (200, 60, 60), 'box'),
                 yaw_pose(0.0, 0.12, 0, 0.0))]
    front = (solid([cylinder(0.04, 0.20)], (230, 190, 40), 'can'), yaw_pose(0.0, 0.0, 0, 0))
    return arranged_scene(back + [front], table_size=(1.4, 0.9))


@pytest.mark.parametrize('gap', [0.0, 0.12])
def test_an_object_split_by_one_in_front_of_it_is_one_cluster(gap):
    from p3d_perception.cloud import Cloud
    scene = _behind_scene(gap)
    pose = orbit_pose(np.array([0.0, 0.05, 0.05]), 0.9, 30.0, -90.0)
    frame = render(scene, 'kinect', np.random.default_rng(2), pose=pose)
    cloud = Cloud(frame.points, frame.colors, frame.height, frame.width)
    gt = np.where(frame.instance > 0, frame.instance, -1)
    seg = match_instances(Segmenter()(cloud).labels, gt)
    split = match_instances(Segmenter(SegmentationConfig(merge_occluded=False))(cloud).labels,
                            gt)
    assert seg['matched'] == seg['objects'] == (2 if gap == 0 else 3), seg['best_iou']
    if gap == 0:
        # the can hides the box's middle: without the occlusion merge it is two pieces
        assert split['matched'] < split['objects'], split['best_iou']


def test_boxes_split_by_a_can_in_front_of_them_rejoin_on_real_scans(mosd_dir):
    for scene in ('learn28', 'learn31'):
        cloud = read_pcd(mosd_dir / f'{scene}.pcd')
        gt, _ = mosd_ground_truth(cloud.fields['label'])
        m = match_instances(Segmenter()(cloud).labels, gt)
        assert m['matched'] == m['objects'] == 2, (scene, m['best_iou'])
        off = match_instances(
            Segmenter(SegmentationConfig(merge_occluded=False))(cloud).labels, gt)
        assert off['matched'] == 1 and off['over_segmented'] == 1, (scene, off['best_iou'])


def test_a_crease_line_goes_on_across_missing_depth_between_stacked_boxes(mosd_dir):
    """learn23/24: the seam between the stacked boxes has a patch of missing depth.

    The crease test is undecided next to it and the two boxes leaked into one
    through there; the hole cut closes the line, and keeps every box whole.
    """
    for scene in ('learn23', 'learn24'):
        cloud = read_pcd(mosd_dir / f'{scene}.pcd')
        gt, _ = mosd_ground_truth(cloud.fields['label'])
        m = match_instances(Segmenter()(cloud).labels, gt)
        assert m['matched'] == m['objects'] == 3, (scene, m['best_iou'])
        assert m['over_segmented'] == 0
        # the neck cut (below) rescues learn24 on its own, so both are off here
        off = match_instances(
            Segmenter(SegmentationConfig(hole_cut=False, neck_px=0))(cloud).labels, gt)
        assert off['matched'] == 2 and off['under_segmented'] == 1, (scene, off['best_iou'])


def test_boxes_joined_only_by_a_narrow_corridor_between_cuts_part_there(mosd_dir):
    """learn25: where two boxes touch along a shallow valley the cut lines leave a gap.

    Each box is object-sized and thicker than the corridor left between the cut
    lines, so they part there, without colour. learn21 (a box's convex corner under
    an overhanging box) needs a corridor of 4 px and the crease lines carried to the
    outline (neck_px 2, crease_reach 1), which also breaks synthetic pitchers and
    teapots at their handles (README).
    """
    cloud = read_pcd(mosd_dir / 'learn25.pcd')
    gt, _ = mosd_ground_truth(cloud.fields['label'])
    m = match_instances(Segmenter()(cloud).labels, gt)
    assert m['matched'] == m['objects'] == 2, m['best_iou']
    assert m['over_segmented'] == 0
    off = match_instances(Segmenter(SegmentationConfig(neck_px=0))(cloud).labels, gt)
    assert off['under_segmented'] == 1, off['best_iou']
    wide = match_instances(
        Segmenter(SegmentationConfig(neck_px=2, crease_reach=1))(
            read_pcd(mosd_dir / 'learn21.pcd')).labels,
        mosd_ground_truth(read_pcd(mosd_dir / 'learn21.pcd').fields['label'])[0])
    assert wide['matched'] == wide['objects'] == 3, wide['best_iou']
