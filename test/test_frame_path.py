# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""What keeps queries prompt while frames run: executor, frame thread, memory snapshot."""

import collections
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from p3d_perception.memory import ObjectMemory, Observation
from p3d_perception.ros.executor import NodeExecutor
from p3d_perception.ros.frame_worker import FrameWorker


def _yields_per_task(executor_cls, context, messages=15):
    """How often the dispatcher handed out each task while it waited for a pool thread."""
    node = Node('dispatch_probe', context=context)
    group = ReentrantCallbackGroup()
    got = []

    def on_msg(msg):
        busy_until = time.perf_counter() + 0.01   # Python work: holds the interpreter
        while time.perf_counter() < busy_until:
            pass
        got.append(msg.data)

    node.create_subscription(String, 'probe', on_msg, 50, callback_group=group)
    pub = node.create_publisher(String, 'probe', 50)
    executor = executor_cls(num_threads=2, context=context)
    executor.add_node(node)
    counts = collections.Counter()
    handed_out = []          # keeps every task alive, so no two share an id()
    original = executor.wait_for_ready_callbacks

    def counting(*args, **kwargs):
        handler, entity, n = original(*args, **kwargs)
        handed_out.append(handler)
        counts[id(handler)] += 1
        return handler, entity, n

    executor.wait_for_ready_callbacks = counting
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(messages):
            pub.publish(String(data=str(i)))
            time.sleep(0.03)
        deadline = time.monotonic() + 20
        while len(got) < messages and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        executor.shutdown()
        # a spin thread still inside the C++ wait when the interpreter exits aborts the
        # process ("terminate called without an active exception", rclpy#1484)
        thread.join(10)
        node.destroy_node()
    assert not thread.is_alive(), 'the executor did not stop spinning'
    assert len(got) == messages
    return max(counts.values())


def _probe(executor_name: str) -> int:
    """Run the dispatch probe in a process of its own, on a DDS domain of its own.

    rclpy's executor spins hot while it re-yields; in the pytest process it left effects
    that made a later test's launched node stop (seen twice in full-suite runs only).
    """
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(100, 140)))
    proc = subprocess.run([sys.executable, __file__, executor_name], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def test_the_dispatcher_hands_out_each_task_once():
    """NodeExecutor hands each task to its pool once.

    rclpy 7's MultiThreadedExecutor re-yields a task until a pool thread starts it
    (rclpy#1452), spinning in Python meanwhile (thousands of times per task here); that
    starved the pool and delayed queries by up to 700 ms.
    """
    assert _probe('NodeExecutor') == 1


def test_rclpys_executor_still_re_yields():
    """The reason NodeExecutor exists; when this fails, rclpy has the fix and it can go."""
    if _probe('MultiThreadedExecutor') == 1:
        pytest.skip('this rclpy hands out each task once: NodeExecutor is no longer needed')


def test_the_frame_thread_runs_the_newest_frame_below_query_priority():
    warnings = []
    worker = FrameWorker(warnings.append, nice=5)
    gate, started, ran, nice = threading.Event(), threading.Event(), [], []

    def first():
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        started.set()
        gate.wait(10)
        ran.append('first')
    try:
        assert worker.submit(first) and started.wait(5)
        assert not worker.idle()
        assert worker.submit(lambda: ran.append('second'))
        assert not worker.submit(lambda: ran.append('third'))   # replaces 'second'
        gate.set()
        deadline = time.monotonic() + 5
        while not worker.idle() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ran == ['first', 'third']
        assert nice == [os.getpriority(os.PRIO_PROCESS, 0) + 5] or warnings
        worker.submit(lambda: 1 / 0)                  # a failing job is reported ...
        deadline = time.monotonic() + 5
        while not warnings and time.monotonic() < deadline:
            time.sleep(0.005)
        assert 'ZeroDivisionError' in warnings[-1]
        worker.submit(lambda: ran.append('after'))    # ... and the thread goes on
        deadline = time.monotonic() + 5
        while 'after' not in ran and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ran[-1] == 'after'
    finally:
        gate.set()
        assert worker.stop(timeout_s=5)


def test_stop_lets_the_running_frame_finish():
    worker = FrameWorker(lambda text: None, nice=0)
    done = []
    worker.submit(lambda: (time.sleep(0.2), done.append(1)))
    time.sleep(0.05)
    assert worker.stop(timeout_s=5) and done == [1]
    assert worker.submit(lambda: done.append(2))   # after stop: accepted, never run
    time.sleep(0.05)
    assert done == [1]


def test_queries_read_the_memory_without_waiting_for_an_update():
    mem = ObjectMemory()
    obs = Observation(center=np.zeros(3), rotation=np.eye(3), size=np.full(3, 0.1),
                      embedding=np.ones(8, np.float32), label='mug', score=0.9)
    mem.update([obs], 'cam', 1)
    with mem._lock:                       # a frame's update in progress
        result = []
        reader = threading.Thread(target=lambda: result.append(mem.objects()))
        reader.start()
        reader.join(2)
        assert not reader.is_alive(), 'the reader waited for the update'
    assert [o.label for o in result[0]] == ['mug']
    snapshot = result[0][0]
    mem.update([Observation(center=np.zeros(3), rotation=np.eye(3), size=np.full(3, 0.1),
                            embedding=np.ones(8, np.float32), label='cup', score=0.8)],
               'cam', 2)
    assert snapshot.label == 'mug'        # readers hold copies: no half-updated object
    assert [o.label for o in mem.objects()] == ['cup'] and len(mem) == 1


if __name__ == '__main__':
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    cls = {'NodeExecutor': NodeExecutor, 'MultiThreadedExecutor': MultiThreadedExecutor}
    print(_yields_per_task(cls[sys.argv[1]], context), flush=True)
    rclpy.shutdown(context=context)
