# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Imports run down the layers: the runtime never depends on the training code.

A robot runs recognition, the ROS node and the runtime backends; the training stack
(data generation, optimisers, evaluation) is for workstations. Only the layers above
it (the CLI commands and the benchmarks) may import it; this scans the source, so a
lazy import inside a function counts too.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'p3d_perception'
TRAINING = 'p3d_perception.training'
ALLOWED = ('training', 'commands', 'benchmarks')


def _imported(source: str, package: list[str]) -> list[tuple[int, str]]:
    """Absolute names a module of ``package`` imports, relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                up = package[:len(package) - node.level + 1]
                base = '.'.join(up + ([base] if base else []))
            out += [(node.lineno, f'{base}.{a.name}') for a in node.names]
            out.append((node.lineno, base))
    return out


def _is_training(name: str) -> bool:
    return name == TRAINING or name.startswith(TRAINING + '.')


def test_only_upper_layers_import_training():
    offenders = []
    for path in sorted(PKG.rglob('*.py')):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ALLOWED:
            continue
        package = ['p3d_perception', *rel.parts[:-1]]
        offenders += [f'{rel}:{line} imports {name}'
                      for line, name in _imported(path.read_text(encoding='utf-8'), package)
                      if _is_training(name)]
    assert not offenders, '\n'.join(offenders)


def test_scanner_sees_every_import_form():
    package = ['p3d_perception', 'model']
    forms = ['import p3d_perception.training.export',
             'from p3d_perception.training import export',
             'from p3d_perception import training',
             'from ..training.export import export_onnx',
             'from .. import training',
             'def f():\n    from p3d_perception.training.export import export_onnx']
    for src in forms:
        assert any(_is_training(n) for _, n in _imported(src, package)), src
    for src in ('from ..runtime import OnnxRuntime', 'from .export import export_encoder',
                'import p3d_perception.trainingwheels'):
        assert not any(_is_training(n) for _, n in _imported(src, package)), src
