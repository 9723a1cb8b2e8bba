# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Where the package's own files are: share/ when installed by colcon, else the checkout.

A colcon install puts config/, launch/ and models/ under share/p3d_perception;
a source checkout (make setup, editable install) keeps them beside the code. The
node, the demo and the CLI find the bundled model the same way in both.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = 'p3d_perception'
#: folder name of the bundled model under models/
DEFAULT_MODEL_NAME = 'p3d_minilm_real_mosd'


def share_dir() -> Path:
    """Return the package's share directory, or the repository root in a checkout."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / 'package.xml').is_file() and (checkout / 'models').is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, ValueError):
        return checkout


def bundled_model_path(name: str) -> Path:
    """A model folder shipped under models/ (``DEFAULT_MODEL_NAME`` is the node's)."""
    return share_dir() / 'models' / name


def default_model_path() -> Path:
    return bundled_model_path(DEFAULT_MODEL_NAME)


def default_params_file() -> Path:
    return share_dir() / 'config' / 'perception.yaml'
