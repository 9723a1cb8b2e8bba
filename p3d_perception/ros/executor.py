# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""A multi-threaded executor whose dispatcher does not spin while a callback waits.

rclpy's ``MultiThreadedExecutor`` (7.x) hands a ready callback to its thread pool and
goes straight back to collecting work. Until a pool thread has *started* the task, the
collector sees it as ready again, yields it again and returns at once instead of
waiting: the dispatcher loops in Python, holding the interpreter lock, and the pool
thread that should run the task cannot get it (rclpy issue #1452, fixed upstream after
the release this package runs on). Measured here: a query or a frame now and then
waited 200-700 ms before its callback began, on an otherwise idle machine.

The dispatcher below waits until the pool thread has begun the task before it collects
again, so there is nothing to re-yield; tasks still run concurrently in the pool.
"""

from __future__ import annotations

import threading
import time

from rclpy.executors import (ConditionReachedException, ExternalShutdownException,
                             MultiThreadedExecutor, ShutdownException, TimeoutException)

#: Longest the dispatcher waits for a pool thread to begin a task. Only reached when
#: every pool thread is busy with a long callback; dispatching then resumes as before.
START_WAIT_S = 0.5


class NodeExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that dispatches a task only once the previous one began."""

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, _entity, _node = self.wait_for_ready_callbacks(
                timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        started = threading.Event()

        def run() -> None:
            started.set()
            handler()

        self._executor.submit(run)
        self._futures.append(handler)
        deadline = time.monotonic() + START_WAIT_S
        if started.wait(START_WAIT_S):
            # the pool thread is between run() and the task marking itself executing
            while not (handler.executing() or handler.done()) and time.monotonic() < deadline:
                time.sleep(0)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions, as the base class does
