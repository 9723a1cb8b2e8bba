# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Clouds into a target frame through tf2, for nodes that publish in e.g. base_link.

Imported only when ``target_frame`` is set; raises ImportError where tf2_ros is
missing so the node can say so and keep the sensor frame.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from rclpy.duration import Duration
from rclpy.time import Time
import tf2_ros

from p3d_perception.cloud import Cloud
from p3d_perception.ros.messages import matrix_from_quaternion


def _matrix(transform) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = matrix_from_quaternion(transform.rotation)
    m[:3, 3] = [transform.translation.x, transform.translation.y, transform.translation.z]
    return m


class TargetFrame:
    """Looks up sensor -> target at the cloud's stamp and moves the points."""

    def __init__(self, node, target_frame: str, timeout_s: float = 0.05) -> None:
        self.node = node
        self.target_frame = target_frame
        self.timeout = Duration(seconds=timeout_s)
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    def to_target(self, cloud: Cloud) -> Cloud | None:
        if cloud.frame_id == self.target_frame:
            return cloud
        try:
            t = self.buffer.lookup_transform(self.target_frame, cloud.frame_id,
                                             Time(nanoseconds=cloud.stamp_ns), self.timeout)
        except (tf2_ros.LookupException, tf2_ros.ExtrapolationException,
                tf2_ros.ConnectivityException) as exc:
            self.node.get_logger().warning(f'no transform {cloud.frame_id} -> '
                                           f'{self.target_frame}: {exc}',
                                           throttle_duration_sec=5.0)
            return None
        m = _matrix(t.transform)
        points = (cloud.points @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
        return replace(cloud, points=points, frame_id=self.target_frame)
