# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""``p3d demo``: the package working on its own, end to end, over real DDS.

Generates (or reuses) a synthetic tabletop bag, starts the real perception node
as a separate process, plays the bag's clouds to it, asks /query_object a few
questions, prints what came back next to the bag's ground truth, and saves a PNG.
Nothing is faked: a wrong label shows up as wrong in the table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

import numpy as np

#: asked about as present when the scene holds one (what a person would ask for)
DRINKWARE = ('mug', 'cup', 'wine glass')
#: asked about as absent: the first of these the scene does not hold
ABSENT_CANDIDATES = ('teddy bear', 'laptop', 'shoe', 'banana', 'drill', 'frying pan')
CLOUD_TOPIC = '/camera/depth/color/points'


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('demo', help='run the node on a synthetic bag and query it',
                       description=__doc__.splitlines()[0])
    p.add_argument('--bag', type=Path, default=None,
                   help='rosbag2 with PointCloud2 on /camera/depth/color/points '
                        '(default: generate .p3d_cache/demo_tabletop)')
    p.add_argument('--seed', type=int, default=7, help='seed of the generated scene')
    p.add_argument('--model', default='', help='model folder (default: the bundled model)')
    p.add_argument('--out', type=Path, default=Path('demo_out'),
                   help='folder for demo.png and demo.json')
    p.add_argument('--query', action='append', default=None,
                   help='a question for /query_object (repeatable)')
    p.add_argument('--rate', type=float, default=2.0, help='playback rate, frames/s')
    p.add_argument('--timeout', type=float, default=120.0,
                   help='seconds to wait for the node to start and answer')
    p.set_defaults(func=run)


def _generate_bag(path: Path, seed: int) -> None:
    print(f'generating a synthetic tabletop bag: {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, '-m', 'p3d_perception.cli', 'synth', 'scenes',
                    '--out', str(path), '--scenes', '1', '--frames-per-scene', '6',
                    '--seed', str(seed), '--camera', 'd435'], check=True)


def _read_bag(path: Path):
    """Clouds, camera intrinsics and ground truth from the bag (no ROS needed)."""
    from p3d_perception.bagio import iter_messages
    clouds, K, truth = [], None, []
    for topic, _, _, msg in iter_messages([path]):
        if topic == CLOUD_TOPIC:
            clouds.append(msg)
        elif topic.endswith('camera_info') and K is None:
            K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        elif topic == '/ground_truth/objects':
            truth.append(json.loads(msg.data))
    if not clouds:
        raise RuntimeError(f'{path} has no PointCloud2 on {CLOUD_TOPIC}')
    return clouds, K, truth


def _to_rclpy(msg, stamp):
    """A rosbags PointCloud2 -> an rclpy one, restamped to now (it is live playback)."""
    from sensor_msgs.msg import PointCloud2, PointField
    out = PointCloud2(height=msg.height, width=msg.width, is_bigendian=msg.is_bigendian,
                      point_step=msg.point_step, row_step=msg.row_step, is_dense=msg.is_dense,
                      fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype,
                                         count=f.count) for f in msg.fields])
    out.header.frame_id = msg.header.frame_id
    out.header.stamp = stamp
    out.data = np.asarray(msg.data, dtype=np.uint8).tobytes()
    return out


def _start_node(model: str, env: dict) -> subprocess.Popen:
    from p3d_perception.resources import default_params_file
    cmd = [sys.executable, '-m', 'p3d_perception.ros.node', '--ros-args',
           '--params-file', str(default_params_file()), '-p', 'max_frame_age_s:=0.0',
           # 5 MB frames between processes: best effort loses Fast DDS fragments under load
           '-p', 'input_qos:=reliable',
           '-r', f'points:={CLOUD_TOPIC}']
    if model:
        cmd += ['-p', f'model_path:={model}']
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(100, 200)))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    bag = args.bag
    if bag is None:
        bag = Path('.p3d_cache') / f'demo_tabletop_seed{args.seed}'
        if not bag.exists():
            _generate_bag(bag, args.seed)
    clouds, K, truth = _read_bag(bag)
    node_proc = _start_node(args.model, dict(os.environ))
    try:
        session = _Session(node_proc, args.timeout)
        frames = session.play(clouds, args.rate)
        gt_last = truth[min(len(frames), len(truth)) - 1] if truth and frames else None
        queries = ([(q, None) for q in args.query] if args.query else
                   demo_queries(frames[-1][1] if frames else None, gt_last))
        answers = [(q, session.ask(q), want) for q, want in queries]
        session.close()
    finally:
        node_log = _stop(node_proc)
    if not frames:
        print(node_log[-4000:], file=sys.stderr)
        raise RuntimeError('the node published no detections; its log is above')

    from p3d_perception.ros import demo_report
    last_cloud, last_dets = frames[-1]
    gt = truth[min(len(frames), len(truth)) - 1] if truth else None
    report = demo_report.summarise(last_dets, answers, gt)
    demo_report.print_tables(report, bag, len(frames))
    args.out.mkdir(parents=True, exist_ok=True)
    png = demo_report.save_png(args.out / 'demo.png', last_cloud, last_dets, answers, K, gt)
    (args.out / 'demo.json').write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    print(f'saved {png} and {args.out / "demo.json"}')
    return 0


