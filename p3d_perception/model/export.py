# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The encoder as an ONNX graph, and the private cache the ONNX Runtime backend loads it from.

This lives in the model layer because the runtime needs it: a robot started with
``backend:=onnxruntime`` and no shipped ``encoder.onnx`` exports on the fly, and that
must not pull in the training code. Grouping stays outside the graph (it is a
sequential FPS loop), so the exported network is dense: patches (B,G,K,6), centres
(B,G,3), log-radius (B,1) -> (B,D) with a dynamic batch axis.

A loaded ONNX graph is code the process runs, so the on-the-fly exports are kept
where only this user can write (``$XDG_CACHE_HOME/p3d_perception/onnx``, mode 0700),
named by the sha256 of the weights and export settings, and each one is checked
against the sha256 recorded when it was written before it is handed to ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import stat
import tempfile
import warnings

import numpy as np
import torch

from p3d_perception import __version__
from p3d_perception.config import to_dict
from p3d_perception.model.checkpoint import sha256_file, WEIGHTS
from p3d_perception.model.errors import ModelError
from p3d_perception.model.factory import P3DModel
from p3d_perception.model.grouping import prepare_batch
from p3d_perception.runtime import INPUT_NAMES, OUTPUT_NAME

LOG = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
DEFAULT_BATCH = 4
#: bumped when the exported graph's contract changes, so old cache entries stop matching
CACHE_FORMAT = 'p3d-onnx-cache/1'


def _sample_clusters(n: int, seed: int = 0) -> tuple[list, list]:
    """Plausible object-like clusters (boxes, cylinders, blobs) of varying sizes.

    Tracing and parity need inputs that exercise real grouping, not zeros.
    """
    rng = np.random.default_rng(seed)
    pts, cols = [], []
    for i in range(n):
        m = int(rng.integers(100, 3000))
        u = rng.uniform(-1, 1, (m, 3)) * rng.uniform(0.02, 0.15, 3)
        if i % 2:
            th = rng.uniform(0, 2 * np.pi, m)
            u[:, 0], u[:, 1] = np.cos(th) * 0.04, np.sin(th) * 0.04
        pts.append(u.astype(np.float32) + np.array([0.0, 0.0, 0.1], np.float32))
        cols.append(rng.integers(0, 255, (m, 3), dtype=np.uint8) if i % 3 else None)
    return pts, cols


def _temp_beside(path: Path) -> Path:
    """An unpredictable, exclusively created file in ``path``'s directory.

    Same directory so ``os.replace`` is atomic; random name so nobody can pre-create
    or link it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    return Path(tmp)


def export_encoder(model: P3DModel, out: str | Path, batch: int = DEFAULT_BATCH,
                   opset: int = DEFAULT_OPSET, mode: int = 0o644) -> Path:
    """Trace the encoder into ``out`` with a dynamic batch axis.

    Written to a temp file and renamed, so a reader never sees half a graph. ``mode``
    is explicit because the temp file starts private (0600): a shipped
    ``encoder.onnx`` should be readable like the weights beside it, a cached one not.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = model.encoder.cpu().eval()
    pts, cols = _sample_clusters(batch)
    b = prepare_batch(pts, cols, model.cfg.grouping)
    dyn = {n: {0: 'batch'} for n in INPUT_NAMES}
    dyn[OUTPUT_NAME] = {0: 'batch'}
    tmp = _temp_beside(out)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)   # legacy exporter: dynamic_axes
            torch.onnx.export(enc, (b.patches, b.centers, b.scale), str(tmp),
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_axes=dyn, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
        os.chmod(tmp, mode)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_parity(model: P3DModel, onnx_path: str | Path, batches: tuple[int, ...] = (1, 7, 32),
                 seed: int = 1) -> dict:
    """Max abs difference of ORT vs torch embeddings on real grouped clusters.

    An export that traces but computes something else would otherwise only show up
    as worse recognition on the robot.
    """
    from p3d_perception.runtime import OnnxRuntime
    rt = OnnxRuntime(onnx_path, 'cpu')
    worst = 0.0
    for n in batches:
        pts, cols = _sample_clusters(n, seed + n)
        b = prepare_batch(pts, cols, model.cfg.grouping)
        with torch.no_grad():
            ref = torch.nn.functional.normalize(
                model.encoder.cpu().eval()(b.patches, b.centers, b.scale), dim=-1)
        got = rt(b.patches, b.centers, b.scale)
        worst = max(worst, float((ref - got).abs().max()))
    return {'max_abs_diff': worst, 'batches': list(batches), 'tolerance': PARITY_TOLERANCE,
            'ok': worst <= PARITY_TOLERANCE}


# ------------------------------------------------------------------------ private cache
def cache_root() -> Path:
    """Where exports are cached: the XDG user cache, never the shared temp dir.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec asks.
    """
    base = os.environ.get('XDG_CACHE_HOME', '')
    root = Path(base) if base and os.path.isabs(base) else Path.home() / '.cache'
    return root / 'p3d_perception' / 'onnx'


def _owner_ok(st: os.stat_result) -> bool:
    return not hasattr(os, 'getuid') or st.st_uid == os.getuid()


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory only this user can reach, or raise ModelError.

    A directory others could write may hold planted graphs, so it is wiped and made
    again rather than trusted; one owned by someone else cannot be fixed from here.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.mkdir(mode=0o700, exist_ok=True)    # another process may be creating it too
        st = path.lstat()
    if not _owner_ok(st):
        raise ModelError(f'ONNX cache directory {path} belongs to another user (uid '
                         f'{st.st_uid}); remove it or point XDG_CACHE_HOME at a directory '
                         'of your own')
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        LOG.warning('ONNX cache %s is not a private directory (mode %o); recreating it',
                    path, stat.S_IMODE(st.st_mode))
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
        path.mkdir(mode=0o700)
        st = path.lstat()
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)        # mkdir's mode is filtered by the umask


