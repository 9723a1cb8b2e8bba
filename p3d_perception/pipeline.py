# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Cloud in, labelled and remembered objects out: the node's work without ROS.

The ROS node only converts messages and publishes; everything that decides what
is seen lives here, so scripts, benchmarks, the demo and tests run the exact code
the robot runs. One frame is: segment -> one batched encoder call for all
clusters -> labels -> memory association (stable ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import time
from typing import Protocol

import numpy as np

from p3d_perception.cloud import Cloud
from p3d_perception.config import ConfigError, require_finite
from p3d_perception.memory import MemoryConfig, Observation, ObjectMemory, TrackedObject
from p3d_perception.segmentation import Cluster, SegmentationConfig, Segmenter

log = logging.getLogger(__name__)

#: longest query text accepted by :meth:`Pipeline.query`
MAX_QUERY_CHARS = 256


class QueryError(ValueError):
    """A query that cannot be answered; the message is the reason given to the caller."""


class RecognizerLike(Protocol):
    """What the pipeline needs of :class:`p3d_perception.recognize.Recognizer`."""

    vocabulary: list[str]

    def classify(self, points, colors=None, *, top_k=5, unknown_threshold=0.0): ...

    def score_query(self, text: str, embeddings: np.ndarray) -> np.ndarray: ...

    def set_vocabulary(self, labels: list[str]) -> None: ...


@dataclass
class PipelineConfig:
    """Recognition and tracking settings (segmentation has its own dataclass)."""

    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    #: alternatives reported per detection
    top_k: int = 5
    #: below this score a detection is labelled "unknown"
    unknown_threshold: float = 0.15
    #: at most this many clusters (the largest) are recognised per frame
    max_objects_per_frame: int = 32
    #: clusters with fewer points are not recognised (too little shape to tell)
    min_points_to_recognise: int = 40

    def validate(self) -> None:
        require_finite(self)   # segmentation.* and memory.* included
        if self.top_k < 1:
            raise ConfigError('top_k must be >= 1')
        if not 0.0 <= self.unknown_threshold <= 1.0:
            raise ConfigError('unknown_threshold must be in [0, 1]')
        if self.max_objects_per_frame < 1:
            raise ConfigError('max_objects_per_frame must be >= 1')
        if self.min_points_to_recognise < 1:
            raise ConfigError('min_points_to_recognise must be >= 1')
        self.segmentation.validate()
        self.memory.validate()


@dataclass
class Detection:
    """One labelled object in one frame."""

    object_id: int
    label: str
    score: float
    top_labels: list[str]
    top_scores: list[float]
    center: np.ndarray      # (3,) box centre in the cloud's frame
    rotation: np.ndarray    # (3, 3) box axes (columns)
    size: np.ndarray        # (3,) box side lengths, metres
    point_count: int
    cluster: Cluster
    embedding: np.ndarray


@dataclass
class FrameResult:
    """Everything one frame produced, with per-stage timings for diagnostics."""

    cloud: Cloud
    detections: list[Detection]
    labels: np.ndarray                  # per input point: index into detections, or -1
    timings_ms: dict[str, float]


@dataclass
class QueryMatch:
    """A remembered object and how well it matches a text query (0..1)."""

    object: TrackedObject
    score: float


def validate_query(text: str) -> str:
    """Return the stripped query or raise QueryError with the reason."""
    if not isinstance(text, str):
        raise QueryError('query must be a string')
    stripped = text.strip()
    if not stripped:
        raise QueryError('query is empty: say what to look for, e.g. "a mug"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f'query is too long ({len(text)} characters, at most '
                         f'{MAX_QUERY_CHARS})')
    if not stripped.isprintable():
        raise QueryError('query contains non-printable characters')
    return stripped


class Pipeline:
    """Segmenter + recognizer + memory, configured once, run per frame."""

    def __init__(self, recognizer: RecognizerLike, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.config.validate()
        self.recognizer = recognizer
        self.segmenter = Segmenter(self.config.segmentation)
        self.memory = ObjectMemory(self.config.memory)

    def process(self, cloud: Cloud) -> FrameResult:
        t0 = time.perf_counter()
        seg = self.segmenter(cloud)
        t1 = time.perf_counter()
        min_points = self.config.min_points_to_recognise
        clusters = [c for c in seg.clusters if len(c.indices) >= min_points]
        clusters.sort(key=lambda c: len(c.indices), reverse=True)
        clusters = clusters[:self.config.max_objects_per_frame]
        recognitions = []
        set_up = getattr(self.recognizer, 'set_up_vector', None)
        if seg.planes and set_up is not None:
            set_up(np.asarray(seg.planes[0][:3]))  # the table's normal is gravity's up
        if clusters:
            recognitions = self.recognizer.classify(
                [c.points for c in clusters],
                [c.colors for c in clusters] if cloud.colors is not None else None,
                top_k=self.config.top_k, unknown_threshold=self.config.unknown_threshold)
        t2 = time.perf_counter()
        observations = [
            Observation(center=c.box.center, rotation=c.box.rotation, size=c.box.extent,
                        embedding=r.embedding, label=r.label, score=r.score,
                        top_labels=r.top_labels, top_scores=r.top_scores,
                        point_count=len(c.indices))
            for c, r in zip(clusters, recognitions)]
        ids = self.memory.update(observations, cloud.frame_id, cloud.stamp_ns)
        t3 = time.perf_counter()
        detections = []
        labels = np.full(len(cloud), -1, dtype=np.int32)
        for k, (c, r, object_id) in enumerate(zip(clusters, recognitions, ids)):
            labels[c.indices] = k
            detections.append(Detection(
                object_id=object_id, label=r.label, score=float(r.score),
                top_labels=list(r.top_labels), top_scores=[float(s) for s in r.top_scores],
                center=np.asarray(c.box.center, dtype=np.float64),
                rotation=np.asarray(c.box.rotation, dtype=np.float64),
                size=np.asarray(c.box.extent, dtype=np.float64),
                point_count=len(c.indices), cluster=c, embedding=r.embedding))
        timings = {f'segment_{k}': v for k, v in seg.timings_ms.items()}
        timings.update(segment=(t1 - t0) * 1e3, recognize=(t2 - t1) * 1e3,
                       memory=(t3 - t2) * 1e3, total=(t3 - t0) * 1e3)
        return FrameResult(cloud=cloud, detections=detections, labels=labels,
                           timings_ms=timings)

    def query(self, text: str, top_k: int = 3, min_score: float = 0.0) -> list[QueryMatch]:
        """Rank remembered objects for a free-text query, best first."""
        text = validate_query(text)
        if top_k < 1:
            raise QueryError('top_k must be >= 1')
        if not 0.0 <= min_score <= 1.0:
            raise QueryError(f'min_score must be in [0, 1], got {min_score}')
        objects = self.memory.objects()
        if not objects:
            return []
        scores = np.asarray(self.recognizer.score_query(
            text, np.stack([o.embedding for o in objects])), dtype=np.float64)
        order = np.argsort(-scores)
        return [QueryMatch(objects[i], float(scores[i])) for i in order[:top_k]
                if scores[i] >= min_score]

    def set_vocabulary(self, labels: list[str]) -> None:
        cleaned = [str(x).strip() for x in labels]
        if not cleaned or any(not x or not x.isprintable() for x in cleaned):
            raise ConfigError('vocabulary must be a non-empty list of non-empty printable labels')
        if len(set(cleaned)) != len(cleaned):
            raise ConfigError('vocabulary has duplicate labels')
        self.recognizer.set_vocabulary(cleaned)
