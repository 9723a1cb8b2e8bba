# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""ONNX export of the encoder matches torch, and the ORT backend serves the Recognizer.

The on-the-fly exports the backend loads are code the process runs, so the tests
also pin down where they are kept and that a planted or altered graph is never run.
"""

import json
import logging
import os
from pathlib import Path
import shutil
import stat
import tempfile

import numpy as np
import pytest
import torch

from p3d_perception.config import from_dict
from p3d_perception.model import export as mexport
from p3d_perception.model.checkpoint import save_model
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.factory import create_model
from p3d_perception.recognize import ModelError, Recognizer
from p3d_perception.runtime import OnnxRuntime, cpu_has_native_bf16
from p3d_perception.training.export import export_onnx

TINY = {'grouping': {'num_points': 64, 'num_groups': 8, 'group_size': 8},
        'encoder': {'width': 32, 'depth': 2, 'heads': 2, 'patch_hidden': 16}}


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Every test gets its own XDG cache, so none writes to the real ~/.cache."""
    home = tmp_path / 'xdg'
    monkeypatch.setenv('XDG_CACHE_HOME', str(home))
    return home


def _save(out: Path, seed: int, cfg: dict = TINY) -> Path:
    torch.manual_seed(seed)
    model = create_model(from_dict(ModelConfig, cfg))
    save_model(model, out, vocabulary=['mug', 'bowl'], prompt_labels=[])
    return out


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp('x') / 'tiny', 1)


@pytest.fixture
def bare_dir(model_dir, tmp_path):
    """The model without a shipped encoder.onnx, so the backend has to use the cache."""
    out = tmp_path / 'bare'
    out.mkdir()
    for name in ('model.safetensors', 'model_card.yaml'):
        shutil.copy(model_dir / name, out / name)
    return out


def _clouds():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(int(rng.integers(50, 500)), 3)).astype(np.float32) * 0.04
            for _ in range(5)]


def _entry(cache: Path) -> tuple[Path, Path]:
    onnx = sorted(cache.glob('encoder_*.onnx'))
    assert len(onnx) == 1, onnx
    return onnx[0], onnx[0].with_suffix('.json')


def test_export_parity_and_dynamic_batch(model_dir, tmp_path):
    report = export_onnx(model_dir, tmp_path / 'enc.onnx')
    assert report['parity']['ok'] and report['parity']['max_abs_diff'] <= 1e-4
    assert report['parity']['batches'] == [1, 7, 32]
    import onnx
    m = onnx.load(str(tmp_path / 'enc.onnx'))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert not list(tmp_path.glob('*.tmp'))


def test_onnxruntime_backend_matches_torch(model_dir, tmp_path):
    clouds = _clouds()
    rt = Recognizer.from_checkpoint(model_dir, device='cpu', precision='fp32')
    export_onnx(model_dir, model_dir / 'encoder.onnx')
    ro = Recognizer.from_checkpoint(model_dir, device='cpu', backend='onnxruntime')
    assert ro.backend == 'onnxruntime' and ro.device == 'cpu'
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    a, b = rt.classify(clouds), ro.classify(clouds)
    assert [x.label for x in a] == [x.label for x in b]
    with pytest.raises(ModelError, match='unknown ONNX Runtime device'):
        OnnxRuntime(model_dir / 'encoder.onnx', 'quantum')
    with pytest.raises(ModelError, match='backend'):
        Recognizer.from_checkpoint(model_dir, backend='tflite')


def test_precision_auto_uses_bf16_only_where_the_cpu_multiplies_it(model_dir):
    clouds = _clouds()
    full = Recognizer.from_checkpoint(model_dir, device='cpu', precision='fp32')
    auto = Recognizer.from_checkpoint(model_dir, device='cpu')
    assert full.runtime_name == 'torch-cpu'
    e32, e_auto = full.embed(clouds), auto.embed(clouds)
    if cpu_has_native_bf16():
        assert auto.runtime_name == 'torch-cpu-bf16'
        assert not np.array_equal(e32, e_auto)          # it did run in bf16
        assert (e32 * e_auto).sum(-1).min() > 0.995     # and stayed where fp32 points
    else:
        assert auto.runtime_name == 'torch-cpu'
        np.testing.assert_array_equal(e32, e_auto)
    with pytest.raises(ModelError, match='precision'):
        Recognizer.from_checkpoint(model_dir, device='cpu', precision='int4')


def test_cache_location_is_the_user_cache_not_tmp(monkeypatch, tmp_path):
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert mexport.cache_root() == tmp_path / 'home' / '.cache' / 'p3d_perception' / 'onnx'
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/dir')       # the XDG spec says ignore it
    assert mexport.cache_root() == tmp_path / 'home' / '.cache' / 'p3d_perception' / 'onnx'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg2'))
    root = mexport.cache_root()
    assert root == tmp_path / 'xdg2' / 'p3d_perception' / 'onnx'
    assert Path(tempfile.gettempdir()) / 'p3d_onnx' not in (root, *root.parents)


