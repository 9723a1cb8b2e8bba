# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Encoder backends: torch (CUDA fp16 / CPU) and ONNX Runtime (TensorRT / CUDA / CPU EPs).

The recogniser only needs "patch tensors in, embeddings out"; hiding the backend
behind that one call lets a robot without torch-CUDA run the exported ONNX graph
(grouping stays in numpy/torch outside it), and lets benchmarks compare backends on
identical inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from p3d_perception.model.errors import ModelError

LOG = logging.getLogger(__name__)

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')

#: ONNX Runtime execution providers per device name, most preferred first.
ORT_PROVIDERS = {
    'cpu': ['CPUExecutionProvider'],
    'cuda': ['CUDAExecutionProvider', 'CPUExecutionProvider'],
    'tensorrt': ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'],
}

INPUT_NAMES = ('patches', 'centers', 'scale')
OUTPUT_NAME = 'embedding'


def resolve_device(device: str) -> str:
    """auto|cpu|cuda[:N] -> an available device; CUDA missing -> warning and CPU."""
    if device in (None, '', 'auto'):
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            LOG.warning('device %r requested but CUDA is not available; using CPU', device)
            return 'cpu'
        return device
    if device != 'cpu':
        raise ModelError(f'unknown device {device!r}; use auto, cpu or cuda')
    return device


#: ``precision`` values: ``auto`` runs the matrix products in half precision where the
#: hardware does them natively (fp16 on CUDA, bf16 on CPUs with AMX tiles), ``fp32`` never
PRECISIONS = ('auto', 'fp32')


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX tiles).

    There oneDNN runs the encoder's linear layers about twice as fast in bf16 as in fp32;
    without AMX bf16 is emulated and slower than fp32, so ``auto`` keeps fp32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):   # an older torch, or no such query
        return False


class TorchRuntime:
    """The encoder module itself, under autocast where the device computes faster so.

    Embeddings are compared by cosine against label prototypes; half-precision products
    move them by about 1e-4 in cosine, far below the gaps between labels, and
    ``p3d bench encoder`` reports the label agreement with fp32 on every run.
    """

    def __init__(self, encoder: torch.nn.Module, device: str, precision: str = 'auto'):
        if precision not in PRECISIONS:
            raise ModelError(f'unknown precision {precision!r}; use one of {PRECISIONS}')
        self.encoder = encoder.to(device).eval()
        self.device = device
        self.device_type = 'cuda' if device.startswith('cuda') else 'cpu'
        self.dtype = None
        if precision == 'auto':
            if self.device_type == 'cuda':
                self.dtype = torch.float16
            elif cpu_has_native_bf16():
                self.dtype = torch.bfloat16
        self.precision = {None: 'fp32', torch.float16: 'fp16',
                          torch.bfloat16: 'bf16'}[self.dtype]
        self.name = f'torch-{device}' + ('' if self.dtype is None else f'-{self.precision}')

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor, centers: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = self.encoder(patches.to(self.device), centers.to(self.device),
                               scale.to(self.device))
        return torch.nn.functional.normalize(out.float(), dim=-1)


class OnnxRuntime:
    """An exported encoder graph run by ONNX Runtime with named execution providers."""

    def __init__(self, onnx_path: str | Path, providers: str | Sequence[str] = 'cpu',
                 threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError('backend onnxruntime needs the onnxruntime (or onnxruntime-gpu) '
                             'package') from exc
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f'ONNX encoder not found: {path}; create it with '
                             '`p3d export --model DIR --out FILE.onnx`')
        wanted = ORT_PROVIDERS.get(providers, None) if isinstance(providers, str) \
            else list(providers)
        if wanted is None:
            raise ModelError(f'unknown ONNX Runtime device {providers!r}; use one of '
                             f'{sorted(ORT_PROVIDERS)} or a list of provider names')
        available = ort.get_available_providers()
        use = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing and missing[0] == wanted[0]:
            LOG.warning('ONNX Runtime provider %s is not available (have %s); falling back to '
                        '%s', wanted[0], available, use)
        if not use:
            use = ['CPUExecutionProvider']
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=use)
        except Exception as exc:  # noqa: BLE001 - corrupt/incompatible graph
            raise ModelError(f'ONNX Runtime cannot load {path} ({exc}); re-export it with '
                             '`p3d export`') from exc
        self.providers = self.session.get_providers()
        self.device = 'cuda' if any(p != 'CPUExecutionProvider' for p in self.providers) \
            else 'cpu'
        self.name = 'onnxruntime-' + self.providers[0].replace('ExecutionProvider', '').lower()

    def __call__(self, patches: torch.Tensor, centers: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
        feeds = {n: t.detach().cpu().numpy().astype(np.float32, copy=False)
                 for n, t in zip(INPUT_NAMES, (patches, centers, scale))}
        out = self.session.run([OUTPUT_NAME], feeds)[0]
        return torch.nn.functional.normalize(torch.from_numpy(out), dim=-1)
