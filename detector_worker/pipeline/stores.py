"""Writers for Redis and PostgreSQL that survive outages without losing a session's result.

Each store gets one writer thread, owned by one pipeline instance (nothing is shared between
cameras). Writes wait in a bounded queue and are applied in order; a write that fails because
the store is unreachable stays at the head of the queue and is retried after a backoff, with a
fresh connection. Only a full queue drops writes (the oldest first), and every drop is counted
and logged. A write the store rejects for its content (not an outage) is logged and skipped, so
one bad write can't block the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Conn = TypeVar("Conn")
Write = TypeVar("Write")


@dataclass(frozen=True)
class WriterStats:
    connected: bool
    pending: int
    written: int
    rejected: int
    dropped: int
    outages: int


class StoreWriter(Generic[Conn, Write]):
    def __init__(self, name: str, connect: Callable[[], Conn], apply: Callable[[Conn, Write], None],
                 close: Callable[[Conn], None], is_outage: Callable[[BaseException], bool], *,
                 max_queue: int = 10_000, retry_initial_s: float = 0.2, retry_max_s: float = 5.0,
                 log: logging.Logger | None = None) -> None:
        self.name = name
        self._connect, self._apply, self._close, self._is_outage = connect, apply, close, is_outage
        self._queue: deque[Write] = deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._stopping = False
        self._conn: Conn | None = None
        self._retry = (retry_initial_s, retry_max_s)
        self._written = self._rejected = self._dropped = self._outages = 0
        self._busy = False
        self._log = log or logging.getLogger(__name__)
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> None:
        with self._cond:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._dropped += 1
                self._log.error("%s: write queue full (%d), dropped the oldest write", self.name, self._max_queue)
            self._queue.append(write)
            self._cond.notify_all()

    def stats(self) -> WriterStats:
        with self._cond:
            # the write being applied stays at the head of the queue until done: already counted
            return WriterStats(self._conn is not None, len(self._queue), self._written,
                               self._rejected, self._dropped, self._outages)

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted write is applied (or rejected); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout  # one budget for flushing and stopping, not one each
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            if self._queue:
                self._log.error("%s: closing with %d writes not applied (store unreachable)", self.name,
                                len(self._queue))

    def _run(self) -> None:
        delay = self._retry[0]
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:  # stopping and drained
                    break
                write = self._queue[0]
                self._busy = True
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    if self._outages:
                        self._log.info("%s: connected again", self.name)
                self._apply(self._conn, write)
            except Exception as err:
                if self._is_outage(err):
                    self._drop_connection()
                    with self._cond:
                        self._outages += 1
                        self._busy = False
                        self._log.warning("%s: unreachable (%s), retrying in %.1f s", self.name,
                                          str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
                                          delay)
                        self._cond.wait(delay)  # a close() wakes us early; the write stays queued
                        if self._stopping:
                            break
                    delay = min(delay * 2, self._retry[1])
                    continue
                self._log.error("%s: write rejected: %s", self.name, err)
                with self._cond:
                    self._rejected += 1
                    self._pop_head(write)
                continue
            delay = self._retry[0]
            with self._cond:
                self._written += 1
                self._pop_head(write)
        self._drop_connection()

    def _pop_head(self, write: Write) -> None:
        # the head may have been dropped by an overflow while we were writing it
        if self._queue and self._queue[0] is write:
            self._queue.popleft()
        self._busy = False
        self._cond.notify_all()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection is dead anyway
                self._close(self._conn)
            self._conn = None