def test_cached_export_is_private_and_serves_the_backend(bare_dir, cache_home):
    clouds = _clouds()
    rt = Recognizer.from_checkpoint(bare_dir, device='cpu', precision='fp32')
    ro = Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    cache = cache_home / 'p3d_perception' / 'onnx'
    for d in (cache, cache.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    onnx, meta = _entry(cache)
    assert stat.S_IMODE(onnx.stat().st_mode) == 0o600
    record = json.loads(meta.read_text())
    assert record['onnx_sha256'] == mexport.sha256_file(onnx)
    assert record['weights_sha256'] == mexport.sha256_file(bare_dir / 'model.safetensors')
    assert not (bare_dir / 'encoder.onnx').exists()
    assert not [p for p in cache.iterdir() if p.suffix not in ('.onnx', '.json')]


def test_intact_cache_entry_is_reused(bare_dir, monkeypatch):
    Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    calls = []
    real = mexport.export_encoder
    monkeypatch.setattr(mexport, 'export_encoder',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    assert calls == []


def test_tampered_cache_entry_is_replaced_not_loaded(bare_dir, cache_home, tmp_path, caplog):
    clouds = _clouds()
    Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    onnx, meta = _entry(cache_home / 'p3d_perception' / 'onnx')
    # A working graph of other weights: loading it would run, but embed the wrong thing.
    torch.manual_seed(7)
    other = create_model(from_dict(ModelConfig, TINY))
    mexport.export_encoder(other, tmp_path / 'evil.onnx')
    onnx.write_bytes((tmp_path / 'evil.onnx').read_bytes())
    rt = Recognizer.from_checkpoint(bare_dir, device='cpu', precision='fp32')
    with caplog.at_level(logging.WARNING, logger='p3d_perception.model.export'):
        ro = Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    assert 'does not match its recorded sha256' in caplog.text
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    assert onnx.read_bytes() != (tmp_path / 'evil.onnx').read_bytes()
    assert json.loads(meta.read_text())['onnx_sha256'] == mexport.sha256_file(onnx)
    # a garbled or missing record is no better than a wrong one
    meta.write_text('{not json')
    assert not mexport._cached_ok(onnx, meta, onnx.stem.split('_', 1)[1])
    meta.unlink()
    assert not mexport._cached_ok(onnx, meta, onnx.stem.split('_', 1)[1])


def test_changed_weights_or_settings_change_the_key(bare_dir, cache_home):
    clouds = _clouds()
    Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    cache = cache_home / 'p3d_perception' / 'onnx'
    first, _ = _entry(cache)
    _save(bare_dir, 2)                                    # retrained in place
    rt = Recognizer.from_checkpoint(bare_dir, device='cpu', precision='fp32')
    ro = Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    entries = sorted(cache.glob('encoder_*.onnx'))
    assert len(entries) == 2 and first in entries
    model = rt.model
    sha = mexport.sha256_file(bare_dir / 'model.safetensors')
    keys = {mexport.cache_key(model, sha), mexport.cache_key(model, sha, opset=18),
            mexport.cache_key(model, '0' * 64)}
    regrouped = create_model(from_dict(ModelConfig, dict(
        TINY, grouping={'num_points': 64, 'num_groups': 4, 'group_size': 8})))
    keys.add(mexport.cache_key(regrouped, sha))
    assert len(keys) == 4
    assert mexport.cache_key(model, sha) == mexport.cache_key(model, sha)


@pytest.mark.parametrize('level', ['onnx', 'p3d_perception'])
def test_writable_cache_dir_is_wiped_and_made_private(bare_dir, cache_home, level):
    cache = cache_home / 'p3d_perception' / 'onnx'
    Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    onnx, meta = _entry(cache)
    # Someone who can write the directory can plant a graph and a matching record.
    torch.manual_seed(7)
    mexport.export_encoder(create_model(from_dict(ModelConfig, TINY)), onnx)
    record = json.loads(meta.read_text())
    record['onnx_sha256'] = mexport.sha256_file(onnx)
    meta.write_text(json.dumps(record))
    planted = onnx.read_bytes()
    weak = cache if level == 'onnx' else cache.parent
    os.chmod(weak, 0o777)
    clouds = _clouds()
    rt = Recognizer.from_checkpoint(bare_dir, device='cpu', precision='fp32')
    ro = Recognizer.from_checkpoint(bare_dir, device='cpu', backend='onnxruntime')
    np.testing.assert_allclose(ro.embed(clouds), rt.embed(clouds), atol=1e-4)
    assert stat.S_IMODE(weak.stat().st_mode) == 0o700
    assert onnx.read_bytes() != planted


def test_cache_dir_that_is_a_symlink_is_replaced(cache_home, tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (cache_home / 'p3d_perception').mkdir(parents=True, mode=0o700)
    (cache_home / 'p3d_perception' / 'onnx').symlink_to(elsewhere)
    d = mexport.private_cache_dir()
    assert not d.is_symlink() and d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700
    assert elsewhere.is_dir()                     # the link went, not what it pointed at


def test_cache_dir_of_another_user_is_refused(cache_home, monkeypatch):
    mexport.private_cache_dir()
    monkeypatch.setattr(os, 'getuid', lambda: os.stat(cache_home).st_uid + 1)
    with pytest.raises(ModelError, match='belongs to another user'):
        mexport.private_cache_dir()