def private_cache_dir() -> Path:
    """The cache directory, created or repaired so only this user can write there.

    The ``p3d_perception`` level is checked too: whoever can write it could swap the
    ``onnx`` directory for their own.
    """
    onnx_dir = cache_root()
    onnx_dir.parent.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(onnx_dir.parent)
    _private_dir(onnx_dir)
    return onnx_dir


def cache_key(model: P3DModel, weights_sha256: str, *, batch: int = DEFAULT_BATCH,
              opset: int = DEFAULT_OPSET) -> str:
    """sha256 over the weights file and everything else that shapes the graph.

    The architecture and grouping config are part of it because the same weights
    traced with another group count or opset give a different graph.
    """
    settings = {'format': CACHE_FORMAT, 'opset': opset, 'trace_batch': batch,
                'inputs': list(INPUT_NAMES), 'output': OUTPUT_NAME,
                'model': to_dict(model.cfg)}
    h = hashlib.sha256()
    h.update(weights_sha256.encode('ascii'))
    h.update(json.dumps(settings, sort_keys=True).encode('utf-8'))
    return h.hexdigest()


def _cached_ok(onnx: Path, meta: Path, key: str) -> bool:
    """True only when the graph's bytes hash to what was recorded when it was written."""
    if not onnx.exists() and not meta.exists():
        return False                 # never exported: nothing to warn about
    try:
        record = json.loads(meta.read_text(encoding='utf-8'))
        expected = record['onnx_sha256']
        ok = record.get('key') == key and sha256_file(onnx) == expected
    except (OSError, ValueError, KeyError, TypeError) as exc:
        LOG.warning('ONNX cache entry %s is unreadable (%s); exporting it again', onnx, exc)
        return False
    if not ok:
        LOG.warning('ONNX cache entry %s does not match its recorded sha256 (tampered or '
                    'damaged); exporting it again', onnx)
    return ok


def export_onnx_cached(model: P3DModel, model_dir: str | Path, *, batch: int = DEFAULT_BATCH,
                       opset: int = DEFAULT_OPSET) -> Path:
    """A verified ONNX copy of ``model``'s encoder from the private cache, exported if needed.

    ``model`` must be the one loaded from ``model_dir``: the key is taken from the file,
    the graph from the module.
    """
    weights_sha256 = sha256_file(Path(model_dir) / WEIGHTS)
    key = cache_key(model, weights_sha256, batch=batch, opset=opset)
    cache = private_cache_dir()
    onnx, meta = cache / f'encoder_{key}.onnx', cache / f'encoder_{key}.json'
    if _cached_ok(onnx, meta, key):
        return onnx
    LOG.info('exporting encoder to %s for ONNX Runtime', onnx)
    export_encoder(model, onnx, batch=batch, opset=opset, mode=0o600)
    record = {'key': key, 'onnx_sha256': sha256_file(onnx),
              'weights_sha256': weights_sha256,
              'opset': opset, 'trace_batch': batch, 'package_version': __version__}
    tmp = _temp_beside(meta)
    try:
        tmp.write_text(json.dumps(record, indent=2), encoding='utf-8')
        os.replace(tmp, meta)
    finally:
        tmp.unlink(missing_ok=True)
    return onnx
