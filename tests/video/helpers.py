"""Test helpers for the video layer: record status callbacks, backoff delays and open attempts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from detector_worker.video.backoff import Backoff
from detector_worker.video.sources import FrameSource


@dataclass(frozen=True)
class StatusEvent:
    at: float  # time.monotonic()
    online: bool
    reason: str


class StatusLog:
    """An on_status callback that records every call and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.events: list[StatusEvent] = []
        self._cond = threading.Condition()

    def __call__(self, online: bool, reason: str) -> None:
        with self._cond:
            self.events.append(StatusEvent(time.monotonic(), online, reason))
            self._cond.notify_all()

    def states(self) -> list[bool]:
        with self._cond:
            return [e.online for e in self.events]

    def wait_for(self, online: bool, timeout: float, after: int = 0) -> StatusEvent:
        """The first event at index >= after with this state; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event.online is online:
                        return event
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {'online' if online else 'offline'} report in {timeout} s: {self.events}"
                self._cond.wait(remaining)


class RecordingBackoff(Backoff):
    """A Backoff that remembers every delay it handed out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.delays: list[float] = []

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


class CountingFactory:
    """Wraps a source factory and records when each (re)connect attempt started."""

    def __init__(self, make: Callable[[], FrameSource]) -> None:
        self._make = make
        self.calls: list[float] = []

    def __call__(self) -> FrameSource:
        self.calls.append(time.monotonic())
        return self._make()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Seconds it took for predicate() to hold; fails the test after timeout."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"condition not met within {timeout} s"
        time.sleep(interval)
    return time.monotonic() - start
