# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Model directories: ``model.safetensors`` + ``model_card.yaml``, written atomically.

safetensors only (never unpickle a file someone handed you); the card is the human
and machine readable identity of the weights: architecture config, text space,
vocabulary, how it was trained and what it scored. Loading checks the card, the
weights' sha256 and the text space, and turns every failure into a ``ModelError``
that says what to do.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from p3d_perception import __version__
from p3d_perception.config import ConfigError, from_dict, to_dict
from p3d_perception.model.config import ModelConfig
from p3d_perception.model.errors import ModelError
from p3d_perception.model.factory import P3DModel, create_model

LOG = logging.getLogger(__name__)

WEIGHTS = 'model.safetensors'
CARD = 'model_card.yaml'
#: safetensors key of the learned label prototypes (names in the card, same order)
PROTOTYPES_KEY = 'label_prototypes'
#: safetensors keys of the labelled-example cache (names and alpha/beta in the card)
CACHE_KEYS, CACHE_LABELS = 'example_cache.keys', 'example_cache.labels'
FORMAT = 'p3d-model/1'


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (weights are tens of MB)."""
    h = hashlib.sha256()
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)


def save_model(model: P3DModel, out_dir: str | Path, *, vocabulary: list[str],
               prompt_labels: list[str], training: dict[str, Any] | None = None,
               metrics: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write a model directory; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS
    state = model.saved_state()
    learned = list(getattr(model, 'label_prototypes', {}) or {})
    if learned:
        state[PROTOTYPES_KEY] = torch.stack([
            F.normalize(model.label_prototypes[n].detach().float().cpu(), dim=-1)
            for n in learned]).contiguous()
    cache = getattr(model, 'example_cache', None)
    cache_card = None
    if cache:
        names = sorted(set(cache['labels']))
        state[CACHE_KEYS] = F.normalize(cache['keys'].detach().float().cpu(), dim=-1)
        state[CACHE_LABELS] = torch.tensor([names.index(n) for n in cache['labels']],
                                           dtype=torch.int64)
        cache_card = {'names': names, 'alpha': float(cache['alpha']),
                      'beta': float(cache['beta']), 'examples': len(cache['labels'])}
    atomic_save_tensors(weights, state,
                        {'format': FORMAT, 'text_space': model.cfg.text_space})
    card = {
        'format': FORMAT,
        'name': name or out.name,
        'package_version': __version__,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'text_space': model.cfg.text_space,
        'model': to_dict(model.cfg),
        'temperature': float(1.0 / model.scale().item()),
        'vocabulary': list(vocabulary),
        'prompt_labels': list(prompt_labels),
        'label_prototypes': learned,
        'example_cache': cache_card,
        'parameters': _parameter_counts(model),
        'training': training or {},
        'metrics': metrics or {},
        'weights': {'file': WEIGHTS, 'sha256': sha256_file(weights)},
    }
    atomic_write_bytes(out / CARD, yaml.safe_dump(card, sort_keys=False,
                                                  allow_unicode=True).encode('utf-8'))
    LOG.info('saved model to %s', out)
    return out


def _parameter_counts(model: P3DModel) -> dict[str, Any]:
    """Encoder size and its trained share (frozen lens backbones excluded)."""
    frozen = tuple(getattr(model.encoder, 'frozen_prefixes', ()))
    total = trained = 0
    for name, p in model.encoder.named_parameters():
        total += p.numel()
        trained += 0 if frozen and name.startswith(frozen) else p.numel()
    return {'encoder': int(total), 'encoder_trained': int(trained),
            'encoder_trained_share': round(trained / max(total, 1), 4),
            'prompt_context': int(model.prompt.ctx.numel())}


def update_card(model_dir: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into an existing card (e.g. metrics after evaluation)."""
    path = Path(model_dir) / CARD
    card = read_card(model_dir)
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k].update(v)
        else:
            card[k] = v
    atomic_write_bytes(path, yaml.safe_dump(card, sort_keys=False,
                                            allow_unicode=True).encode('utf-8'))
    return card


def resolve_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS, CARD):
        p = p.parent
    if not p.exists():
        raise ModelError(f'model not found: {p}. Pass a model directory holding {WEIGHTS} '
                         f'and {CARD} (the bundled one is models/p3d_minilm_real_mosd), or train '
                         'one with `p3d train pretrain --config config/train/minilm_small.yaml`')
    if not p.is_dir():
        raise ModelError(f'{p} is not a model directory (expected {WEIGHTS} + {CARD})')
    for f in (WEIGHTS, CARD):
        if not (p / f).is_file():
            raise ModelError(f'model directory {p} has no {f}; copy the complete directory '
                             'or retrain it')
    return p


