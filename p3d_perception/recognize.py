# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Clusters -> labels, scores and embeddings; free-text queries against stored objects.

The one object the pipeline and the ROS node talk to. It hides the encoder backend
(torch / ONNX Runtime), the grouping, the text space and the label prototypes, and
defines what a score *means* so that thresholds are portable:

* ``Recognition.score`` (classify): the softmax probability of the label over the
  current vocabulary, with the model's learned temperature. Scores of one cluster
  sum to 1 over the vocabulary, so 0.5 means "more likely this than everything else
  together"; with a 30-label vocabulary chance is ~0.03.
* ``score_query``: a probability-like score in [0, 1] that an object matches a free
  text query: the object's label probabilities weighted by how well each label
  matches the query in the text space ("something to drink from" -> mug, cup, wine
  glass). A ``min_score`` of ~0.3 keeps objects that are reasonably likely matches and
  answers "no match" for what is not there.
"""

from __future__ import annotations

from collections import OrderedDict
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from p3d_perception.model.errors import ModelError
from p3d_perception.model.grouping import InputError, compile_kernels, prepare_batch
from p3d_perception.runtime import (BACKENDS, PRECISIONS, OnnxRuntime, TorchRuntime,
                                    resolve_device)

__all__ = ['ModelError', 'InputError', 'Recognition', 'Recognizer']

LOG = logging.getLogger(__name__)

UNKNOWN = 'unknown'
#: text-to-label routing (plain sentence embeddings, no templates: templates inflate
#: similarities): temperature, and the similarity a label needs to count at all
QUERY_TEMPERATURE = 0.05
QUERY_NULL_SIMILARITY = 0.40
MAX_BATCH = 256
#: query texts whose features are kept
QUERY_CACHE = 256


@dataclass
class Recognition:
    """One cluster's result; ``label`` is 'unknown' when ``score`` < the threshold."""

    label: str
    score: float
    top_labels: list[str]
    top_scores: list[float]
    embedding: np.ndarray   # (D,) float32, L2-normalised


def _canonical(label: str) -> str:
    return ' '.join(str(label).strip().split())


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """Rotation matrix taking unit vector ``up`` to +z (Rodrigues)."""
    u = np.asarray(up, np.float64).reshape(3)
    n = np.linalg.norm(u)
    if not np.isfinite(n) or n < 1e-9:
        raise InputError(f'up vector must be a non-zero 3-vector, got {up!r}')
    u = u / n
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(u, z)
    c = float(u @ z)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * (1.0 / (1.0 + c))


