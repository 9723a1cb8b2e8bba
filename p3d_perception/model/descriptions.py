# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Visual descriptions of labels: text that says what an object looks like.

A name alone ("kettle") tells a text encoder little about shape; a line such as
"a metal pot for boiling water with a spout, a lid and a handle on top" shares words
with labels the 3D encoder was trained on (teapot: "a spout", "a lid"). Prototypes
built from such lines let a label never trained on borrow what the encoder learned
about those words - the attribute route of zero-shot learning, written in text.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping

import yaml

LEXICON = Path(__file__).with_name('descriptions.yaml')


@functools.lru_cache(maxsize=64)
def _lexicon(path: str, stamp: tuple[int, int]) -> dict[str, tuple[str, ...]]:
    """Parse a lexicon; ``stamp`` (mtime, size) keys the cache so an edited file is re-read."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding='utf-8')) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f'{path}: not valid YAML ({exc})') from None
    except UnicodeDecodeError as exc:
        raise ValueError(f'{path}: not UTF-8 text ({exc})') from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a mapping of label -> list of descriptions')
    out: dict[str, tuple[str, ...]] = {}
    for label, lines in data.items():
        if isinstance(lines, str):
            lines = [lines]
        if not isinstance(lines, list) or not all(isinstance(x, str) and x.strip()
                                                  for x in lines):
            raise ValueError(f'{path}: {label!r} must map to a list of non-empty strings')
        out[label_key(str(label))] = tuple(' '.join(x.split()) for x in lines)
    return out


def label_key(label: str) -> str:
    """How a label is looked up in a lexicon: lower case, single spaces."""
    return ' '.join(label.lower().split())


def load_descriptions(path: str | Path | None = None) -> Mapping[str, tuple[str, ...]]:
    """Label -> description lines, from ``path`` or the bundled lexicon."""
    path = Path(path or LEXICON)
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f'cannot read descriptions file {path}: {exc.strerror}') from None
    return _lexicon(str(path), (st.st_mtime_ns, st.st_size))
