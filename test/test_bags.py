# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d bags extract|label`` on real generated rosbag2 files with a real (tiny) model."""

import collections
import contextlib
import csv
import io
import json
from pathlib import Path
import shutil

import numpy as np
import pytest

from p3d_perception import bagio
from p3d_perception.cli import main
from p3d_perception.commands.synth import make_scene_frames
from p3d_perception.training import bags as B

pytestmark = pytest.mark.slow

MODEL = Path(__file__).resolve().parents[1] / 'models' / 'p3d_minilm_small'
EASY = ('mug', 'bottle', 'can', 'cereal box', 'ball', 'apple', 'vase', 'teapot', 'kettle',
        'jar', 'flower pot', 'tissue box')
VOCAB = ['mug', 'bottle', 'can', 'box', 'ball', 'apple', 'vase', 'teapot']


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue()


@pytest.fixture(scope='module')
def tiny_model_dir(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp('model') / 'tiny', vocabulary=VOCAB,
                           command='test_bags fixture')


@pytest.fixture(scope='module')
def bags_dir(tmp_path_factory):
    """A good moving-camera bag (2 scenes x 6 frames), a truncated copy, a garbage folder."""
    d = tmp_path_factory.mktemp('bags')
    frames, ids = make_scene_frames(2, 6, 11, 'd435', categories=EASY, n_objects=(3, 4),
                                    clutter=False)
    good = bagio.write_scene_bag(d / 'good', frames, scene_ids=ids)
    cut = d / 'cut'
    shutil.copytree(good, cut)
    mcap = next(cut.glob('*.mcap'))
    with open(mcap, 'r+b') as fh:
        fh.truncate(mcap.stat().st_size // 2)
    junk = d / 'junk'
    junk.mkdir()
    (junk / 'metadata.yaml').write_text('this: [is not, a rosbag2\n')
    (junk / 'junk_0.mcap').write_bytes(np.random.default_rng(0).bytes(4096))
    return d


@pytest.fixture(scope='module')
def extracted(bags_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('ds') / 'dataset'
    rc, text = run('bags', 'extract', bags_dir / 'good', bags_dir / 'cut', bags_dir / 'junk',
                   '--out', out, '--every', 1, '--model', tiny_model_dir, '--device', 'cpu',
                   '--quiet')
    assert rc == 0, text
    return out, text


def _csv(path):
    with open(path, newline='') as fh:
        r = csv.reader(fh)
        return next(r), list(r)


def test_files_and_columns_are_the_contract(extracted):
    out, _ = extracted
    head, rows = _csv(out / 'clusters.csv')
    assert tuple(head) == B.CLUSTER_COLUMNS == (
        'cluster_id', 'group_id', 'bag', 'topic', 'frame_index', 'stamp_ns', 'frame_id',
        'center_x', 'center_y', 'center_z', 'size_x', 'size_y', 'size_z', 'point_count',
        'proposed_label', 'proposed_score', 'gt_label', 'gt_iou')
    head_l, groups = _csv(out / 'labels.csv')
    assert head_l == ['group_id', 'label', 'proposed_label', 'proposed_score', 'clusters',
                      'frames', 'first_cluster']
    assert all(g[1] == '' for g in groups)          # nothing labelled by default
    with np.load(out / 'clusters.npz', allow_pickle=False) as z:
        c = len(rows)
        assert z['points'].dtype == np.float32 and z['points'].shape[1] == 3
        assert z['colors'].dtype == np.float32 and z['colors'].shape == z['points'].shape
        assert 0.0 <= z['colors'].min() and z['colors'].max() <= 1.0
        assert z['colors'].max() > 0.1                # the synthetic bag has colour
        assert z['has_color'].dtype == bool and z['has_color'].shape == (c,)
        off = z['offsets']
        assert off.dtype == np.int64 and off.shape == (c + 1,) and off[-1] == len(z['points'])
        assert np.array_equal(np.diff(off), [int(r[13]) for r in rows])
        assert z['embeddings'].dtype == np.float32 and z['embeddings'].shape[0] == c
        assert z['thumbnails'].dtype == np.uint8 and z['thumbnails'].shape == (c, 64, 64, 3)
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    meta = json.loads((out / 'dataset.json').read_text())
    assert meta['format_version'] == 1 and meta['every'] == 1
    assert meta['vocabulary'] == VOCAB and meta['text_space'] == 'minilm'
    assert meta['counts']['clusters'] == len(rows) and meta['counts']['groups'] == len(groups)
    # 12 clouds of the good bag and the complete ones of the bag cut in half
    assert meta['counts']['clouds_read'] == meta['bag_report']['per_topic'][bagio.CLOUD_TOPIC]
    assert 12 < meta['counts']['clouds_read'] < 24
    assert meta['command'].startswith('p3d bags extract')


def test_extraction_finds_the_ground_truth_objects(extracted, bags_dir):
    """Most visible objects get a cluster with IoU >= 0.5; the stored points are those pixels."""
    out, _ = extracted
    ds = B.load_dataset(out)
    truth = bagio.read_ground_truth(bags_dir / 'good', instances=True)
    assert len(truth) == 12
    hits = collections.Counter()
    for r in ds.rows:
        if r['gt_iou'] is not None and r['gt_iou'] >= 0.5:
            hits[(r['frame_index'], r['gt_label'])] += 1
    visible = matched = 0
    for k, gt in enumerate(truth):
        inst = gt['instance'].reshape(-1)
        want = collections.Counter(o['category'] for o in gt['objects']
                                   if (inst == o['id']).sum() >= 300)
        visible += sum(want.values())
        matched += sum(min(n, hits[(k, cat)]) for cat, n in want.items())
    assert visible >= 30
    assert matched >= 0.7 * visible, f'{matched}/{visible} objects found'
    # independent check of storage and gt columns: project a matched cluster's points
    # through the camera and find its ground-truth category under most of them
    K = np.array([[383.0, 0, 320.5], [0, 383.0, 240.0], [0, 0, 1]])
    checked = 0
    for i, r in enumerate(ds.rows):
        if r['gt_iou'] is None or r['gt_iou'] < 0.5:
            continue
        gt = truth[r['frame_index']]
        p = ds.points[i].astype(np.float64)
        uv = np.rint((p @ K.T)[:, :2] / p[:, 2:3]).astype(int)
        ids = gt['instance'][uv[:, 1], uv[:, 0]]
        cats = {o['id']: o['category'] for o in gt['objects']}
        top = collections.Counter(ids.tolist()).most_common(1)[0][0]
        assert cats[top] == r['gt_label']
        assert abs(np.mean(p[:, 0]) - r['center_x']) < 0.1
        checked += 1
    assert checked >= 20


def test_clusters_of_one_object_share_a_group(extracted):
    out, _ = extracted
    ds = B.load_dataset(out)
    meta = ds.meta
    assert meta['fixed_frame'] == 'table'
    info = meta['grouping']['per_bag'][str(Path(meta['bags'][0]))]
    assert info['from_tf'] and info['clouds_without_tf'] == 0
    by_group = collections.defaultdict(list)
    for r in ds.rows:
        by_group[r['group_id']].append(r)
    assert len(by_group) <= len(ds.rows) / 3, (len(by_group), len(ds.rows))
    pure = sum(collections.Counter(r['gt_label'] for r in g).most_common(1)[0][1]
               for g in by_group.values())
    assert pure >= 0.9 * len(ds.rows)
    # a group never spans both scenes, and has at most one cluster per frame
    for g in by_group.values():
        assert len({r['frame_index'] // 6 for r in g}) == 1
        assert len({r['frame_index'] for r in g}) == len(g)
    _, groups = _csv(out / 'labels.csv')
    assert sorted(int(g[0]) for g in groups) == sorted(by_group)
    for g in groups:
        assert int(g[4]) == len(by_group[int(g[0])]) == int(g[5])
        assert int(g[6]) == min(r['cluster_id'] for r in by_group[int(g[0])])


def test_corrupt_bags_are_reported_and_skipped(extracted, bags_dir, tmp_path):
    out, text = extracted
    meta = json.loads((out / 'dataset.json').read_text())
    rep = meta['bag_report']
    failed = {Path(f['bag']).name: f['reason'] for f in rep['bags_failed']}
    assert set(failed) == {'junk'} and all(failed.values())
    # the bag cut in half is read record by record: its complete clouds are kept
    damaged = {Path(f['bag']).name: f['reason'] for f in rep['truncated']}
    assert set(damaged) == {'cut'} and 'recovered' in damaged['cut']
    assert rep['recovered'][str(bags_dir / 'cut')] > 0
    assert rep['bags_read'] == [str(bags_dir / 'good')]
    assert '1 bag(s) unreadable' in text and f'skipped {bags_dir / "junk"}' in text
    assert f'damaged {bags_dir / "cut"}' in text
    assert {r['bag'] for r in B.load_dataset(out).rows} == {str(bags_dir / 'good'),
                                                            str(bags_dir / 'cut')}
    # nothing readable at all: non-zero exit, nothing written
    stub = tmp_path / 'stub'
    shutil.copytree(bags_dir / 'cut', stub)
    mcap = next(stub.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:100])
    rc, _ = run('bags', 'extract', stub, bags_dir / 'junk', '--out', tmp_path / 'none',
                '--quiet')
    assert rc != 0 and not (tmp_path / 'none').exists()


def _salted_bag(src, path):
    """The clouds of ``src`` with damage a real recording can hold, in one bag."""
    import dataclasses
    from rosbags.rosbag2 import Writer
    ts = bagio.typestore()
    msgs = [(st, m) for _, mt, st, m in bagio.iter_messages(src, [bagio.CLOUD_TOPIC])
            if mt == bagio.POINTCLOUD2][:6]
    with Writer(path, version=9) as w:
        c = w.add_connection(bagio.CLOUD_TOPIC, bagio.POINTCLOUD2, typestore=ts)
        s = w.add_connection(bagio.CLOUD_TOPIC, 'std_msgs/msg/String', typestore=ts)
        for i, (st, m) in enumerate(msgs):
            raw = ts.serialize_cdr(m, bagio.POINTCLOUD2)
            if i == 1:
                raw = raw[:40]                                       # undecodable
            if i == 2:
                pts = np.frombuffer(bytes(m.data), np.float32).copy()
                pts[np.isfinite(pts)] = 1e30                         # implausible
                raw = ts.serialize_cdr(dataclasses.replace(m, data=pts.view(np.uint8)),
                                       bagio.POINTCLOUD2)
            if i == 3:
                raw = ts.serialize_cdr(dataclasses.replace(m, point_step=2 ** 31),
                                       bagio.POINTCLOUD2)            # was a plain ValueError
            w.write(c, st, raw)
            w.write(s, st + 1, ts.serialize_cdr(ts.types['std_msgs/msg/String'](data='x'),
                                                'std_msgs/msg/String'))
    return path


def test_one_bad_message_is_skipped_and_the_rest_kept(bags_dir, tiny_model_dir, tmp_path):
    # extract aborted on one undecodable message and wrote nothing, and a String
    # connection on the cloud topic made the bag look like a String topic
    salted = _salted_bag(bags_dir / 'good', tmp_path / 'salted')
    out = tmp_path / 'ds'
    rc, text = run('bags', 'extract', salted, bags_dir / 'good', '--out', out, '--every', 1,
                   '--model', tiny_model_dir, '--device', 'cpu', '--quiet')
    assert rc == 0, text
    ds = B.load_dataset(out)
    rep = ds.meta['bag_report']
    assert rep['bags_without_topic'] == [] and rep['implausible_clouds'] == 1
    assert rep['undecodable'] == 2 and str(salted) in rep['bags_read']
    frames = {r['frame_index'] for r in ds.rows if r['bag'] == str(salted)}
    assert frames and frames <= {0, 4, 5} and {r['bag'] for r in ds.rows} == {
        str(salted), str(bags_dir / 'good')}
    assert 'implausible' in text


def test_pictures_exist_and_show_something(extracted):
    import matplotlib.image
    out, text = extracted
    img = matplotlib.image.imread(out / 'contact_sheet.png')
    assert img.shape[0] > 150 and img.shape[1] > 1000
    assert (img[..., :3] < 0.5).mean() > 0.01           # not a blank page
    page = (out / 'index.html').read_text()
    groups = _csv(out / 'labels.csv')[1]
    assert page.count('data:image/png;base64,') >= len(groups)
    assert all(f'id="g{g[0]}"' in page for g in groups)
    assert 'p3d finetune --dataset' in text and 'labels.csv' in text


def test_contact_sheet_pages(tmp_path):
    thumbs = np.full((60, 64, 64, 3), 255, np.uint8)
    thumbs[:, 20:40, 20:40] = (200, 30, 30)
    groups = [{'group_id': i, 'label': '', 'proposed_label': 'mug', 'proposed_score': 0.5,
               'clusters': 1, 'frames': 1, 'first_cluster': i} for i in range(60)]
    paths = B.write_contact_sheets(tmp_path, groups, thumbs)
    assert [p.name for p in paths] == ['contact_sheet.png', 'contact_sheet_2.png']
    paths = B.write_contact_sheets(tmp_path, groups[:3], thumbs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['contact_sheet.png']


def test_labels_propagate_and_relabel_keeps_them(extracted, tiny_model_dir, tmp_path):
    src, _ = extracted
    out = tmp_path / 'ds'
    shutil.copytree(src, out)
    ds = B.load_dataset(out)
    head, groups = _csv(out / 'labels.csv')
    ids = [int(g[0]) for g in groups]
    sizes = {int(g[0]): int(g[4]) for g in groups}
    a, b, c = sorted(ids, key=lambda g: -sizes[g])[:3]
    edited = {a: 'widget', b: '-', c: 'ignore'}
    with open(out / 'labels.csv', 'w', newline='') as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for g in groups:
            w.writerow([g[0], edited.get(int(g[0]), '')] + g[2:])
    labels = B.read_labels(ds)
    in_a = [r['cluster_id'] for r in ds.rows if r['group_id'] == a]
    assert sorted(labels) == sorted(in_a) and len(in_a) == sizes[a] >= 2
    assert set(labels.values()) == {'widget'}

    rc, text = run('bags', 'label', out, '--model', tiny_model_dir, '--vocabulary',
                   'mug,bottle,widget', '--accept-above', '0', '--device', 'cpu', '--quiet')
    assert rc == 0, text
    assert '3 label(s) kept' in text
    _, after = _csv(out / 'labels.csv')
    got = {int(g[0]): g[1] for g in after}
    assert {k: got[k] for k in edited} == edited           # written labels survive
    assert all(got[k] == g[2] for k, g in ((int(g[0]), g) for g in after) if k not in edited)
    ds2 = B.load_dataset(out)
    assert {r['proposed_label'] for r in ds2.rows} <= {'mug', 'bottle', 'widget'}
    assert ds2.meta['vocabulary'] == ['mug', 'bottle', 'widget']
    assert [h['step'] for h in ds2.meta['history']] == ['extract', 'label']
    assert ds2.embeddings.shape == ds.embeddings.shape
    assert [(r['group_id'], r['gt_label']) for r in ds2.rows] == \
        [(r['group_id'], r['gt_label']) for r in ds.rows]
    labels2 = B.read_labels(ds2)
    assert labels2[in_a[0]] == 'widget' and len(labels2) == len(ds2.rows) - sum(
        sizes[g] for g in (b, c))


def test_relabel_with_the_same_model_reproduces_proposals(extracted, tiny_model_dir, tmp_path):
    out = tmp_path / 'ds'
    shutil.copytree(extracted[0], out)
    before = B.load_dataset(out)
    rc, text = run('bags', 'label', out, '--model', tiny_model_dir, '--device', 'cpu',
                   '--quiet')
    assert rc == 0 and '0 proposal(s) changed' in text, text
    after = B.load_dataset(out)
    assert np.allclose(after.embeddings, before.embeddings, atol=1e-4)


def test_bad_label_files_name_the_line(extracted, tmp_path):
    ds = B.load_dataset(extracted[0])
    bad = tmp_path / 'labels.csv'
    bad.write_text('group_id,label\n0,mug\n999999,cup\n')
    with pytest.raises(B.DatasetError, match='line 3.*999999'):
        B.read_labels(ds, bad)
    bad.write_text('group_id,label\n0,mug\nzero,cup\n')
    with pytest.raises(B.DatasetError, match='line 3'):
        B.read_labels(ds, bad)
    bad.write_text('group_id,label\n0,mug\n0,cup\n')
    with pytest.raises(B.DatasetError, match='line 3.*twice'):
        B.read_labels(ds, bad)
    bad.write_text('\ufeffgroup_id,label\n0, mug \n')        # spreadsheet BOM, spaces
    assert set(B.read_labels(ds, bad).values()) == {'mug'}


def test_load_dataset_explains_missing_or_inconsistent_files(extracted, tmp_path):
    out = tmp_path / 'ds'
    shutil.copytree(extracted[0], out)
    lines = (out / 'clusters.csv').read_text().splitlines(keepends=True)
    (out / 'clusters.csv').write_text(''.join(lines[:-1]))
    with pytest.raises(B.DatasetError, match='inconsistent.*--overwrite'):
        B.load_dataset(out)
    (out / 'clusters.npz').unlink()
    with pytest.raises(B.DatasetError, match='missing clusters.npz.*p3d bags extract'):
        B.load_dataset(out)


def _write_cloud_only_bag(path, frames):
    """A bag with clouds and nothing else (no TF), as some recorders leave them."""
    from rosbags.rosbag2 import Writer
    ts = bagio.typestore()
    with Writer(path, version=9) as w:
        conn = w.add_connection(bagio.CLOUD_TOPIC, bagio.POINTCLOUD2, typestore=ts)
        for f in frames:
            w.write(conn, f.stamp_ns, ts.serialize_cdr(bagio._cloud_msg(ts, f, f.stamp_ns),
                                                       bagio.POINTCLOUD2))


def test_no_tf_groups_in_the_sensor_frame_and_overwrite_needs_the_flag(tiny_model_dir,
                                                                       tmp_path):
    from p3d_perception.training.synthetic import generate_scene, render, sample_camera_pose
    scene = generate_scene(5, categories=EASY, n_objects=(3, 3), clutter=False)
    rng = np.random.default_rng(5)
    pose = sample_camera_pose(scene, rng, distance=(0.8, 1.0), elevation=(40.0, 50.0))
    frames = [render(scene, 'd435', rng, pose=pose, stamp_ns=1_700_000_000_000_000_000
                     + i * 100_000_000) for i in range(3)]   # still camera, fresh noise
    _write_cloud_only_bag(tmp_path / 'still', frames)
    out = tmp_path / 'ds'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    args = ['bags', 'extract', tmp_path / 'still', '--out', out, '--every', 1, '--model',
            tiny_model_dir, '--device', 'cpu', '--quiet']
    rc, _ = run(*args)
    assert rc != 0 and sorted(p.name for p in out.iterdir()) == ['notes.txt']
    rc, text = run(*args, '--overwrite', '--accept-above', '0')
    assert rc == 0, text
    assert 'grouped in the sensor frame' in text
    ds = B.load_dataset(out)
    assert ds.meta['fixed_frame'] == 'camera_depth_optical_frame'
    info = next(iter(ds.meta['grouping']['per_bag'].values()))
    assert not info['from_tf'] and info['clouds_without_tf'] == 3
    assert all(r['gt_label'] == '' and r['gt_iou'] is None for r in ds.rows)
    groups = {r['group_id'] for r in ds.rows}
    assert len(ds.rows) >= 6 and len(groups) <= len(ds.rows) / 2
    _, lab = _csv(out / 'labels.csv')
    assert all(g[1] == g[2] for g in lab)               # --accept-above 0 pre-fills all
    assert (out / 'notes.txt').read_text() == 'mine'
    rc, _ = run(*args)                                  # now it holds a dataset: refused
    assert rc != 0 and B.load_dataset(out).meta['created'] == ds.meta['created']


def test_transform_tree_composes_to_the_root_at_the_stamp(bags_dir):
    from transforms3d.quaternions import quat2mat
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        assert np.allclose(B.quaternion_matrix(x, y, z, w), quat2mat([w, x, y, z]))
    tree = B.TransformTree()

    def shift(x):
        T = np.eye(4)
        T[0, 3] = x
        return T
    tree.add('map', 'base', 0, shift(1.0), static=True)
    tree.add('/base', 'cam', 100, shift(10.0))
    tree.add('base', 'cam', 200, shift(20.0))
    root, T = tree.lookup('cam', 150)
    assert root == 'map' and T[0, 3] == pytest.approx(11.0)
    assert tree.lookup('cam', 250)[1][0, 3] == pytest.approx(21.0)
    assert tree.lookup('cam', 50)[1][0, 3] == pytest.approx(11.0)    # before the first
    assert tree.lookup('other', 150) is None
    # the generated bag: /tf gives table <- camera, the inverse of the truth's T_camera_table
    tree = B.TransformTree.from_bag(bags_dir / 'good')
    for gt in bagio.read_ground_truth(bags_dir / 'good')[::5]:
        root, T = tree.lookup(gt['frame_id'], gt['stamp_ns'])
        assert root == 'table'
        assert np.allclose(T, np.linalg.inv(gt['T_camera_table']), atol=1e-4)


@pytest.mark.skipif(not (MODEL / 'model.safetensors').is_file(), reason='no bundled model')
def test_bundled_model_proposals_are_mostly_right(extracted, tmp_path):
    out = tmp_path / 'ds'
    shutil.copytree(extracted[0], out)
    rc, text = run('bags', 'label', out, '--vocabulary', ','.join(EASY), '--device', 'cpu',
                   '--quiet')
    assert rc == 0, text
    rows = [r for r in B.load_dataset(out).rows if r['gt_iou'] and r['gt_iou'] >= 0.5]
    right = sum(r['proposed_label'] == r['gt_label'] for r in rows)
    assert len(rows) >= 20 and right >= 0.5 * len(rows), f'{right}/{len(rows)}'
