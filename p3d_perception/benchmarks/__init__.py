# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Benchmarks run by ``p3d bench NAME``; each has ``add_arguments`` and ``run``."""
