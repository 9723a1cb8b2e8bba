# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Open-vocabulary 3D object perception for ROS 2.

The core (cloud, segment, model, recognize, pipeline, memory, training) is plain
Python/numpy/torch so it can be tested and scripted without ROS; only
``p3d_perception.ros`` imports rclpy.
"""

__version__ = '0.1.0'
