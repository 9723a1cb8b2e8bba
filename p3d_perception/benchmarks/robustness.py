# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Robustness campaign: fuzzed messages, corrupt PCD files and damaged bags, no crash.

"No input can take the node down, and no recording is lost to one bad byte" is a
claim about inputs nobody wrote a test for, so this runs many of them: tens of
thousands of fuzzed PointCloud2 layouts (those that decode go on through the full
Pipeline with the bundled model, as in the node), depth images, degenerate clouds,
every class of corrupt PCD file, and bags cut or salted with flipped bits. Each case
runs under a time limit (SIGALRM); a crash is any exception other than CloudError /
BagError, a hang a case past the limit. Peak memory is the process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import signal
import struct
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from p3d_perception.cloud import (
    Cloud, CloudError, depth_image_to_cloud, pointcloud2_to_cloud, read_pcd, UNEXPECTED)

MOSD = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'mosd_learn'
_FMT = {1: 'b', 2: 'B', 3: 'h', 4: 'H', 5: 'i', 6: 'I', 7: 'f', 8: 'd'}
_NAMES = ['x', 'y', 'z', 'rgb', 'rgba', 'r', 'g', 'b', 'intensity', '', '_']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cases', type=int, default=30_000,
                        help='fuzzed PointCloud2 messages (default %(default)s)')
    parser.add_argument('--depth-cases', type=int, default=8_000,
                        help='fuzzed depth images (default %(default)s)')
    parser.add_argument('--bag-trials', type=int, default=20,
                        help='bags salted with flipped bytes (default %(default)s)')
    parser.add_argument('--case-timeout', type=float, default=10.0,
                        help='seconds a case may take before it counts as a hang')
    parser.add_argument('--seed', type=int, default=2026)
    parser.add_argument('--segmenter-only', action='store_true',
                        help='segment decoded clouds with the Segmenter instead of the '
                             'full Pipeline (no model load)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


class _Hang(BaseException):
    """Raised by SIGALRM inside a case that ran past its time limit."""


class _Tally:
    """Per-class counts of outcomes, with the first few crashes kept for the report."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.classes: dict[str, dict] = {}
        self.crash_examples: list[dict] = []

    def run(self, cls: str, fn, *args):
        """fn(*args) as one case: returns its result, or None for any failure."""
        c = self.classes.setdefault(cls, {'cases': 0, 'ok': 0, 'refused': 0, 'crashes': 0,
                                          'hangs': 0, 'unexplained': 0, 'max_s': 0.0})
        c['cases'] += 1
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        t0 = time.perf_counter()
        try:
            out = fn(*args)
            c['ok'] += 1
            return out
        except _Hang:
            c['hangs'] += 1
        except CloudError as exc:
            c['refused'] += 1
            if not str(exc) or UNEXPECTED in str(exc):
                c['unexplained'] += 1
                self._example(cls, exc)
        except Exception as exc:  # noqa: BLE001 - exactly what this benchmark counts
            from p3d_perception.bagio import BagError
            if isinstance(exc, BagError) and str(exc):
                c['refused'] += 1
            else:
                c['crashes'] += 1
                self._example(cls, exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            c['max_s'] = round(max(c['max_s'], time.perf_counter() - t0), 3)
        return None

    def _example(self, cls: str, exc: BaseException) -> None:
        if len(self.crash_examples) < 20:
            self.crash_examples.append({'class': cls, 'type': type(exc).__name__,
                                        'message': str(exc)[:300]})

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.classes.values())


def _alarm(signum, frame):
    raise _Hang()


# ------------------------------------------------------------------ generators

def fuzz_pointcloud2(rng: np.random.Generator) -> SimpleNamespace:
    """A random valid PointCloud2 layout, then (two times in three) one kind of damage."""
    height, width = int(rng.integers(1, 12)), int(rng.integers(1, 40))
    dt = int(rng.choice([7, 7, 8, 1, 4, 5]))
    size = struct.calcsize(_FMT[dt])
    gap = int(rng.integers(0, 5))
    fields = [SimpleNamespace(name=c, offset=i * (size + gap), datatype=dt, count=1)
              for i, c in enumerate('xyz')]
    end = 3 * (size + gap)
    for _ in range(int(rng.integers(0, 5))):
        code, count = int(rng.integers(1, 9)), int(rng.choice([1, 1, 2, 3, 0]))
        fields.append(SimpleNamespace(name=str(rng.choice(_NAMES)), offset=end,
                                      datatype=code, count=count))
        end += struct.calcsize(_FMT[code]) * max(count, 1)
    if rng.random() < 0.3:
        fields = [fields[i] for i in rng.permutation(len(fields))]
    step = end + int(rng.integers(0, 6))
    row_step = width * step + int(rng.choice([0, 0, 4]))
    f = fields[int(rng.integers(0, len(fields)))]
    extra = 0
    damage = int(rng.integers(0, 21))
    choice = (lambda *v: v[int(rng.integers(0, len(v)))])  # noqa: E731 - mixed types
    if damage == 1:
        step = choice(0, -1, 2, 2 ** 31, 2 ** 40, 2 ** 64)
    elif damage == 2:
        f.offset = choice(-4, step, step - 1, 2 ** 33, None)
    elif damage == 3:
        f.datatype = choice(0, 9, 255, -1, '7')
    elif damage == 4:
        f.count = choice(-1, 10 ** 9, 50, 2 ** 70)
    elif damage == 5:
        height = choice(0, -1, 2 ** 40, None, 1.5)
    elif damage == 6:
        width = choice(0, -3, 2 ** 33, float('nan'))
    elif damage == 7:
        row_step = choice(0, -8, row_step - 1, 2 ** 50)
    elif damage in (8, 9):
        extra = int(rng.integers(1, 64)) * (1 if damage == 8 else -1)
    elif damage == 10:
        fields = choice(None, 7, 'xyz', [None], [], [object()])
    elif damage == 11:
        f.name = choice('x', '', 'y', 7, None, 'z' * 10_000)
    elif damage == 12:
        fields[0].count = 2
    elif damage == 13:
        fields += [SimpleNamespace(name=f'o{i}', offset=0, datatype=2, count=step)
                   for i in range(int(rng.integers(5, 300)))]
    ok = all(isinstance(v, int) and v >= 0 for v in (height, width, row_step))
    n = max(0, min(height * row_step + extra, 1 << 16)) if ok else 64
    if damage == 14:
        data = [int(v) for v in rng.integers(-5, 400, n)]
    elif rng.random() < 0.5:
        data = rng.normal(0, 2, n // 4 + 1).astype(np.float32).tobytes()[:n]
    elif rng.random() < 0.5:
        data = rng.choice(np.array([0.0, np.nan, np.inf, -np.inf, 1e38, 1e-45, 2.0],
                                   np.float32), n // 4 + 1).tobytes()[:n]
    else:
        data = rng.bytes(n)
    return SimpleNamespace(
        header=SimpleNamespace(frame_id='f', stamp=SimpleNamespace(sec=1, nanosec=2)),
        height=height, width=width, fields=fields, is_bigendian=bool(rng.random() < 0.3),
        point_step=step, row_step=row_step, data=data, is_dense=False)


def fuzz_depth(rng: np.random.Generator) -> tuple:
    """(depth Image, CameraInfo, colour Image or None) with random sizes and damage."""
    h, w = int(rng.integers(1, 48)), int(rng.integers(1, 64))
    enc = str(rng.choice(['16UC1', '16UC1', '32FC1', '32FC1', 'mono16', '8UC1', '']))
    px = 4 if enc == '32FC1' else 2
    step = w * px + int(rng.choice([0, 0, 0, 2, 8]))
    damage = int(rng.integers(0, 10))
    if damage == 1:
        h = int(rng.choice([0, -2, 2 ** 40]))
    elif damage == 2:
        step = int(rng.choice([0, -4, 2 ** 45, w * px - 1]))
    n = max(0, min(h * step, 1 << 16)) if h >= 0 and step >= 0 else 16
    n += int(rng.choice([0, 0, 0, 0, 1, -1, 8])) if damage == 3 else 0
    if enc == '32FC1':
        data = rng.choice(np.array([0.0, np.nan, np.inf, -1.0, 0.8, 1.5, 3e38], np.float32),
                          max(n // 4 + 1, 1)).tobytes()[:max(n, 0)]
    else:
        data = rng.bytes(max(n, 0))
    fx = float(rng.choice([525.0, 525.0, 1e-3, 0.0, -5.0, np.nan, 1e30]))
    K = [fx, 0, float(rng.choice([w / 2, 1e30, np.inf])), 0, 525.0, h / 2, 0, 0, 1]
    if damage == 4:
        K = [[1.0] * 8, None, ['a'] * 9][int(rng.integers(0, 3))]
    info = SimpleNamespace(height=h if damage != 5 else h + 1, width=w, k=K)
    img = SimpleNamespace(height=h, width=w, step=step, encoding=enc,
                          is_bigendian=bool(rng.random() < 0.2), data=data, header=None)
    color = None
    if damage == 6 and h > 0:
        color = SimpleNamespace(height=h, width=w, step=w * 3, encoding='rgb8',
                                is_bigendian=False, data=rng.bytes(max(h, 0) * w * 3))
    return img, info, color


def degenerate_clouds(rng: np.random.Generator) -> list[tuple[str, Cloud]]:
    """Clouds that decode fine but are geometrically hopeless (what a sensor can send)."""
    out = []
    for h, w in ((1, 1), (2, 2), (5, 40), (9, 4), (40, 5), (3, 200), (1, 5000)):
        v, u = np.mgrid[0:h, 0:w]
        z = 1.0 + 0.002 * v + rng.normal(0, 0.001, (h, w))
        pts = np.stack([(u - w / 2) * z / 300, (v - h / 2) * z / 300, z], -1)
        out.append((f'roi {h}x{w}', Cloud.from_points(pts.astype(np.float32))))
    n = 20_000
    out += [
        ('all NaN', Cloud.from_points(np.full((n, 3), np.nan, np.float32))),
        ('one point repeated', Cloud.from_points(np.tile([[0.1, 0.2, 1.0]], (n, 1)))),
        ('collinear', Cloud.from_points(np.outer(np.linspace(0.3, 3, n), [0.1, 0.2, 1.0]))),
        ('one plane only', Cloud.from_points(np.c_[rng.uniform(-1, 1, (n, 2)),
                                                   np.ones(n)])),
        ('far beyond range', Cloud.from_points(rng.uniform(1e4, 1e6, (n, 3)))),
        ('huge coordinates', Cloud.from_points(rng.uniform(-3e38, 3e38, (n, 3)))),
        ('tiny coordinates', Cloud.from_points(rng.uniform(-1e-30, 1e-30, (n, 3)))),
        ('empty', Cloud(np.zeros((0, 3), np.float32), None, 1, 0)),
        ('empty organised', Cloud(np.zeros((0, 3), np.float32), None, 0, 640)),
        ('dense noise ball', Cloud.from_points(rng.normal([0, 0, 1], 0.05, (n, 3)))),
    ]
    return out


def _pcd_header(fields='x y z', size='4 4 4', type_='F F F', count='1 1 1', width=3,
                height=1, points=3, data='binary', pad=0) -> bytes:
    return ('# .PCD v0.7\n' + '# padding\n' * pad + f'VERSION 0.7\nFIELDS {fields}\n'
            f'SIZE {size}\nTYPE {type_}\nCOUNT {count}\nWIDTH {width}\nHEIGHT {height}\n'
            f'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n').encode()


def corrupt_pcds(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Every class of broken PCD file the issue lists, and random damage to real scans."""
    body = np.arange(9, dtype='<f4').tobytes()
    bomb = b'\xff\xff\x00' * (8_000_000 // 3)
    cases = [
        ('COUNT 10^9 in a 240 KB header', _pcd_header(count='1 1 1000000000', pad=24_000)
         + body),
        ('LZF block claiming 60 M points', _pcd_header(width=60_000_000, points=60_000_000,
                                                       data='binary_compressed')
         + struct.pack('<II', len(bomb), 60_000_000 * 12) + bomb),
        ('POINTS lies', _pcd_header(points=2) + body),
        ('WIDTH x HEIGHT lie', _pcd_header(width=2, height=2, points=4) + body),
        ('POINTS and WIDTH lie low', _pcd_header(width=2, points=2) + body),
        ('binary cut short', _pcd_header() + body[:-3]),
        ('compressed cut short', _pcd_header(data='binary_compressed')
         + struct.pack('<II', 37, 36) + b'\x1f' + body[:20]),
        ('compressed size lies', _pcd_header(data='binary_compressed')
         + struct.pack('<II', 10 ** 9, 36) + body),
        ('LZF reference before start', _pcd_header(data='binary_compressed')
         + struct.pack('<II', 2, 36) + b'\x20\x05'),
        ('SIZE/TYPE/COUNT mismatch', _pcd_header(size='4 4') + body),
        ('unknown TYPE', _pcd_header(type_='F F Q') + body),
        ('no DATA line', _pcd_header().replace(b'DATA binary\n', b'') + body),
        ('ascii garbage', _pcd_header(data='ascii') + b'1 2 x\n\xff\xfe\n'),
        ('ascii too many lines', _pcd_header(data='ascii') + b'1 2 3\n' * 5),
        ('empty file', b''),
        ('random bytes', rng.bytes(4096)),
        ('header only', _pcd_header()),
    ]
    scans = sorted(MOSD.glob('*.pcd'))[:3]
    for scan in scans:
        data = scan.read_bytes()
        head = data.index(b'DATA') + 30
        for k in range(4):
            bad = bytearray(data)
            for pos in rng.integers(0, len(bad), 8 if k % 2 else 1):
                bad[pos] ^= 1 << int(rng.integers(0, 8))
            cases.append((f'{scan.name} flipped bits', bytes(bad)))
            cut = int(rng.integers(head, len(data)))
            cases.append((f'{scan.name} cut at {100 * cut // len(data)} %', data[:cut]))
    return cases


# ------------------------------------------------------------------ campaign parts

def _segment_stage(args):
    """Pipeline.process on a bundled-model Recognizer (as the node), or the Segmenter."""
    from p3d_perception.segmentation import Segmenter
    if args.segmenter_only:
        seg = Segmenter()
        return 'Segmenter', (lambda cloud: seg(cloud))
    from p3d_perception.pipeline import Pipeline
    from p3d_perception.recognize import Recognizer
    from p3d_perception.resources import default_model_path
    pipeline = Pipeline(Recognizer.from_checkpoint(default_model_path(), device='cpu'))
    return f'Pipeline.process with {default_model_path().name} on cpu', pipeline.process


def _bags(args, tally: _Tally, rng: np.random.Generator, progress) -> dict:
    from p3d_perception import bagio
    from p3d_perception.bagrecovery import Recovery, scan_mcap
    from p3d_perception.training.synthetic import CAMERA_PRESETS, generate_scene, render
    cam = CAMERA_PRESETS['d435'].replace(width=160, height=120, fx=95.75, fy=95.75, cx=80.0,
                                         cy=60.0)
    scene = generate_scene(args.seed, n_objects=(3, 5))
    frames = [render(scene, cam, i) for i in range(12)]
    root = Path(tempfile.mkdtemp(prefix='p3d_robustness_'))
    shares: dict[str, float] = {}
    sq_shares: dict[str, float] = {}
    try:
        good = bagio.write_scene_bag(root / 'good', frames)
        sq = bagio.write_scene_bag(root / 'sq', frames, storage='sqlite3')
        mcap = next(good.glob('*.mcap'))
        data = mcap.read_bytes()
        found = Recovery(str(mcap), ends=[])
        list(scan_mcap(mcap, found))

        def read(bag: Path) -> tuple[int, bagio.BagReport]:
            report = bagio.BagReport()
            n = sum(1 for _ in bagio.iter_messages(bag, report=report))
            for _, cloud in bagio.iter_clouds(bag, report=bagio.BagReport()):
                assert isinstance(cloud, Cloud)
            return n, report

        cuts = {'MCAP cut at 50 %': len(data) // 2, 'MCAP cut at 90 %': int(len(data) * 0.9),
                'MCAP cut at 99 %': int(len(data) * 0.99),
                'MCAP without its last 4 KB': len(data) - 4096}
        for name, at in cuts.items():
            bag = root / name.replace(' ', '_').replace('%', 'pc')
            shutil.copytree(good, bag)
            next(bag.glob('*.mcap')).write_bytes(data[:at])
            out = tally.run('bags: ' + name, read, bag)
            complete = sum(1 for e in found.ends if e <= at)
            shares[name] = round(out[0] / complete, 4) if out and complete else 0.0
            progress.update(1)
        db = next(sq.glob('*.db3'))
        db_data = db.read_bytes()
        n_sq = sum(1 for _ in bagio.iter_messages(sq))
        for name, frac, meta in (('sqlite3 half-written', 0.5, False),
                                 ('sqlite3 cut at 90 %, metadata kept', 0.9, True)):
            bag = root / name.split(',')[0].replace(' ', '_')
            shutil.copytree(sq, bag)
            next(bag.glob('*.db3')).write_bytes(db_data[:int(len(db_data) * frac)])
            if not meta:
                (bag / 'metadata.yaml').unlink()
            out = tally.run('bags: ' + name, read, bag)
            sq_shares[name] = round(out[0] / n_sq, 4) if out else 0.0
            progress.update(1)
        for trial in range(args.bag_trials):
            src, blob = (good, data) if trial % 2 == 0 else (sq, db_data)
            bad = bytearray(blob)
            for pos in rng.integers(8, len(bad), int(rng.choice([1, 10, 100]))):
                bad[pos] ^= 1 << int(rng.integers(0, 8))
            bag = root / f'flip{trial}'
            shutil.copytree(src, bag)
            next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3')).write_bytes(
                bytes(bad))
            tally.run('bags: flipped bytes (' + ('MCAP' if trial % 2 == 0 else 'sqlite3')
                      + ')', read, bag)
            progress.update(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {'mcap_share_of_complete_messages_recovered': shares,
            'sqlite3_share_of_all_messages_recovered': sq_shares,
            'messages_in_intact_bag': len(found.ends)}


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm
    rng = np.random.default_rng(args.seed)
    tally = _Tally(args.case_timeout)
    old = signal.signal(signal.SIGALRM, _alarm)
    t_all = time.perf_counter()
    # every refused case logs why; thousands of them would drown the progress and summary
    quiet = logging.getLogger('p3d_perception')
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        stage_name, stage = _segment_stage(args)
        setup_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        decoded = 0
        for _ in tqdm(range(args.cases), desc='PointCloud2', disable=args.quiet,
                      mininterval=2):
            msg = fuzz_pointcloud2(rng)
            cloud = tally.run('PointCloud2 decode', pointcloud2_to_cloud, msg)
            if cloud is not None:
                decoded += 1
                tally.run('PointCloud2 -> ' + stage_name.split(' ')[0], stage, cloud)
        for _ in tqdm(range(args.depth_cases), desc='depth images', disable=args.quiet,
                      mininterval=2):
            img, info, color = fuzz_depth(rng)
            cloud = tally.run('depth image decode', depth_image_to_cloud, img, info, color)
            if cloud is not None and rng.random() < 0.25:
                tally.run('depth image -> ' + stage_name.split(' ')[0], stage, cloud)
        for name, cloud in tqdm(degenerate_clouds(rng), desc='degenerate clouds',
                                disable=args.quiet):
            tally.run('degenerate clouds', stage, cloud)
        pcd_dir = Path(tempfile.mkdtemp(prefix='p3d_pcd_'))
        pcd_classes = []
        try:
            for i, (name, blob) in enumerate(tqdm(corrupt_pcds(rng), desc='corrupt PCD',
                                                  disable=args.quiet)):
                path = pcd_dir / f'{i}.pcd'
                path.write_bytes(blob)
                pcd_classes.append(name)
                tally.run('corrupt PCD', read_pcd, path)
                path.unlink()
        finally:
            shutil.rmtree(pcd_dir, ignore_errors=True)
        with tqdm(total=6 + args.bag_trials, desc='damaged bags', disable=args.quiet) as bar:
            bags = _bags(args, tally, rng, bar)
    finally:
        signal.signal(signal.SIGALRM, old)
        quiet.setLevel(level)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mcap_shares = [v for k, v in bags['mcap_share_of_complete_messages_recovered'].items()
                   if not k.endswith('50 %')]
    result = {
        'segmentation_stage': stage_name,
        'cases': sum(c['cases'] for c in tally.classes.values()),
        'crashes': tally.total('crashes'), 'hangs': tally.total('hangs'),
        'unexplained_refusals': tally.total('unexplained'),
        'peak_rss_mb': round(peak_mb, 1),
        'rss_after_setup_mb': round(setup_mb, 1),
        'peak_growth_during_cases_mb': round(peak_mb - setup_mb, 1),
        'pointcloud2_decoded': decoded, 'pointcloud2_fuzzed': args.cases,
        'truncated_mcap_min_share': min(mcap_shares) if mcap_shares else None,
        'bags': bags, 'pcd_classes': sorted(set(pcd_classes)),
        'classes': tally.classes, 'crash_examples': tally.crash_examples,
        'case_timeout_s': args.case_timeout, 'seed': args.seed,
        'total_s': round(time.perf_counter() - t_all, 1),
        'goals': '0 crashes, 0 hangs, peak memory < 1 GB (the campaign\'s own growth when '
                 'the model is loaded: torch and the text encoder alone take about 1 GB), '
                 'truncated MCAP (90 %, 99 %, last 4 KB) recovers >= 90 % of its complete '
                 'messages',
    }
    own = peak_mb if args.segmenter_only else peak_mb - setup_mb
    result['goals_met'] = bool(result['crashes'] == 0 and result['hangs'] == 0
                               and own < 1024 and (result['truncated_mcap_min_share']
                                                   or 0) >= 0.9)
    print(f'{result["cases"]} cases: {result["crashes"]} crashes, {result["hangs"]} hangs, '
          f'{result["unexplained_refusals"]} unexplained refusals, peak {peak_mb:.0f} MB '
          f'({setup_mb:.0f} MB after loading {stage_name.split(" with ")[-1]}), '
          f'truncated MCAP recovers >= {100 * (result["truncated_mcap_min_share"] or 0):.1f} % '
          f'of its complete messages ({result["total_s"]} s)')
    return result
