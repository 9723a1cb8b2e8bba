# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Shared test setup: an isolated DDS domain and paths to the repository's data."""

import os
from pathlib import Path
import random

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Keep this run's DDS traffic on loopback and away from other runs on the machine
# (parallel sessions, a demo in another shell): own domain, localhost discovery.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(30, 99)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope='session')
def mosd_dir() -> Path:
    path = SHARED_DATA / 'mosd_learn'
    if not path.is_dir():
        pytest.skip(f'real scans not found at {path} (they live in ../shared/data)')
    return path


@pytest.fixture(scope='session')
def interfaces():
    """Import the generated interfaces; fail clearly if they were not built."""
    try:
        import p3d_perception_interfaces.msg as msg
        import p3d_perception_interfaces.srv as srv
    except ImportError as exc:
        pytest.fail(f'p3d_perception_interfaces is not importable ({exc}); run `make setup` '
                    'and `source install/setup.bash` (make test does both)')
    return msg, srv


#: the small real model the node, bag and fine-tune tests run (fast on 2 cores)
TINY_MODEL = {'grouping': {'num_points': 128, 'num_groups': 16, 'group_size': 8},
              'encoder': {'width': 32, 'depth': 1, 'heads': 2, 'patch_hidden': 16}}


@pytest.fixture(scope='session')
def make_tiny_model():
    """Build a real, small, untrained MiniLM-space model; save it when ``out`` is given.

    These tests check the code paths (node, labelling, fine-tuning), not accuracy.
    """
    import torch
    from p3d_perception.config import from_dict
    from p3d_perception.model.checkpoint import save_model
    from p3d_perception.model.config import ModelConfig
    from p3d_perception.model.factory import create_model

    def make(out=None, *, vocabulary=(), prompt_labels=(), seed=0, command='test fixture',
             label_text='names'):
        torch.manual_seed(seed)
        model = create_model(from_dict(ModelConfig, {**TINY_MODEL, 'label_text': label_text}))
        if out is None:
            return model
        return save_model(model, out, vocabulary=list(vocabulary),
                          prompt_labels=list(prompt_labels), training={'command': command})
    return make


@pytest.fixture
def rclpy_context():
    """Give each test a fresh rclpy context so nodes and middleware state never leak."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
