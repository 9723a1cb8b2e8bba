# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Subcommands of ``p3d``; each module exposes ``register(subparsers)``.

A subcommand sets ``func`` (a callable taking the parsed args and returning an
exit code) with ``parser.set_defaults(func=...)`` and imports its heavy
dependencies inside that callable.
"""
