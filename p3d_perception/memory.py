# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Objects remembered across frames, so ids are stable and queries see the scene.

A robot asks "where is the mug?" about what it has seen, not only about the last
frame (the mug may be occluded right now). Each observation is associated with a
remembered object by position (gated by distance) and appearance (gated by
embedding similarity); the remembered embedding and box are refined with an
exponential moving average, and objects unseen for ``expire_s`` are forgotten.
Association is a greedy global nearest match on a combined cost, which is exact
enough for the handful of objects on a table and keeps this O(N*M) in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import itertools
import threading

import numpy as np

from p3d_perception.config import ConfigError, require_finite


@dataclass
class MemoryConfig:
    """How observations become remembered objects."""

    #: an observation farther than this (m, centroid to centroid) is a new object
    match_distance_m: float = 0.10
    #: and one whose embedding cosine with the remembered one is below this too
    min_embedding_similarity: float = 0.3
    #: forget objects not seen for this long (s); 0 keeps them forever
    expire_s: float = 30.0
    #: weight of a new observation in the moving averages (0..1]
    update_rate: float = 0.3
    #: at most this many objects are remembered (the stalest are dropped first)
    max_objects: int = 500
    #: a remembered object whose centre falls inside another object's box this frame
    #: (a fragment the segmentation has since joined to its whole) is forgotten if it was
    #: seen fewer times than this, or after this many such frames in a row
    absorb_frames: int = 2
    #: margin (m) around an observed box when testing for absorbed fragments
    absorb_margin_m: float = 0.01

    def validate(self) -> None:
        require_finite(self, 'memory.')
        if self.match_distance_m <= 0:
            raise ConfigError('memory.match_distance_m must be > 0')
        if not -1.0 <= self.min_embedding_similarity <= 1.0:
            raise ConfigError('memory.min_embedding_similarity must be in [-1, 1]')
        if self.expire_s < 0:
            raise ConfigError('memory.expire_s must be >= 0 (0 = never expire)')
        if not 0.0 < self.update_rate <= 1.0:
            raise ConfigError('memory.update_rate must be in (0, 1]')
        if self.max_objects < 1:
            raise ConfigError('memory.max_objects must be >= 1')
        if self.absorb_frames < 1:
            raise ConfigError('memory.absorb_frames must be >= 1')
        if self.absorb_margin_m < 0:
            raise ConfigError('memory.absorb_margin_m must be >= 0')


@dataclass
class Observation:
    """One object seen in one frame, in the frame's coordinates."""

    center: np.ndarray            # (3,)
    rotation: np.ndarray          # (3, 3) box axes
    size: np.ndarray              # (3,) box side lengths
    embedding: np.ndarray         # (D,) L2-normalised
    label: str
    score: float
    top_labels: list[str] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    point_count: int = 0


@dataclass
class TrackedObject:
    """A remembered object: the latest box, a smoothed embedding and its history."""

    object_id: int
    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray
    embedding: np.ndarray
    label: str
    score: float
    top_labels: list[str]
    top_scores: list[float]
    point_count: int
    frame_id: str
    first_seen_ns: int
    last_seen_ns: int
    times_seen: int = 1
    #: consecutive frames in which another object's box held this one's centre
    absorbed: int = 0


