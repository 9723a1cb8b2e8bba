# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Object memory: stable ids, refinement, expiry, and forgetting absorbed fragments."""

import numpy as np
import pytest

from p3d_perception.config import ConfigError
from p3d_perception.memory import MemoryConfig, Observation, ObjectMemory

FRAME = 'camera'
SEC = 1_000_000_000


def _emb(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _obs(center, size=(0.1, 0.1, 0.1), emb_seed=0, label='mug') -> Observation:
    return Observation(center=np.asarray(center, float), rotation=np.eye(3),
                       size=np.asarray(size, float), embedding=_emb(emb_seed),
                       label=label, score=0.9)


def test_ids_stay_stable_and_poses_are_refined():
    mem = ObjectMemory(MemoryConfig(update_rate=0.5))
    a, b = mem.update([_obs([0, 0, 1], emb_seed=1), _obs([0.3, 0, 1], emb_seed=2)], FRAME, 0)
    # the next frame lists them in the other order, each moved by 2 cm
    ids = mem.update([_obs([0.32, 0, 1], emb_seed=2), _obs([0.02, 0, 1], emb_seed=1)],
                     FRAME, SEC)
    assert ids == [b, a] and a != b and len(mem) == 2
    obj = {o.object_id: o for o in mem.objects()}[a]
    np.testing.assert_allclose(obj.center, [0.01, 0, 1])  # moving average at rate 0.5
    assert obj.times_seen == 2 and obj.last_seen_ns == SEC


def test_far_or_different_looking_observation_is_a_new_object():
    mem = ObjectMemory(MemoryConfig(match_distance_m=0.1, min_embedding_similarity=0.5))
    [a] = mem.update([_obs([0, 0, 1], emb_seed=1)], FRAME, 0)
    [far] = mem.update([_obs([0.5, 0, 1], emb_seed=1)], FRAME, 1)
    [other] = mem.update([_obs([0, 0, 1], emb_seed=7)], FRAME, 2)   # same place, new look
    assert len({a, far, other}) == 3
    [other_frame] = mem.update([_obs([0, 0, 1], emb_seed=1)], 'map', 3)
    assert other_frame not in (a, far, other)    # positions in other frames don't compare


def test_unseen_objects_expire_and_the_stalest_are_trimmed():
    mem = ObjectMemory(MemoryConfig(expire_s=2.0, max_objects=2))
    mem.update([_obs([0, 0, 1], emb_seed=1)], FRAME, 0)
    mem.update([_obs([1, 0, 1], emb_seed=2)], FRAME, 1 * SEC)
    mem.update([_obs([2, 0, 1], emb_seed=3)], FRAME, 1 * SEC + 1)
    assert len(mem) == 2 and 0 not in [o.last_seen_ns for o in mem.objects()]
    assert mem.expire(10 * SEC) == 2 and len(mem) == 0


def test_a_fragment_joined_to_its_whole_is_forgotten():
    mem = ObjectMemory(MemoryConfig(absorb_frames=2))
    # frame 0: a pan is split into body and handle; frame 1: seen whole (a wider box)
    body, handle = mem.update([_obs([0, 0, 1], emb_seed=1),
                               _obs([0.12, 0, 1], size=(0.08, 0.03, 0.03), emb_seed=2)],
                              FRAME, 0)
    [whole] = mem.update([_obs([0.03, 0, 1], size=(0.3, 0.2, 0.1), emb_seed=1)], FRAME, SEC)
    assert whole == body
    assert [o.object_id for o in mem.objects()] == [body]


def test_long_lived_parts_need_absorb_frames_and_out_of_view_objects_stay():
    mem = ObjectMemory(MemoryConfig(absorb_frames=2))
    split = [_obs([0, 0, 1], emb_seed=1), _obs([0.12, 0, 1], size=(0.08, 0.03, 0.03),
                                               emb_seed=2),
             _obs([1.0, 0, 1], emb_seed=3)]                          # elsewhere on the table
    mem.update(split, FRAME, 0)
    ids = mem.update(split, FRAME, 1)
    whole = [_obs([0.03, 0, 1], size=(0.3, 0.2, 0.1), emb_seed=1)]  # object 3 out of view
    mem.update(whole, FRAME, 2)
    assert sorted(o.object_id for o in mem.objects()) == sorted(ids)  # one frame: kept
    mem.update(whole, FRAME, 3)
    assert sorted(o.object_id for o in mem.objects()) == [ids[0], ids[2]]


def test_touching_neighbours_are_not_absorbed():
    mem = ObjectMemory(MemoryConfig(absorb_frames=1))
    pair = [_obs([0, 0, 1], emb_seed=1), _obs([0.1, 0, 1], emb_seed=2)]  # boxes touch
    mem.update(pair, FRAME, 0)
    mem.update(pair[:1], FRAME, 1)       # the neighbour is hidden this frame
    assert len(mem) == 2


BAD_VALUES = [('match_distance_m', 0.0), ('update_rate', 0.0), ('expire_s', -1.0),
              ('absorb_frames', 0), ('min_embedding_similarity', 2.0),
              ('absorb_margin_m', -0.1), ('max_objects', 0)]


@pytest.mark.parametrize('field,value', BAD_VALUES)
def test_invalid_config_is_refused_with_the_field_named(field, value):
    with pytest.raises(ConfigError, match=field):
        ObjectMemory(MemoryConfig(**{field: value}))


@pytest.mark.parametrize('field', ['expire_s', 'match_distance_m', 'update_rate',
                                   'absorb_margin_m', 'min_embedding_similarity'])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_values_are_refused_with_the_field_named(field, value):
    with pytest.raises(ConfigError, match=f'memory.{field} must be a finite number'):
        ObjectMemory(MemoryConfig(**{field: value}))


def test_nan_from_yaml_is_refused_before_a_frame_can_fail(tmp_path):
    import yaml
    from p3d_perception.config import load
    from p3d_perception.pipeline import PipelineConfig
    path = tmp_path / 'p.yaml'
    path.write_text('memory:\n  expire_s: .nan\n')
    assert np.isnan(yaml.safe_load(path.read_text())['memory']['expire_s'])
    with pytest.raises(ConfigError, match='memory.expire_s must be a finite number'):
        load(PipelineConfig, path)
    path.write_text('memory:\n  match_distance_m: .inf\n')
    with pytest.raises(ConfigError, match='memory.match_distance_m'):
        load(PipelineConfig, path)
