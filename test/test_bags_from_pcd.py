# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""PCD scans into the bag workflow: from-pcd, RGB crops, labels from ground truth.

Real files throughout: PCD files written by the project's encoder and the real mOSD
scans, real rosbag2 (MCAP) bags read back through bagio, a real (tiny) model.
"""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from p3d_perception import bagio
from p3d_perception.cli import main
from p3d_perception.cloud import read_pcd
from p3d_perception.pcd import encode_pcd
from p3d_perception.training import bags as B

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / 'config' / 'eval' / 'real_kinect.yaml'


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue()


def _scan(seed: int, height: int = 6, width: int = 8) -> np.ndarray:
    """An organised scan with NaN holes, colour and a per-point label, as mOSD has."""
    rng = np.random.default_rng(seed)
    n = height * width
    arr = np.zeros(n, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgba', '<u4'),
                             ('label', '<u4')])
    xyz = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    xyz[:, 2] += 1.5
    xyz[rng.random(n) < 0.2] = np.nan
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint32)
    arr['x'], arr['y'], arr['z'] = xyz.T
    arr['rgba'] = (255 << 24) | (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    arr['label'] = rng.integers(0, 40, n)
    return arr


@pytest.fixture
def scan_dir(tmp_path):
    """scan2, scan10, scan1 (a natural order differs from the alphabetical one) + junk."""
    d = tmp_path / 'scans'
    d.mkdir()
    for seed, name in ((2, 'scan2'), (10, 'scan10'), (1, 'scan1')):
        (d / f'{name}.pcd').write_bytes(encode_pcd(_scan(seed), 'binary', width=8, height=6))
    (d / 'broken.pcd').write_bytes(b'# .PCD v0.7\nVERSION 0.7\nFIELDS x y\nthis is not\n')
    (d / 'notes.txt').write_text('not a scan')
    return d


def test_pcd_to_bag_gives_back_the_same_points_fields_and_stamps(scan_dir, tmp_path):
    bag = tmp_path / 'bag'
    rc, text = run('bags', 'from-pcd', scan_dir, '--out', bag, '--rate', 2,
                   '--keep-fields', 'label', '--frame-id', 'kinect_optical')
    assert rc == 0, text
    assert 'skipped' in text and 'broken.pcd' in text           # reported, not fatal
    assert '3 scan(s) (6x8) -> 1 bag(s)' in text
    assert '--every 1' in text                                  # the next step, spelt out
    report = bagio.BagReport()
    clouds = list(bagio.iter_clouds(bag, report=report))
    assert report.ok and len(clouds) == 3
    names = ['scan1', 'scan2', 'scan10']
    stamps = [st for st, _ in clouds]
    assert stamps == [1_700_000_000_000_000_000 + i * 500_000_000 for i in range(3)]
    for (st, cloud), name in zip(clouds, names):
        src = read_pcd(scan_dir / f'{name}.pcd')
        assert (cloud.height, cloud.width) == (6, 8)
        assert cloud.frame_id == 'kinect_optical' and cloud.stamp_ns == st
        np.testing.assert_array_equal(np.isnan(cloud.points), np.isnan(src.points))
        np.testing.assert_array_equal(cloud.points, src.points)   # NaN == NaN here
        np.testing.assert_array_equal(cloud.colors, src.colors)
        assert sorted(cloud.fields) == ['label']
        np.testing.assert_array_equal(cloud.fields['label'], src.fields['label'])
    side = json.loads((bag / B.PCD_SOURCES).read_text())
    assert [s['name'] for s in side['scans']] == names
    scan2 = (scan_dir / 'scan2.pcd').resolve()
    assert B.read_pcd_sources(bag)[stamps[1]]['source'] == str(scan2)
    assert bagio.topic_types(bag) == {'/camera/depth/points': {bagio.POINTCLOUD2: 3}}


def test_fields_are_dropped_unless_kept_and_files_keep_natural_order(scan_dir, tmp_path):
    files = sorted(scan_dir.glob('scan*.pcd'))        # as a shell glob hands them over
    assert [f.stem for f in files] == ['scan1', 'scan10', 'scan2']
    made = B.scans_to_bags(files, tmp_path / 'bag', storage='sqlite3')
    clouds = list(bagio.iter_clouds(made.bags[0]))
    assert [s['name'] for s in made.scans] == ['scan1', 'scan2', 'scan10']
    assert all(c.fields == {} and c.colors is not None for _, c in clouds)
    assert all(c.frame_id == B.PCD_FRAME for _, c in clouds)
    with pytest.raises(FileExistsError):
        B.scans_to_bags(files, tmp_path / 'bag')
    B.scans_to_bags(files[:1], tmp_path / 'bag', overwrite=True)
    assert len(list(bagio.iter_clouds(tmp_path / 'bag'))) == 1


def test_bag_per_scan_and_nothing_readable(scan_dir, tmp_path):
    made = B.scans_to_bags([scan_dir], tmp_path / 'bags', bag_per_scan=True, rate_hz=10)
    assert [b.name for b in made.bags] == ['scan1', 'scan2', 'scan10']
    assert [s for s, _ in made.skipped] == [str(scan_dir / 'broken.pcd')]
    stamps = [next(iter(B.read_pcd_sources(b))) for b in made.bags]
    assert np.all(np.diff(stamps) == 100_000_000)       # one clock over all the bags
    with pytest.raises(ValueError, match='none of the 1 scan'):
        B.scans_to_bags([scan_dir / 'broken.pcd'], tmp_path / 'none')
    assert not (tmp_path / 'none').exists()
    rc, text = run('bags', 'from-pcd', tmp_path / 'missing.pcd', '--out', tmp_path / 'x')
    assert rc != 0


def test_rgb_crop_shows_the_cluster_and_fades_the_rest():
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (0, 0, 200)                       # blue table
    img[10:20, 30:40] = (220, 10, 10)            # red object
    rows, cols = np.mgrid[10:20, 30:40]
    idx = (rows * w + cols).ravel()
    crop = B.rgb_crop(img.reshape(-1, 3), h, w, idx, size=32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[16, 16], (220, 10, 10))      # the object, as it is
    corner = crop[1, 1].astype(int)                                 # context, faded
    assert corner[2] > corner[0] and corner[0] > 100 and corner[2] < 255
    assert B.rgb_crop(img.reshape(-1, 3), 1, h * w, idx) is None     # unorganised
    assert B.rgb_crop(None, h, w, idx) is None                      # no colour
    # at the image border the outside is white, never wrapped-around pixels
    edge = B.rgb_crop(img.reshape(-1, 3), h, w, np.arange(5), size=16)
    assert (edge[0] == 255).all() and (edge[:, 0] == 255).all()


def test_contact_sheet_puts_the_colour_picture_beside_the_point_view(tmp_path):
    thumbs = np.full((3, 64, 64, 3), 255, np.uint8)
    crops = np.zeros((3, 64, 64, 3), np.uint8)
    crops[..., 0] = 200
    groups = [{'group_id': i, 'label': '', 'proposed_label': 'mug', 'proposed_score': 0.5,
               'clusters': 1, 'frames': 1, 'first_cluster': i} for i in range(3)]
    import matplotlib.image
    plain = matplotlib.image.imread(B.write_contact_sheets(tmp_path, groups, thumbs)[0])
    (tmp_path / 'b').mkdir()
    both = matplotlib.image.imread(B.write_contact_sheets(tmp_path / 'b', groups, thumbs,
                                                          crops)[0])
    assert both.shape[1] > plain.shape[1]

    def red(img):
        return (img[..., 0] > 0.7) & (img[..., 1] < 0.2)
    assert red(both).sum() >= 3 * 100 * 100 and not red(plain).any()


@pytest.fixture(scope='module')
def real_dataset(tmp_path_factory, make_tiny_model, mosd_dir):
    """Two real Kinect scans -> one bag each -> an extracted dataset (tiny model)."""
    d = tmp_path_factory.mktemp('real')
    model = make_tiny_model(d / 'tiny', vocabulary=['cereal box', 'mug', 'bowl', 'tin'])
    rc, text = run('bags', 'from-pcd', mosd_dir / 'learn33.pcd', mosd_dir / 'learn3.pcd',
                   '--out', d / 'bags', '--bag-per-scan')
    assert rc == 0, text
    rc, text = run('bags', 'extract', d / 'bags' / 'learn3', d / 'bags' / 'learn33', '--out',
                   d / 'ds', '--every', 1, '--model', model, '--device', 'cpu', '--quiet',
                   '--accept-above', '0')
    assert rc == 0, text
    return d, model


def test_extracted_scans_keep_indices_and_colour_pictures(real_dataset, mosd_dir):
    d, _ = real_dataset
    ds = B.load_dataset(d / 'ds')
    with np.load(d / 'ds' / 'clusters.npz') as z:
        idx, off, crops, has_crop = z['indices'], z['offsets'], z['crops'], z['has_crop']
    assert len(ds) >= 3 and has_crop.all() and crops.shape == (len(ds), 64, 64, 3)
    scans = {'learn3': read_pcd(mosd_dir / 'learn3.pcd'),
             'learn33': read_pcd(mosd_dir / 'learn33.pcd')}
    for i, r in enumerate(ds.rows):
        name = B.read_pcd_sources(r['bag'])[r['stamp_ns']]['name']
        np.testing.assert_array_equal(scans[name].points[idx[off[i]:off[i + 1]]],
                                      ds.points[i])
        assert crops[i].std() > 5                              # a picture, not a blank
    page = (d / 'ds' / 'index.html').read_text()
    assert page.count('colour picture of cluster') >= len(ds.group_ids)
    # --accept-above 0 pre-filled every group with its proposal, as documented
    groups = B.read_group_labels(ds.labels_csv)
    with open(ds.labels_csv, newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert len(groups) == len(rows) == len(ds.group_ids)
    assert all(r['label'] == r['proposed_label'] for r in rows)


def test_labels_from_ground_truth_parse_and_keep_groups(real_dataset, tmp_path):
    import shutil
    d, _ = real_dataset
    ds_dir = tmp_path / 'ds'
    shutil.copytree(d / 'ds', ds_dir)
    before = B.load_dataset(ds_dir)
    rc, text = run('bags', 'label-from-gt', ds_dir, '--rules', RULES, '--max-per-label', 1)
    assert rc == 0, text
    ds = B.load_dataset(ds_dir)
    assert ds.group_ids == before.group_ids
    with open(ds.labels_csv, newline='') as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == B.LABEL_COLUMNS
        table = list(reader)
    assert [int(r['group_id']) for r in table] == ds.group_ids
    written = B.read_group_labels(ds.labels_csv, ds.group_ids)
    per_cluster = B.read_labels(ds)
    real = {v for v in written.values() if not B.is_junk(v)}
    # learn3: two cereal boxes; learn33: cylindric objects. Rule labels only, <= 1 each
    assert real and real <= {'cereal box', 'tin', 'mug', 'cup', 'bowl', 'can'}
    counts = {lab: sum(v == lab for v in per_cluster.values()) for lab in real}
    assert all(n == 1 for n in counts.values())
    assert ds.meta['history'][-1]['step'] == 'label-from-gt'
    import html
    page = (ds_dir / 'index.html').read_text()      # the page shows what was written
    lines = (ds_dir / 'labels.csv').read_text().splitlines()[1:]
    assert all(html.escape(line) in page for line in lines)
    # a bigger budget labels more, and the same seed gives the same file
    B.label_from_ground_truth(ds_dir, RULES, max_per_label=0)
    full = B.read_group_labels(ds.labels_csv)
    assert sum(not B.is_junk(v) for v in full.values()) >= len(real)
    assert 'cereal box' in full.values()
    again = B.label_from_ground_truth(ds_dir, RULES, max_per_label=0)
    assert B.read_group_labels(ds.labels_csv) == full and again.groups == len(ds.group_ids)


def test_label_from_gt_needs_from_pcd_bags(real_dataset, tmp_path):
    import shutil
    d, _ = real_dataset
    ds_dir = tmp_path / 'ds'
    shutil.copytree(d / 'ds', ds_dir)
    rows = list(csv.DictReader(open(ds_dir / 'clusters.csv', newline='')))
    bags = {r['bag'] for r in rows}
    moved = tmp_path / 'moved'
    for b in bags:           # sources that name nothing: the groups stay unlabelled
        shutil.copytree(b, moved / Path(b).name)
        (moved / Path(b).name / B.PCD_SOURCES).unlink()
    text = (ds_dir / 'clusters.csv').read_text()
    for b in bags:
        text = text.replace(b, str(moved / Path(b).name))
    (ds_dir / 'clusters.csv').write_text(text)
    r = B.label_from_ground_truth(ds_dir, RULES)
    assert r.labelled_groups == 0 and r.unknown_groups == r.groups


def test_extract_warns_when_every_skips_pcd_captures(scan_dir, tmp_path, make_tiny_model,
                                                     caplog):
    made = B.scans_to_bags([scan_dir], tmp_path / 'bag')
    model = make_tiny_model(tmp_path / 'tiny', vocabulary=['mug', 'bowl'])
    with caplog.at_level('WARNING', logger='p3d_perception.training.bags'):
        summary = B.extract_dataset(made.bags, tmp_path / 'ds', every=2, model=model,
                                    device='cpu', progress=False)
    assert 'written from PCD scans' in caplog.text and '--every 1 uses all' in caplog.text
    assert summary.clouds_read == 3 and summary.clouds_used == 2


def test_bags_without_tf_are_reported_in_one_line(mosd_dir, tmp_path, make_tiny_model,
                                                  caplog):
    # PCD captures made into bags have no /tf: a user converting 45 scans wants one line
    made = B.scans_to_bags([mosd_dir / 'learn3.pcd', mosd_dir / 'learn33.pcd'],
                           tmp_path / 'bags', bag_per_scan=True)
    assert len(made.bags) == 2
    model = make_tiny_model(tmp_path / 'tiny', vocabulary=['mug', 'bowl'])
    with caplog.at_level('WARNING', logger='p3d_perception.training.bags'):
        B.extract_dataset(made.bags, tmp_path / 'ds', every=1, model=model, device='cpu',
                          progress=False)
    lines = [r.getMessage() for r in caplog.records if 'no /tf' in r.getMessage()]
    assert len(lines) == 1, lines
    assert f'{len(made.bags)} of {len(made.bags)} bag(s)' in lines[0]
    assert 'camera_depth_optical_frame' in lines[0]