def _normalise(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


class ObjectMemory:
    """Thread-safe store of tracked objects (the node's query service reads it)."""

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self.config.validate()
        self._objects: dict[int, TrackedObject] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()   # one writer at a time; readers use the snapshot
        self._snapshot: tuple[TrackedObject, ...] = ()

    def __len__(self) -> int:
        return len(self._snapshot)

    def objects(self) -> list[TrackedObject]:
        """The objects as of the last completed update, without waiting for one in progress.

        Queries read this while frames update the memory; a query that had to wait for
        the frame thread's lock would wait behind a thread that runs at a lower priority
        (see ``ros/frame_worker.py``), so readers get copies published at the end of
        every change instead.
        """
        return list(self._snapshot)

    def _publish(self) -> None:
        self._snapshot = tuple(replace(o) for o in self._objects.values())

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()
            self._publish()

    def update(self, observations: list[Observation], frame_id: str,
               stamp_ns: int) -> list[int]:
        """Associate one frame's observations; return the object id of each."""
        cfg = self.config
        with self._lock:
            self._expire(stamp_ns)
            candidates = [o for o in self._objects.values() if o.frame_id == frame_id]
            ids: list[int | None] = [None] * len(observations)
            if candidates and observations:
                obs_c = np.stack([o.center for o in observations])
                mem_c = np.stack([o.center for o in candidates])
                dist = np.linalg.norm(obs_c[:, None, :] - mem_c[None, :, :], axis=2)
                obs_e = np.stack([o.embedding for o in observations])
                mem_e = np.stack([o.embedding for o in candidates])
                sim = obs_e @ mem_e.T
                ok = (dist <= cfg.match_distance_m) & (sim >= cfg.min_embedding_similarity)
                cost = np.where(ok, dist / cfg.match_distance_m + (1.0 - sim), np.inf)
                while np.isfinite(cost).any():
                    i, j = np.unravel_index(np.argmin(cost), cost.shape)
                    ids[i] = candidates[j].object_id
                    self._refine(candidates[j], observations[i], stamp_ns)
                    cost[i, :] = np.inf
                    cost[:, j] = np.inf
            matched = set(ids)
            self._forget_absorbed([o for o in candidates if o.object_id not in matched],
                                  observations)
            for i, obs in enumerate(observations):
                if ids[i] is None:
                    ids[i] = self._add(obs, frame_id, stamp_ns)
            self._trim()
            self._publish()
            return [int(i) for i in ids]

    def expire(self, now_ns: int) -> int:
        """Forget objects unseen for ``expire_s``; return how many were dropped."""
        with self._lock:
            dropped = self._expire(now_ns)
            self._publish()
            return dropped

    def _expire(self, now_ns: int) -> int:
        if self.config.expire_s <= 0:
            return 0
        limit = now_ns - int(self.config.expire_s * 1e9)
        stale = [k for k, o in self._objects.items() if o.last_seen_ns < limit]
        for k in stale:
            del self._objects[k]
        return len(stale)

    def _forget_absorbed(self, unmatched: list[TrackedObject],
                         observations: list[Observation]) -> None:
        """Drop fragments: unmatched objects whose centre lies in an observed box.

        Segmentation sometimes splits an object for a frame (a handle, a half behind an
        occluder); the part is then remembered as an object of its own. When a later
        frame sees the whole again, the part's centre sits inside the whole's box: a
        part seen only briefly is forgotten at once, a long-lived one after
        ``absorb_frames`` such frames (two objects really stacked keep their ids because
        each is matched). Objects merely out of view are untouched (only ``expire_s``).
        """
        cfg = self.config
        for obj in unmatched:
            inside = False
            for obs in observations:
                local = np.asarray(obs.rotation).T @ (obj.center - obs.center)
                if np.all(np.abs(local) <= np.asarray(obs.size) / 2 + cfg.absorb_margin_m):
                    inside = True
                    break
            if not inside:
                obj.absorbed = 0
                continue
            obj.absorbed += 1
            if obj.times_seen < cfg.absorb_frames or obj.absorbed >= cfg.absorb_frames:
                del self._objects[obj.object_id]

    def _trim(self) -> None:
        excess = len(self._objects) - self.config.max_objects
        if excess > 0:
            oldest = sorted(self._objects.values(), key=lambda o: o.last_seen_ns)[:excess]
            for o in oldest:
                del self._objects[o.object_id]

    def _add(self, obs: Observation, frame_id: str, stamp_ns: int) -> int:
        object_id = next(self._ids)
        self._objects[object_id] = TrackedObject(
            object_id=object_id, center=obs.center.astype(np.float64).copy(),
            rotation=obs.rotation.copy(), size=obs.size.astype(np.float64).copy(),
            embedding=_normalise(obs.embedding), label=obs.label, score=float(obs.score),
            top_labels=list(obs.top_labels), top_scores=list(obs.top_scores),
            point_count=int(obs.point_count), frame_id=frame_id,
            first_seen_ns=stamp_ns, last_seen_ns=stamp_ns)
        return object_id

    def _refine(self, obj: TrackedObject, obs: Observation, stamp_ns: int) -> None:
        a = self.config.update_rate
        obj.center = (1 - a) * obj.center + a * obs.center
        obj.size = (1 - a) * obj.size + a * obs.size
        obj.rotation = obs.rotation.copy()
        obj.embedding = _normalise((1 - a) * obj.embedding + a * obs.embedding)
        obj.label, obj.score = obs.label, float(obs.score)
        obj.top_labels, obj.top_scores = list(obs.top_labels), list(obs.top_scores)
        obj.point_count = int(obs.point_count)
        obj.last_seen_ns = max(obj.last_seen_ns, stamp_ns)
        obj.times_seen += 1
        obj.absorbed = 0
