# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Play a rosbag2 (MCAP or sqlite3) onto ROS topics: ``p3d play BAG``.

``ros2 bag`` (rosbag2) is a C++ package that pip cannot install, so a venv set up
with ``make setup`` has no player; the launch file's ``bag:=`` falls back to this one.
It does what the demo and the README need of ``ros2 bag play``: the recorded CDR bytes
are published as they are (any message type whose Python package is importable), with
the recorded timing scaled by ``--rate``, ``--loop``, ``--clock`` (``/clock`` from the
bag's time, for nodes with ``use_sim_time``) and ``--remap`` of topics. Stamps inside
the messages are left as recorded, as ``ros2 bag play`` leaves them.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
import time
from typing import Iterator

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

log = logging.getLogger(__name__)

#: topics recorded with transient-local durability (latched), replayed the same way
_LATCHED = ('/tf_static',)


class PlayError(RuntimeError):
    """The bag cannot be played (missing, unreadable, nothing to publish)."""


def message_class(msgtype: str):
    """The rclpy message class of ``pkg/msg/Name`` (PlayError when not importable)."""
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise PlayError(f'not a message type name: {msgtype!r}')
    try:
        return getattr(importlib.import_module(f'{parts[0]}.{parts[1]}'), parts[2])
    except (ImportError, AttributeError) as exc:
        raise PlayError(f'message type {msgtype} is not importable here ({exc})') from None


def read_raw(path: str | Path, topics: set[str] | None = None
             ) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield (topic, msgtype, timestamp_ns, CDR bytes) in recorded order.

    Through :func:`bagio.iter_raw`, so a damaged recording plays every complete message
    it still holds, as the dataset tools read it.
    """
    from p3d_perception.bagio import BagReport, iter_raw
    path = Path(path)
    if not path.exists():
        raise PlayError(f'bag not found: {path}')
    report = BagReport()
    for conn, stamp, raw in iter_raw(path, topics, report):
        yield conn.topic, conn.msgtype, int(stamp), bytes(raw)
    if report.bags_failed:
        raise PlayError(f'cannot open bag {path}: {report.bags_failed[0][1]}')


class BagPlayer(Node):
    """Publishes a bag's messages on their topics at the recorded pace."""

    def __init__(self, bag: str | Path, *, rate: float = 1.0, loop: bool = False,
                 clock: bool = False, remap: dict[str, str] | None = None,
                 topics: list[str] | None = None, **kwargs) -> None:
        super().__init__('p3d_bag_player', **kwargs)
        if not rate > 0:
            raise PlayError(f'--rate must be > 0, got {rate}')
        self.bag, self.rate, self.loop = Path(bag), float(rate), loop
        self.remap = dict(remap or {})
        self.topics = set(topics) if topics else None
        self._pubs: dict[str, object] = {}
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock
            self._clock_pub = self.create_publisher(Clock, '/clock', 10)
            self._clock_type = Clock
        self.published = 0

    def _publisher(self, topic: str, msgtype: str):
        if topic not in self._pubs:
            latched = topic in _LATCHED
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                         else DurabilityPolicy.VOLATILE))
            try:
                cls = message_class(msgtype)
            except PlayError as exc:
                log.warning('not playing %s: %s', topic, exc)
                self._pubs[topic] = None
                return None
            self._pubs[topic] = self.create_publisher(cls, self.remap.get(topic, topic), qos)
        return self._pubs[topic]

    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is not None:
            msg = self._clock_type()
            msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
            self._clock_pub.publish(msg)

    def play_once(self, should_stop=lambda: False, sleep=time.sleep) -> int:
        """Play the bag once; return how many messages were published."""
        messages = read_raw(self.bag, self.topics)
        try:
            count = self._play(messages, should_stop, sleep)
        finally:
            messages.close()
        self.published += count
        return count

    def _play(self, messages, should_stop, sleep) -> int:
        start_wall, start_bag, count = None, None, 0
        for topic, msgtype, stamp, raw in messages:
            if should_stop() or not self.context.ok():
                break
            pub = self._publisher(topic, msgtype)
            if start_wall is None:
                start_wall, start_bag = time.monotonic(), stamp
                if self._pubs:  # give subscribers a moment to match the new publishers
                    sleep(0.5)
                    start_wall = time.monotonic()
            due = start_wall + (stamp - start_bag) * 1e-9 / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                sleep(delay)
            if should_stop():
                break
            self._publish_clock(stamp)
            if pub is not None:
                pub.publish(raw)  # the recorded CDR bytes, published as they are
                count += 1
        return count

    def play(self, should_stop=lambda: False, sleep=time.sleep) -> int:
        passes = 0
        while True:
            n = self.play_once(should_stop, sleep)
            passes += 1
            if n == 0 and passes == 1 and not should_stop():
                raise PlayError(f'{self.bag}: no message to play '
                                f'(topics: {sorted(self.topics) if self.topics else "all"})')
            if not self.loop or should_stop() or not self.context.ok():
                return self.published


def parse_remaps(items: list[str] | None) -> dict[str, str]:
    """``FROM:=TO`` pairs (the ``ros2 bag play --remap`` form)."""
    out = {}
    for item in items or []:
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise PlayError(f'--remap wants FROM:=TO, got {item!r}')
        out[src] = dst
    return out


def main(args) -> int:
    """Entry point of ``p3d play`` (argparse namespace from commands/play.py).

    Ctrl-C (or the launch's SIGINT) sets a flag that the playing loop checks, so the
    player stops between messages and closes the bag, without a KeyboardInterrupt
    unwinding through the bag reader.
    """
    import signal
    import threading

    import rclpy
    from rclpy.signals import SignalHandlerOptions
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=None, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = BagPlayer(args.bag, rate=args.rate, loop=args.loop, clock=args.clock,
                         remap=parse_remaps(args.remap), topics=args.topics)
        try:
            n = node.play(stop.is_set, sleep=stop.wait)
            log.info('published %d message(s) from %s', n, args.bag)
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0
