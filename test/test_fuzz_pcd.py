# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Fuzzed PCD headers and bodies, and the LZF decoder against the reference C library.

Any file gives a Cloud or a CloudError with a reason, never another exception and
never an allocation the file's own size does not justify. Valid files are checked
against the array they were written from; LZF streams against python-lzf (pypcd4's
codec), where that library is installed.
"""

from __future__ import annotations

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from p3d_perception.cloud import CloudError, read_pcd, UNEXPECTED
from p3d_perception.pcd import encode_pcd, lzf_decompress, lzf_store

from test_fuzz_cloud import check_cloud

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
TYPES = ['<f4', '<f8', '<u1', '<i2', '<u4', '<i4', '<u8']


@st.composite
def pcd_files(draw):
    """(file bytes, source array or None): a valid PCD, then maybe one damaged line."""
    n = draw(st.integers(1, 9))
    extra = draw(st.lists(st.sampled_from(TYPES), max_size=3))
    names = ['x', 'y', 'z'] + [f'f{i}' for i in range(len(extra))]
    xyz = draw(st.sampled_from(['<f4', '<f8']))
    dt = np.dtype({'names': names, 'formats': [xyz] * 3 + extra})
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    arr = np.zeros(n, dt)
    for name in names:
        kind = dt[name].kind
        arr[name] = rng.normal(0, 2, n) if kind == 'f' else rng.integers(0, 100, n)
    if n > 1:
        arr['z'][0] = np.nan
    kind = draw(st.sampled_from(['ascii', 'binary', 'binary_compressed']))
    data = encode_pcd(arr, kind)
    split = data.index(b'DATA')
    split = data.index(b'\n', split) + 1
    head, body = data[:split].decode().splitlines(), data[split:]
    damage = draw(st.sampled_from(['none'] * 3 + ['line', 'value', 'body', 'cut', 'flip']))
    if damage == 'line':
        del head[draw(st.integers(1, len(head) - 1))]
    elif damage == 'value':
        i = draw(st.integers(1, len(head) - 1))
        key = head[i].split()[0]
        head[i] = key + ' ' + draw(st.sampled_from(
            ['1000000000', '-1', '0', 'nan', 'x', '', '4 4', 'F F F', '3 3 3 3 3 3',
             str(n + 1), str(n - 1), 'binary_compressed', 'ascii', '9']))
    elif damage == 'body':
        body = body + rng.bytes(draw(st.integers(1, 40)))
    elif damage == 'cut':
        body = body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    elif damage == 'flip':
        b = bytearray(body)
        for _ in range(3):
            if b:
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        body = bytes(b)
    out = ('\n'.join(head) + '\n').encode() + body
    return out, (arr if damage == 'none' else None)


@FUZZ
@given(pcd_files())
def test_fuzzed_pcd_is_a_cloud_or_a_cloud_error(tmp_path_factory, case):
    data, arr = case
    path = tmp_path_factory.mktemp('pcd') / 'f.pcd'
    path.write_bytes(data)
    try:
        cloud = read_pcd(path, require_valid=False)
    except CloudError as exc:
        assert str(exc) and UNEXPECTED not in str(exc), str(exc)
        assert arr is None, f'a valid file was refused: {exc}'
        return
    check_cloud(cloud)
    if arr is not None:
        ref = np.stack([arr[c].astype(np.float32) for c in 'xyz'], axis=1)
        ref[~np.isfinite(ref).all(axis=1)] = np.nan
        np.testing.assert_array_equal(cloud.points, ref)
        for name in arr.dtype.names[3:]:
            np.testing.assert_array_equal(cloud.fields[name], arr[name])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=3000), st.integers(0, 4))
def test_lzf_matches_the_reference_codec(data, repeat):
    lzf = pytest.importorskip('lzf')
    raw = data * (repeat + 1)              # repeats give long and overlapping references
    packed = lzf.compress(raw) if raw else None
    if packed:
        assert bytes(lzf_decompress(packed, len(raw))) == raw
    assert bytes(lzf_decompress(lzf_store(raw), len(raw))) == raw


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=200), st.integers(0, 600))
def test_lzf_garbage_is_a_cloud_error_or_what_the_reference_makes_of_it(data, size):
    try:
        out = bytes(lzf_decompress(data, size))
    except CloudError as exc:
        assert str(exc)
        return
    assert len(out) == size
    lzf = pytest.importorskip('lzf')
    ref = lzf.decompress(data, size)        # None: python-lzf's "nothing to give"
    assert ref == out or (ref is None and size == 0)
