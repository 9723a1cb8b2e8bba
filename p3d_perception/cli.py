# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The ``p3d`` command line: one entry point, one subcommand per job.

Each area of the package registers its own subcommands from a module in
``p3d_perception.commands`` so this file stays a table of contents, and heavy
imports (torch, open3d) happen only for the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from p3d_perception import __version__

#: Modules under p3d_perception.commands, each with ``register(subparsers)``.
COMMAND_MODULES = (
    'segment',      # p3d segment, p3d eval-segmentation
    'synth',        # p3d synth scenes|objects|preview
    'train',        # p3d train, p3d eval, p3d export
    'bags',         # p3d bags extract|label
    'finetune',     # p3d finetune
    'eval_real',    # p3d eval-real
    'demo',         # p3d demo
    'play',         # p3d play BAG (a rosbag2 player for where ros2 bag is missing)
    'bench',        # p3d bench <name>
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='p3d', description='p3d_perception: open-vocabulary 3D perception tools.')
    parser.add_argument('--version', action='version', version=f'p3d {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f'p3d_perception.commands.{name}')
        except ModuleNotFoundError as exc:
            if exc.name == f'p3d_perception.commands.{name}':
                continue  # area not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s')
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI turns any error into one line
        if args.verbose:
            raise
        print(f'p3d {args.command}: error: {exc}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