class Recognizer:
    """A loaded model with a vocabulary. Thread-safe for concurrent classify/query calls.

    Clusters are expected in a frame whose +z is up (gravity), like the training views;
    pass ``up`` (the support plane normal, in the cluster's frame) otherwise.
    """

    def __init__(self, model, card: dict, *, device: str, backend: str = 'torch',
                 runtime=None, vocabulary: Sequence[str] | None = None,
                 up: Sequence[float] | None = None):
        self.model = model
        self.card = card
        self.device = device
        self.backend = backend
        self.text_space = model.cfg.text_space
        self._runtime = runtime or TorchRuntime(model.encoder, device)
        self._space = model.space
        self._prompt_labels = set(card.get('prompt_labels') or [])
        training = card.get('training') or {}
        #: labels whose classes the encoder was trained on (they get the seen-class bias)
        self._trained_labels = set(training.get('train_categories') or []) | \
            self._prompt_labels
        self.seen_bias = float((card.get('open_vocab') or {}).get('seen_bias', 0.0))
        self._proto_cache: dict[str, torch.Tensor] = {}
        self._cache = None
        self._lock = threading.RLock()
        self._qlock = threading.Lock()
        self._qcache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._rng_seed = 0
        self._up_rot: np.ndarray | None = None
        if up is not None:
            self.set_up_vector(up)
        self.vocabulary: list[str] = []
        self._protos = torch.zeros(0, model.space.dim)
        self.set_vocabulary(list(vocabulary) if vocabulary is not None
                            else list(card.get('vocabulary') or []))
        compile_kernels()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = 'auto', backend: str = 'torch',
                        text_space: str | None = None,
                        vocabulary: Sequence[str] | None = None,
                        onnx_path: str | Path | None = None,
                        up: Sequence[float] | None = None,
                        precision: str = 'auto') -> 'Recognizer':
        """Load a model directory.

        ``device`` auto|cpu|cuda (CUDA missing -> warning, CPU); ``backend`` torch |
        onnxruntime | tensorrt (ONNX Runtime with the TensorRT EP first). The ONNX graph
        is ``onnx_path``, else ``<model>/encoder.onnx``, else exported on the fly into
        the user's private cache (verified against its recorded sha256 on every load).
        ``text_space`` must equal the checkpoint's or ModelError is raised. ``precision``
        (torch backend) auto: fp16 on CUDA, bf16 on CPUs with AMX, fp32 elsewhere; fp32.
        """
        from p3d_perception.model.checkpoint import load_model
        if backend not in BACKENDS:
            raise ModelError(f'unknown backend {backend!r}; use one of {BACKENDS}')
        if precision not in PRECISIONS:
            raise ModelError(f'unknown precision {precision!r}; use one of {PRECISIONS}')
        dev = resolve_device(device)
        model, card = load_model(path, text_space=text_space, device='cpu')
        runtime = None
        if backend == 'torch':
            model.to(dev)
            runtime = TorchRuntime(model.encoder, dev, precision)
        else:
            from p3d_perception.model.checkpoint import resolve_model_dir
            model_dir = resolve_model_dir(path)
            onnx = Path(onnx_path) if onnx_path else model_dir / 'encoder.onnx'
            if not onnx.is_file():
                if onnx_path:
                    raise ModelError(f'ONNX encoder not found: {onnx}')
                from p3d_perception.model.export import export_onnx_cached
                onnx = export_onnx_cached(model, model_dir)
            ep = 'tensorrt' if backend == 'tensorrt' else ('cuda' if dev != 'cpu' else 'cpu')
            runtime = OnnxRuntime(onnx, ep)
            dev = runtime.device
        LOG.info('recognizer: %s (%s, text space %s, %d labels)', card.get('name'),
                 runtime.name, card.get('text_space'), len(card.get('vocabulary') or []))
        return cls(model, card, device=dev, backend=backend, runtime=runtime,
                   vocabulary=vocabulary, up=up)

    @property
    def runtime_name(self) -> str:
        """What runs the encoder, e.g. torch-cpu-bf16 or onnxruntime-cpu."""
        return self._runtime.name

    # ------------------------------------------------------------------ vocabulary
    def set_up_vector(self, up: Sequence[float] | None) -> None:
        """Gravity 'up' of the incoming clusters' frame (e.g. support plane normal)."""
        self._up_rot = None if up is None else rotation_to_z(np.asarray(up))

    @torch.no_grad()
    def _prototypes(self, labels: list[str]) -> torch.Tensor:
        """Prototypes of ``labels`` (cached).

        Learned few-shot prototypes from a fine-tune first, then the prompt head where
        it was trained, zero-shot text features otherwise.
        """
        missing = [c for c in labels if c not in self._proto_cache]
        learned = getattr(self.model, 'label_prototypes', {}) or {}
        for c in [c for c in missing if c in learned]:
            self._proto_cache[c] = F.normalize(learned[c].float().cpu(), dim=-1)
        missing = [c for c in missing if c not in learned]
        tuned = [c for c in missing if c in self._prompt_labels]
        if tuned:
            self.model.prompt.to('cpu')
            for c, p in zip(tuned, self.model.prompt_prototypes(tuned).float().cpu()):
                self._proto_cache[c] = p
        other = [c for c in missing if c not in self._prompt_labels]
        if other:
            for c, p in zip(other, self.model.zero_shot_prototypes(other).float().cpu()):
                self._proto_cache[c] = p
        return torch.stack([self._proto_cache[c] for c in labels])

    def set_descriptions(self, path: str | Path | None) -> int:
        """Use the user's description lines (YAML: label -> lines) over the bundled ones.

        Only a model aligned to descriptions (``label_text: descriptions``) reads them;
        for others this is refused, because their prototypes are built from names.
        Returns how many labels the file describes; ``None`` or '' clears them.
        """
        from p3d_perception.model.descriptions import load_descriptions
        lines = dict(load_descriptions(path)) if path else {}
        if lines and self.model.cfg.label_text != 'descriptions':
            raise InputError(f'model {self.card.get("name")} builds label prototypes from '
                             'names (label_text: names); descriptions need a model trained '
                             'with label_text: descriptions')
        with self._lock:
            self.model.extra_descriptions = lines
            self._proto_cache.clear()
            self.set_vocabulary(self.vocabulary)
        return len(lines)

    def set_vocabulary(self, labels: Sequence[str]) -> None:
        """Set the labels to classify into.

        Prompt-tuned prototypes where the label was trained, template-averaged zero-shot
        text features otherwise; both cached.
        """
        if isinstance(labels, str):
            raise InputError('set_vocabulary expects a list of labels, not one string')
        clean: list[str] = []
        for label in labels:
            c = _canonical(label)
            if not c:
                raise InputError('vocabulary labels must be non-empty strings')
            if c not in clean:
                clean.append(c)
        if not clean:
            raise InputError('vocabulary must contain at least one label')
        with self._lock:
            protos = self._prototypes(clean)
            self.vocabulary = clean
            self._protos = protos
            self._text_protos = self.model.zero_shot_prototypes(clean).float().cpu()
            self._plain = self._space.encode(clean).float().cpu()
            self._bias = torch.tensor([self.seen_bias if c in self._trained_labels else 0.0
                                       for c in clean])
            self._cache = self._example_cache(clean)

    def _example_cache(self, vocab: list[str]):
        """(keys, one-hot over ``vocab``, alpha, beta) of cached examples in the vocabulary."""
        cache = getattr(self.model, 'example_cache', None)
        if not cache:
            return None
        rows = [i for i, n in enumerate(cache['labels']) if n in vocab]
        if not rows:
            return None
        onehot = torch.zeros(len(rows), len(vocab))
        onehot[torch.arange(len(rows)), torch.tensor([vocab.index(cache['labels'][i])
                                                      for i in rows])] = 1.0
        keys = F.normalize(cache['keys'][rows].float().cpu(), dim=-1)
        return keys, onehot, float(cache['alpha']), float(cache['beta'])

    # ------------------------------------------------------------------ embeddings
    def _prepare(self, points, colors):
        if isinstance(points, np.ndarray) and points.ndim == 2:
            points = [points]
            colors = None if colors is None else [colors]
        points = list(points)
        if colors is not None:
            colors = list(colors)
            if len(colors) != len(points):
                raise InputError(f'{len(points)} clusters but {len(colors)} color arrays')
        if self._up_rot is not None:
            rot = self._up_rot.T.astype(np.float32)
            points = [np.asarray(p, np.float32) @ rot for p in points]
        return points, colors

    @torch.no_grad()
    def _embed_tensor(self, points, colors) -> torch.Tensor:
        points, colors = self._prepare(points, colors)
        if not points:
            return torch.zeros(0, self._space.dim)
        grouping = self.model.cfg.grouping
        out = []
        for s in range(0, len(points), MAX_BATCH):
            cols = None if colors is None else colors[s:s + MAX_BATCH]
            rng = np.random.default_rng(self._rng_seed)
            dev = self.device if self.backend == 'torch' else 'cpu'
            batch = prepare_batch(points[s:s + MAX_BATCH], cols, grouping, rng, dev)
            out.append(self._runtime(batch.patches, batch.centers, batch.scale).float().cpu())
        return torch.cat(out)

    def embed(self, points, colors=None) -> np.ndarray:
        """(B, D) float32 L2-normalised embeddings, one batched encoder call."""
        return self._embed_tensor(points, colors).numpy().astype(np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(T, D) float32 L2-normalised text features (template-averaged, cached)."""
        if isinstance(texts, str):
            texts = [texts]
        clean = [_canonical(t) for t in texts]
        if any(not t for t in clean):
            raise InputError('texts must be non-empty strings')
        if not clean:
            return np.zeros((0, self._space.dim), np.float32)
        with self._lock:
            return self._space.prototypes(clean).numpy().astype(np.float32)

    # ------------------------------------------------------------------ classification
    def label_logits(self, emb: torch.Tensor, protos: torch.Tensor | None = None,
                     seen_bias: bool = True) -> torch.Tensor:
        """(B, V) logits: temperature x (cosine - seen-class bias).

        The bias (calibrated stacking) is subtracted from labels the encoder was trained
        on, offsetting the pull of trained classes on objects of new categories; its
        value comes from the model card (chosen on seen-class validation data only).
        """
        protos = self._protos if protos is None else protos
        cos = emb @ protos.T
        if seen_bias and self.seen_bias and protos is self._protos:
            cos = cos - self._bias
        return self.model.scale().item() * cos

    def label_probs(self, emb: torch.Tensor) -> torch.Tensor:
        """Label probabilities; with a fine-tune's example cache, Tip-Adapter style.

        A few labelled clusters of look-alike categories (kettle, teapot) are told apart
        better by their nearest examples than by one prototype each, so the softmax over
        prototypes is mixed with ``alpha * sum exp(-beta (1 - cos))`` over the cached
        examples of each label, then renormalised.
        """
        probs = self.label_logits(emb).softmax(dim=-1)
        if self._cache is None:
            return probs
        keys, onehot, alpha, beta = self._cache
        affinity = torch.exp(-beta * (1.0 - emb @ keys.T)) @ onehot
        probs = probs + alpha * affinity
        return probs / probs.sum(dim=-1, keepdim=True)

    def classify(self, points, colors=None, *, top_k: int = 5,
                 unknown_threshold: float = 0.0) -> list[Recognition]:
        """Label every cluster of a frame in one batched encoder call.

        ``score`` is the softmax probability over the vocabulary (see module doc);
        ``label`` becomes 'unknown' when it is below ``unknown_threshold``.
        """
        if top_k < 1:
            raise InputError('top_k must be >= 1')
        emb = self._embed_tensor(points, colors)
        if len(emb) == 0:
            return []
        with self._lock:
            probs = self.label_probs(emb)
            vocab = list(self.vocabulary)
        k = min(top_k, len(vocab))
        top = probs.topk(k, dim=-1)
        out = []
        for i in range(len(emb)):
            labels = [vocab[j] for j in top.indices[i].tolist()]
            scores = [float(s) for s in top.values[i].tolist()]
            label = labels[0] if scores[0] >= unknown_threshold else UNKNOWN
            out.append(Recognition(label, scores[0], labels, scores,
                                   emb[i].numpy().astype(np.float32)))
        return out

    # ------------------------------------------------------------------ queries
    def _query_feature(self, q: str) -> torch.Tensor:
        """The query's text feature, remembered for the last QUERY_CACHE texts.

        A robot asks the same few questions over and over; the text encoder is most of
        a query's cost. Computed outside the recognizer lock, so a frame being
        classified need not wait for it.
        """
        with self._qlock:
            hit = self._qcache.get(q)
            if hit is not None:
                self._qcache.move_to_end(q)
                return hit
        feat = self._space.query_feature(q).float()
        with self._qlock:
            self._qcache[q] = feat
            while len(self._qcache) > QUERY_CACHE:
                self._qcache.popitem(last=False)
        return feat

    def score_query(self, text: str, embeddings: np.ndarray) -> np.ndarray:
        """(K,) scores in [0, 1]: how well each stored object matches a free-text query.

        Queries go through what the node knows: an object's label probabilities, each
        weighted by how well that label answers the query, relative to the query's best
        explanation, where a null option stands for the part of the query no label
        explains ("something to drink from" -> mug, cup, bottle; "something to sit on"
        with no seat-like label -> ~0, add such a label with ``set_vocabulary``).
        Relative, not a share: "a box" is answered fully by a cereal box and almost as
        well by a tissue box; shares split it, so a box the model was sure of scored
        ~0.3 and fell under the node's ``min_score`` (real scans, 2-fold: present-class
        retrieval@1 78 -> 87 %, absent rejection 95 -> 93 %). Comparing the object's
        embedding with the query's text directly was dropped: on real scans it let a tin
        answer "a box" and gave absent objects a match.
        """
        if not isinstance(text, str) or not _canonical(text):
            raise InputError('query text must be a non-empty string')
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim == 1 and emb.size == 0:
            return np.zeros(0, np.float32)
        if emb.ndim != 2 or emb.shape[1] != self._space.dim:
            raise InputError(f'embeddings must have shape (K, {self._space.dim}), got '
                             f'{emb.shape}')
        if len(emb) == 0:
            return np.zeros(0, np.float32)
        e = F.normalize(torch.from_numpy(emb), dim=-1)
        q = _canonical(text)
        qp = self._query_feature(q)
        with self._lock:
            probs = self.label_probs(e)                              # (K, V)
            sim = self._plain @ qp                                   # (V,)
            best = torch.clamp(sim.max(), min=QUERY_NULL_SIMILARITY)
            w = ((sim - best) / QUERY_TEMPERATURE).exp()             # (V,) in (0, 1]
        return (probs @ w).clamp(0, 1).numpy().astype(np.float32)
