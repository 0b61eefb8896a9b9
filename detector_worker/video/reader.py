"""LatestFrameReader: keep only a camera's newest frame, reconnecting and unsticking on its own.

A reader thread owns one source at a time and overwrites a single "latest" slot, so a slow
consumer never sees stale frames and memory never grows. Failures close the source, report
offline once, wait a backoff and reopen. A watchdog treats "no frame for stall_timeout_s" as
a failure even while read() is stuck inside OpenCV (a hung camera): it cannot safely release a
capture another thread is blocked in, so it bumps the *generation* and starts a fresh thread;
the stuck thread notices its generation is stale when read() returns, closes its own source
and exits without publishing anything.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .backoff import Backoff
from .sources import Frame, FrameSource

log = logging.getLogger(__name__)

FPS_WINDOW_S = 2.0  # fps is measured over the frames published in this window
_FPS_SAMPLES = 256  # bounds that window's memory (good up to ~128 fps)
_CREDENTIALS = re.compile(r"(//)[^/\s@]+@")  # belt and braces for exception texts we did not write

StatusCallback = Callable[[bool, str], None]


@dataclass(frozen=True, slots=True)
class ReaderStats:
    online: bool
    frames: int  # frames published (after the max_fps cap); equals the last seq
    fps: float  # published frames per second over the last FPS_WINDOW_S; 0 when offline
    reconnects: int  # open attempts after the first one (failed or not)
    stalls: int  # times the watchdog gave up on a stuck source
    last_frame_age_s: float | None  # None before the first frame
    last_error: str | None


class _Phase(enum.Enum):
    IDLE = "idle"
    OPENING = "opening"  # in source.open(): guarded by open_guard_s
    READING = "reading"  # in source.read(): guarded by stall_timeout_s
    WAITING = "waiting"  # backing off: nothing to guard


class LatestFrameReader:
    """Reads frames from source_factory() sources on a daemon thread; use as a context manager.

    source_factory is called for every (re)connect and must return a new, unopened source.
    on_status(online, reason) is called once per transition (the first failure before any frame
    reports offline too), from reader or watchdog threads, never concurrently; keep it quick.
    """

    def __init__(
        self,
        source_factory: Callable[[], FrameSource],
        *,
        backoff: Backoff | None = None,
        stall_timeout_s: float = 10.0,
        max_fps: float | None = None,
        on_status: StatusCallback | None = None,
        open_guard_s: float = 30.0,
        name: str = "video",
    ) -> None:
        if stall_timeout_s <= 0 or open_guard_s <= 0 or (max_fps is not None and max_fps <= 0):
            raise ValueError("stall_timeout_s, open_guard_s and max_fps must be positive")
        self._factory = source_factory
        self._backoff = backoff if backoff is not None else Backoff()
        self._stall_timeout_s = stall_timeout_s
        self._open_guard_s = open_guard_s  # a source's own open timeout should fire well before this
        self._min_period = 1.0 / max_fps if max_fps else 0.0
        self._on_status = on_status
        self.name = name
        self._stop = threading.Event()
        self._status_lock = threading.Lock()  # on_status calls happen in transition order
        self._cond = threading.Condition()  # guards everything below
        self._started = False
        self._generation = 0
        self._phase = _Phase.IDLE
        self._phase_since = 0.0  # last progress (phase change or source frame), monotonic
        self._source: FrameSource | None = None  # the current generation's, for stop() to interrupt
        self._threads: list[threading.Thread] = []
        self._latest: Frame | None = None
        self._seq = 0
        self._next_keep: float | None = None  # max_fps schedule
        self._online = False
        self._reported: bool | None = None
        self._opens = 0
        self._stalls = 0
        self._last_error: str | None = None
        self._last_frame_at: float | None = None
        self._published: collections.deque[float] = collections.deque(maxlen=_FPS_SAMPLES)

    # -- public API -------------------------------------------------------------------------

    def start(self) -> Self:
        with self._cond:
            if self._started:
                raise RuntimeError("reader already started")
            self._started = True
            self._spawn_locked(delay=0.0)
            watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
            self._threads.append(watchdog)
        watchdog.start()
        return self

    def latest(self, after_seq: int | None = None, timeout: float = 1.0) -> Frame | None:
        """The newest frame (with seq > after_seq if given), waiting up to timeout; None if none.

        Only live frames: the slot is emptied when the source fails, so a frame from before an
        outage is never returned after it.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                frame = self._latest
                if frame is not None and (after_seq is None or frame.seq > after_seq):
                    return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)

    def stats(self) -> ReaderStats:
        now = time.monotonic()
        with self._cond:
            recent = [t for t in self._published if t >= now - FPS_WINDOW_S]
            span = recent[-1] - recent[0] if len(recent) >= 2 else 0.0
            return ReaderStats(
                online=self._online,
                frames=self._seq,
                fps=(len(recent) - 1) / span if self._online and span > 0 else 0.0,
                reconnects=max(0, self._opens - 1),
                stalls=self._stalls,
                last_frame_age_s=None if self._last_frame_at is None else now - self._last_frame_at,
                last_error=self._last_error,
            )

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop all threads; True if they all ended within timeout.

        A thread stuck inside OpenCV (hung camera) cannot be interrupted: it is left to end on
        its own at the source's read timeout (daemon threads never block process exit).
        """
        with self._cond:
            self._stop.set()
            self._generation += 1  # every reader thread is now stale and will not publish
            source, self._source = self._source, None
            threads = list(self._threads)
            self._cond.notify_all()
        if source is not None:
            source.interrupt()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- reader threads ---------------------------------------------------------------------

    def _spawn_locked(self, delay: float) -> None:
        """A new generation and its thread; any older thread is abandoned."""
        self._generation += 1
        self._phase, self._phase_since, self._source = _Phase.WAITING, time.monotonic(), None
        thread = threading.Thread(target=self._run, args=(self._generation, delay),
                                  name=f"{self.name}-reader-{self._generation}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive() or t.ident is None] + [thread]
        thread.start()

    def _run(self, gen: int, delay: float) -> None:
        if delay > 0 and self._stop.wait(delay):
            return
        while self._session(gen):
            with self._cond:
                if gen != self._generation:
                    return
                delay = self._backoff.next_delay()
            log.info("%s: reconnecting in %.2f s", self.name, delay)
            if self._stop.wait(delay):
                return

    def _session(self, gen: int) -> bool:
        """One source from open to failure; False when this generation is over (stale/stopped)."""
        try:
            source = self._factory()
        except Exception as exc:  # a broken factory must not kill the reader: retry with backoff
            return self._fail(gen, f"cannot create source: {exc}")
        try:
            if not self._enter(gen, _Phase.OPENING, source):
                return False
            try:
                source.open()
            except Exception as exc:
                return self._fail(gen, f"open failed: {exc}")
            if not self._enter(gen, _Phase.READING, source):
                return False
            grab, retrieve = getattr(source, "grab", None), getattr(source, "retrieve", None)
            while True:
                kept: bool | None = None
                try:
                    if grab is not None and retrieve is not None:
                        # decode every frame, convert only those max_fps keeps (GrabbingSource)
                        frame = None
                        if grab():
                            kept = self._progress(gen, time.monotonic())
                            if kept is None:
                                return False
                            if not kept:
                                continue
                            frame = retrieve()
                    else:
                        frame = source.read()
                except Exception as exc:
                    return self._fail(gen, f"read error from {source.describe()}: {exc}")
                if frame is None:
                    return self._fail(gen, f"no frame from {source.describe()} (connection lost or end of stream)")
                if not self._publish(gen, frame, source, kept):
                    return False
        finally:
            # Only ever the thread that owns the source closes it: never one blocked elsewhere.
            try:
                source.close()
            except Exception:
                log.exception("%s: closing %s failed", self.name, source.describe())

    def _enter(self, gen: int, phase: _Phase, source: FrameSource) -> bool:
        with self._cond:
            if gen != self._generation:
                return False
            self._phase, self._phase_since, self._source = phase, time.monotonic(), source
            if phase is _Phase.OPENING:
                self._opens += 1
            return True

    def _progress(self, gen: int, t: float) -> bool | None:
        """A frame was grabbed at t: progress for the watchdog; whether max_fps keeps it (None: stale)."""
        with self._cond:
            if gen != self._generation:
                return None
            self._phase_since = t
            return self._keep_locked(t)

    def _publish(self, gen: int, frame: Frame, source: FrameSource, kept: bool | None = None) -> bool:
        """Publish `frame` if max_fps keeps it (`kept`: already decided at its grab)."""
        with self._cond:
            if gen != self._generation:
                return False
            self._phase_since = frame.monotonic  # progress for the watchdog, even if dropped below
            came_online = not self._online
            if came_online:
                self._online = True
                self._backoff.reset()
            if kept if kept is not None else self._keep_locked(frame.monotonic):
                self._seq += 1
                self._latest = dataclasses.replace(frame, seq=self._seq)
                self._last_frame_at = frame.monotonic
                self._published.append(frame.monotonic)
                self._cond.notify_all()
        if came_online:
            self._report(True, f"receiving frames from {source.describe()}")
        return True

    def _keep_locked(self, t: float) -> bool:
        """The max_fps cap: drop frames (never slow the source, which would only add latency)."""
        if not self._min_period:
            return True
        if self._next_keep is not None and t < self._next_keep:
            return False
        # Keep a steady grid so jitter doesn't lower the rate; restart it after a gap.
        following = (self._next_keep or t) + self._min_period
        self._next_keep = following if following > t else t + self._min_period
        return True

    def _fail(self, gen: int, reason: str) -> bool:
        """Record a failure of the current generation; False if gen is stale."""
        reason = _CREDENTIALS.sub(r"\1***@", reason)
        with self._cond:
            if gen != self._generation:
                return False
            self._go_offline_locked(reason)
            self._phase, self._phase_since = _Phase.WAITING, time.monotonic()
        log.warning("%s: %s", self.name, reason)
        self._report(False, reason)
        return True

    def _go_offline_locked(self, reason: str) -> None:
        self._last_error = reason
        self._online = False
        self._latest = None  # never hand out a pre-outage frame as "latest"
        self._source = None

    def _report(self, online: bool, reason: str) -> None:
        with self._status_lock:
            with self._cond:
                # Skip if already reported, or if another thread changed the state since.
                if self._reported is online or self._online is not online or self._stop.is_set():
                    return
                self._reported = online
            log.info("%s: %s (%s)", self.name, "online" if online else "offline", reason)
            if self._on_status is not None:
                try:
                    self._on_status(online, reason)
                except Exception:
                    log.exception("%s: on_status callback failed", self.name)

    # -- watchdog ---------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            reason, stuck = None, None
            with self._cond:
                now = time.monotonic()
                limit = {_Phase.READING: self._stall_timeout_s, _Phase.OPENING: self._open_guard_s}.get(self._phase)
                if limit is not None and now - self._phase_since >= limit and not self._stop.is_set():
                    what = "no frame" if self._phase is _Phase.READING else "open() not returning"
                    reason = f"stalled: {what} for {now - self._phase_since:.1f} s"
                    self._stalls += 1
                    stuck = self._source
                    self._go_offline_locked(reason)
                    # A stall is a failure like any other: the fresh thread backs off first.
                    self._spawn_locked(delay=self._backoff.next_delay())
                    wait = 0.0
                else:
                    # Progress only moves a phase's deadline later, but OPENING -> READING shortens
                    # the limit: never sleep longer than the shortest one, then re-check.
                    remaining = self._phase_since + limit - now if limit is not None else self._stall_timeout_s
                    wait = min(remaining, self._stall_timeout_s)
            if stuck is not None:
                stuck.interrupt()  # thread-safe; ends a wait the source does itself (not an OpenCV read)
            if reason is not None:
                log.warning("%s: %s; abandoning the stuck reader thread", self.name, reason)
                self._report(False, reason)
            self._stop.wait(max(wait, 0.005))
