# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The thread that turns frames into detections, below the priority of queries.

A frame is ~100 ms of segmentation and encoding; a query is a few ms of text encoding
and scoring. On a loaded machine (two cores, a camera at 10 Hz) the two compete for the
CPU and for the interpreter, and a query handled by the executor waited behind frame
work: 150 ms at p99 in a 40-minute soak, against 11 ms at the median. So frames leave
the executor: the subscription callback only hands the newest message over, and this
thread, at a lower OS priority (``nice``), does the work. The kernel then runs the
query thread first whenever both want a core, and the frame work takes what is left;
frames still run at full rate when nothing else is asking.

Only the newest frame is kept: one that arrives while another is in progress replaces
the one waiting, because a robot wants what is there now, not a backlog.
"""

from __future__ import annotations

import os
import threading
from typing import Callable


class FrameWorker:
    """Run the newest handed-over job on one thread at ``nice`` above the caller's."""

    def __init__(self, warn: Callable[[str], None], nice: int = 10,
                 name: str = 'p3d-frames') -> None:
        self._warn = warn
        self._nice = int(nice)
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Hand a job over; returns False when it replaced one that had not started."""
        with self._cond:
            if self._stopping:
                return True
            replaced = self._job is not None
            self._job = job
            self._cond.notify()
        return not replaced

    def idle(self) -> bool:
        """True when no job is waiting or running."""
        with self._cond:
            return self._job is None and not self._busy

    def stop(self, timeout_s: float) -> bool:
        """Drop the waiting job, let the running one finish; False if it did not in time."""
        with self._cond:
            self._stopping = True
            self._job = None
            self._cond.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while self._job is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, self._job = self._job, None
                self._busy = True
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - jobs report their own; never die
                self._warn(f'frame job failed: {type(exc).__name__}: {exc}')
            finally:
                with self._cond:
                    self._busy = False

    def _lower_priority(self) -> None:
        """Raise this thread's nice value (Linux: per thread); where not possible, say so."""
        if self._nice <= 0:
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + self._nice)
        except (AttributeError, OSError) as exc:  # not Linux, or a sandbox refuses
            self._warn(f'frames run at the priority of queries ({exc})')