def read_card(path: str | Path) -> dict:
    p = resolve_model_dir(path)
    try:
        card = yaml.safe_load((p / CARD).read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f'{p / CARD} is not valid YAML ({exc}); restore the model '
                         'directory') from exc
    if not isinstance(card, dict) or card.get('format') != FORMAT:
        raise ModelError(f'{p / CARD} is not a p3d model card (format {FORMAT} expected)')
    return card


def load_model(path: str | Path, *, text_space: str | None = None,
               device: str | torch.device = 'cpu', verify: bool = True
               ) -> tuple[P3DModel, dict]:
    """Load a model directory -> (model in eval mode, card). ModelError on any problem."""
    p = resolve_model_dir(path)
    card = read_card(p)
    space_name = card.get('text_space')
    if text_space is not None and text_space != space_name:
        raise ModelError(f'model {p} was trained in text space {space_name!r}, not '
                         f'{text_space!r}; embeddings of different spaces are not '
                         f'comparable. Use text_space={space_name!r} or a model trained '
                         f'for {text_space!r}')
    try:
        cfg = from_dict(ModelConfig, card.get('model') or {})
    except (ConfigError, TypeError) as exc:
        raise ModelError(f'{p / CARD}: invalid model config ({exc})') from exc
    if cfg.text_space != space_name:
        raise ModelError(f'{p / CARD}: text_space {space_name!r} disagrees with model config '
                         f'{cfg.text_space!r}')
    weights = p / WEIGHTS
    expected = (card.get('weights') or {}).get('sha256')
    if verify and expected and sha256_file(weights) != expected:
        raise ModelError(f'{weights} does not match the sha256 in its model card (corrupt or '
                         'replaced file); restore the model directory')
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ModelError(f'{weights} is not a readable safetensors file ({exc}); restore the '
                         'model directory') from exc
    model = create_model(cfg)
    learned = state.pop(PROTOTYPES_KEY, None)
    cache_keys, cache_labels = state.pop(CACHE_KEYS, None), state.pop(CACHE_LABELS, None)
    cache_card = card.get('example_cache') or None
    names = list(card.get('label_prototypes') or [])
    if (learned is None) != (not names) or (learned is not None and (
            learned.ndim != 2 or len(learned) != len(names)
            or learned.shape[1] != model.space.dim)):
        raise ModelError(f'{weights}: learned label prototypes do not match the card\'s '
                         f'label_prototypes list ({len(names)} names); restore the model '
                         'directory')
    load_state(model, state, str(weights))
    if names:
        model.label_prototypes = {n: learned[i].float() for i, n in enumerate(names)}
    if (cache_keys is None) != (cache_card is None):
        raise ModelError(f'{weights}: the example cache and the card\'s example_cache entry '
                         'disagree; restore the model directory')
    if cache_card is not None:
        cnames = list(cache_card.get('names') or [])
        if (cache_labels is None or len(cache_labels) != len(cache_keys)
                or cache_keys.shape[-1] != model.space.dim
                or (len(cache_labels) and int(cache_labels.max()) >= len(cnames))):
            raise ModelError(f'{weights}: malformed example cache; restore the model '
                             'directory')
        model.example_cache = {'keys': cache_keys.float(),
                               'labels': [cnames[i] for i in cache_labels.tolist()],
                               'alpha': float(cache_card['alpha']),
                               'beta': float(cache_card['beta'])}
    model.to(device).eval()
    return model, card


def load_state(model: P3DModel, state: dict[str, torch.Tensor], where: str) -> None:
    skip = tuple('encoder.' + s for s in getattr(model.encoder, 'frozen_prefixes', ()))
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(skip)]
    unexpected = [k for k in state if k not in own]
    bad_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or bad_shape:
        raise ModelError(f'{where} does not fit its model card architecture (missing '
                         f'{missing[:3]}, unexpected {unexpected[:3]}, shape {bad_shape[:3]}); '
                         'the card and weights come from different models')
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------- training state / resume
def save_training_state(path: str | Path, model: P3DModel, optimizer: torch.optim.Optimizer,
                        info: dict[str, Any]) -> None:
    """Model + AdamW state + progress in one safetensors file (atomic), for ``--resume``."""
    tensors = {f'model.{k}': v for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    for pid, st in osd['state'].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f'optim.{pid}.{k}'] = t
    meta = {'format': 'p3d-train-state/1',
            'info': json.dumps(info),
            'param_groups': json.dumps(osd['param_groups'])}
    atomic_save_tensors(Path(path), tensors, meta)


def load_training_state(path: str | Path, model: P3DModel,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f'cannot resume: {path} is not a readable training state ({exc})') \
            from exc
    if meta.get('format') != 'p3d-train-state/1':
        raise ModelError(f'cannot resume: {path} is not a p3d training state')
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith('optim.'):
            _, pid, name = k.split('.', 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({'state': state,
                               'param_groups': json.loads(meta['param_groups'])})
    return json.loads(meta['info'])
