# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""How many 640x480 clouds offered at 10 Hz arrive in another process, per input QoS.

A camera driver and the node are two processes on one machine; what matters is the
share of the driver's frames the node's subscription receives. The publisher process
stands in for the driver (its QoS is the camera's: best effort, or reliable); the
subscriber process has exactly the node's input profile (``ros.node.input_qos``) and
only counts, so the figure is the transport's, not the node's processing rate.

Run as ``python -m p3d_perception.benchmarks.delivery pub|sub ...`` by :func:`measure`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _publisher(qos_name: str, hz: float, seconds: float, topic: str) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from p3d_perception.cloud import pack_cloud
    from p3d_perception.ros.messages import packed_to_msg

    rclpy.init()
    node = rclpy.create_node('delivery_camera')
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT
                     if qos_name == 'sensor_data' else ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(PointCloud2, topic, qos)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (480 * 640, 3)).astype(np.float32) + np.float32([0, 0, 2])
    cols = rng.integers(0, 255, (480 * 640, 3), dtype=np.uint8)
    msg = packed_to_msg(pack_cloud(pts, cols, height=480, width=640), 'camera', 0)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # discovery settles
    period, sent, t0 = 1.0 / hz, 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        sent += 1
        time.sleep(max(0.0, t0 + sent * period - time.monotonic()))
    time.sleep(1.0)
    print(json.dumps({'sent': sent, 'bytes': len(msg.data)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _subscriber(qos_name: str, seconds: float, topic: str) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from p3d_perception.ros.node import input_qos

    rclpy.init()
    node = rclpy.create_node('delivery_node')
    got = []
    node.create_subscription(PointCloud2, topic, lambda m: got.append(len(m.data)),
                             input_qos(qos_name))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({'received': len(got)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def measure(qos_name: str, *, hz: float = 10.0, seconds: float = 20.0,
            env: dict | None = None) -> dict:
    """Offer ``hz`` frames for ``seconds`` from one process to another; return the counts."""
    env = dict(os.environ if env is None else env)
    topic = f'/delivery_{os.getpid()}_{qos_name}'
    base = [sys.executable, '-m', 'p3d_perception.benchmarks.delivery']
    sub = subprocess.Popen(base + ['sub', qos_name, str(seconds + 12), topic], env=env,
                           stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    pub = subprocess.run(base + ['pub', qos_name, str(hz), str(seconds), topic], env=env,
                         capture_output=True, text=True, timeout=seconds + 60)
    sent = json.loads(pub.stdout.strip().splitlines()[-1])
    out, _ = sub.communicate(timeout=60)
    lines = [x for x in (out or '').strip().splitlines() if x.startswith('{')]
    received = json.loads(lines[-1])['received'] if lines else 0
    return {'qos': qos_name, 'offered_hz': hz, 'sent': sent['sent'],
            'frame_bytes': sent['bytes'], 'received': received,
            'delivered_share': round(received / max(1, sent['sent']), 3)}


if __name__ == '__main__':
    role = sys.argv[1]
    if role == 'pub':
        _publisher(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        _subscriber(sys.argv[2], float(sys.argv[3]), sys.argv[4])