def demo_queries(detections_msg, gt: dict | None) -> list[tuple[str, tuple | None]]:
    """Questions with known answers: what the scene holds, and one thing it does not.

    Returns (query, categories that answer it right); ``()`` means the right answer is
    "no match". Present categories are those of ground-truth objects the node detected,
    so a query is not counted wrong for an object the camera could not see.
    """
    from p3d_perception.ros import demo_report
    seen = []
    for det in getattr(detections_msg, 'detections', []):
        cat = demo_report.truth_for(det, gt)
        if cat and cat not in seen:
            seen.append(cat)
    queries: list[tuple[str, tuple | None]] = [(f'a {c}', (c,)) for c in seen[:3]]
    drink = tuple(c for c in DRINKWARE if c in seen)
    if drink:
        queries.append(('something to drink from', drink))
    absent = [c for c in ABSENT_CANDIDATES if c not in seen and
              c not in [o.get('category') for o in (gt or {}).get('objects', [])]]
    if absent:
        queries.append((f'a {absent[0]}', ()))
    return queries


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.stdout.read() if proc.stdout else ''


class _Session:
    """The demo's own rclpy node: a player, a detections listener and a service client."""

    def __init__(self, node_proc: subprocess.Popen, timeout: float) -> None:
        import rclpy
        import rclpy.executors
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        import p3d_perception_interfaces.msg as p3d_msg
        import p3d_perception_interfaces.srv as p3d_srv

        self.rclpy, self.proc, self.timeout = rclpy, node_proc, timeout
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node('p3d_demo', context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.pub = self.node.create_publisher(
            PointCloud2, CLOUD_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.latest = None
        self.node.create_subscription(p3d_msg.DetectionArray, '/p3d/detections',
                                      self._on_detections, 10)
        self.client = self.node.create_client(p3d_srv.QueryObject, '/query_object')
        self.request_type = p3d_srv.QueryObject.Request
        self._wait(lambda: self.client.service_is_ready() and
                   self.pub.get_subscription_count() > 0, 'the node to start')

    def _on_detections(self, msg) -> None:
        self.latest = msg

    def _spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def _wait(self, predicate, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise RuntimeError(f'the perception node exited (code {self.proc.returncode}) '
                                   f'while waiting for {what}:\n{self.proc.stdout.read()}')
            if time.monotonic() > deadline:
                raise TimeoutError(f'timed out after {self.timeout:.0f} s waiting for {what}')
            self.executor.spin_once(timeout_sec=0.05)

    def play(self, clouds, rate: float):
        from p3d_perception.cloud import pointcloud2_to_cloud
        frames = []
        for i, msg in enumerate(clouds):
            stamp = self.node.get_clock().now().to_msg()
            ros_msg = _to_rclpy(msg, stamp)
            self.latest = None
            self.pub.publish(ros_msg)
            self._wait(lambda: self.latest is not None and
                       self.latest.header.stamp == stamp, f'detections of frame {i}')
            frames.append((pointcloud2_to_cloud(ros_msg), self.latest))
            print(f'frame {i + 1}/{len(clouds)}: {len(self.latest.detections)} objects')
            self._spin(max(0.0, 1.0 / rate - 0.05))
        return frames

    def ask(self, query: str):
        # min_score left at its default: the node's query.default_min_score, at which
        # something that is not there gets no match
        future = self.client.call_async(self.request_type(query=query, top_k=3))
        self._wait(future.done, f'the answer to {query!r}')
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)
