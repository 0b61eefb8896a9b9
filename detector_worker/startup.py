"""Heartbeats while a worker starts (or rebuilds its pipelines): a start is progress, not a hang.

Building pipelines may fetch a large archive or convert models for minutes, and the main loop,
which sends the worker's heartbeats, is not running then. `StartupBeats` sends them from a thread
instead, each with the phase the start is in ("starting", "fetching", "converting", "opening") and
its latest progress, at the heartbeat interval and at once on a change of phase. The thread is the
bus's only user while it runs: the main thread is busy building and sends nothing until `stop()`
has joined it (a ZeroMQ socket may change threads across such a hand-over, never be shared).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType

from .comms.bus import WorkerBus
from .comms.messages import Heartbeat, WorkerPhase

log = logging.getLogger("detector_worker")
_PHASES: tuple[WorkerPhase, ...] = ("starting", "fetching", "converting", "opening")


class StartupBeats:
    def __init__(self, bus: WorkerBus, camera_id: str, started: float, interval_s: float) -> None:
        self._bus, self._camera, self._started, self._interval_s = bus, camera_id, started, interval_s
        self._phase: WorkerPhase = "starting"
        self._detail: str | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-beats", daemon=True)
        self.sent = 0

    def progress(self, phase: str, detail: str) -> None:
        """Build progress (the pipelines' `on_progress`); any thread may call it."""
        new: WorkerPhase = phase if phase in _PHASES else "starting"
        if new != self._phase:
            log.info("start: %s %s", new, detail)
            self._changed.set()
        self._phase, self._detail = new, detail[:512]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._bus.send(Heartbeat(camera=self._camera, sent_at=time.time(), pid=os.getpid(),
                                     uptime_s=time.monotonic() - self._started, phase=self._phase,
                                     detail=self._detail))
            self.sent += 1
            self._changed.wait(self._interval_s)
            self._changed.clear()

    def start(self) -> StartupBeats:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join()

    def __enter__(self) -> StartupBeats:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
