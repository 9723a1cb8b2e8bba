# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d play BAG``: replay a rosbag2 onto ROS topics where ``ros2 bag`` is missing."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'play', help='play a rosbag2 (MCAP/sqlite3) onto ROS topics, like ros2 bag play',
        description='Publish the recorded messages of a bag at their recorded pace. Used by '
                    'the launch file\'s bag:= when `ros2 bag` is not installed.')
    p.add_argument('bag', metavar='BAG', help='rosbag2 directory or .mcap/.db3 file')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--loop', '-l', action='store_true', help='play again from the start')
    p.add_argument('--clock', action='store_true',
                   help='publish /clock from the bag\'s time (for use_sim_time nodes)')
    p.add_argument('--remap', '-m', action='append', metavar='FROM:=TO',
                   help='publish topic FROM as TO (repeatable)')
    p.add_argument('--topics', nargs='+', metavar='TOPIC', help='play only these topics')
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from p3d_perception.ros.player import main
    return main(args)
