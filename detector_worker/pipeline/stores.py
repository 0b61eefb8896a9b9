"""One generic writer per store, draining the camera's durable outbox (outbox.py).

A write is acknowledged once it is appended to the outbox (on disk), never before; the writer
thread applies the store's entries in order and removes each only when the store committed
it. A write that fails because the store can't serve now (unreachable, read-only replica,
failover, out of memory: the store-specific `is_outage` decides) stays and is retried with
jittered, capped backoff and a fresh connection, through outages of any length; a worker
killed meanwhile replays it at its next start. A write the store rejects for its content is
logged, counted and set aside (the outbox's `dead` table), so one bad write can't block the
rest. Nothing is ever dropped silently: an append over the outbox's disk quota is refused,
counted (`refused`), logged and flagged (`quota_full`).

The store-specific parts (connect, apply, close, is_outage, encode, decode) are passed in
(sinks.py).
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .outbox import Entry, Outbox, QuotaFull, Tx

Conn = TypeVar("Conn")
Write = TypeVar("Write")


@dataclass(frozen=True)
class WriterStats:
    connected: bool
    pending: int
    written: int
    rejected: int
    refused: int  # appends refused at the outbox's quota (the write never entered it)
    outages: int
    quota_full: bool = False


class StoreWriter(Generic[Conn, Write]):
    def __init__(self, name: str, connect: Callable[[], Conn], apply: Callable[[Conn, Write], None],
                 close: Callable[[Conn], None], is_outage: Callable[[BaseException], bool], *,
                 encode: Callable[[Write], bytes], decode: Callable[[bytes], Write], outbox: Outbox | None = None,
                 retry_initial_s: float = 0.2, retry_max_s: float = 5.0, log: logging.Logger | None = None,
                 start: bool = True) -> None:
        self.name = name
        self._connect, self._apply, self._close, self._is_outage = connect, apply, close, is_outage
        self.encode, self.decode = encode, decode
        self._log = log or logging.getLogger(__name__)
        self.outbox = outbox if outbox is not None else Outbox.memory(self._log)
        self._cond = threading.Condition()
        self._stopping = False
        self._conn: Conn | None = None
        self._retry = (retry_initial_s, retry_max_s)
        self._rng = random.Random()
        self._written = self._rejected = self._refused = self._outages = 0
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._started = False
        if start:
            self.start()

    def start(self) -> None:
        """Start applying (what earlier runs left in the outbox first)."""
        if self._started:
            return
        self._started = True
        with self._cond:
            self._pending = self.outbox.count(self.name)
        if self._pending:
            self._log.info("%s: %d write(s) left by an earlier run, replaying", self.name, self._pending)
        self._thread.start()

    # -- appending -------------------------------------------------------------------------------------
    def submit(self, write: Write, ikey: str | None = None, grp: str | None = None) -> bool:
        """Append one write (durably) and wake the writer; False when refused (quota) or already queued."""
        try:
            with self.outbox.transaction() as tx:
                return self.stage(tx, write, ikey, grp)
        except QuotaFull:
            self._count_refused()
            return False

    def stage(self, tx: Tx, write: Write, ikey: str | None = None, grp: str | None = None) -> bool:
        """Append as part of a caller's outbox transaction; the writer wakes once it commits."""
        added = tx.append(self.name, self.encode(write), ikey, grp)
        if added:
            tx.after_commit.append(self._added)
        return added

    def _added(self) -> None:
        with self._cond:
            self._pending += 1
            self._cond.notify_all()

    def _count_refused(self) -> None:
        with self._cond:
            self._refused += 1
        self._log.error("%s: write refused: the outbox is at its disk quota (%d MB); free space or raise "
                        "stores.outbox_quota_mb", self.name, self.outbox.quota_bytes // 2**20)

    def count_refused(self) -> None:
        """A caller's transaction holding this writer's writes was refused at the quota."""
        self._count_refused()

    # -- state -----------------------------------------------------------------------------------------
    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(self._conn is not None, self._pending, self._written, self._rejected, self._refused,
                               self._outages, self.outbox.quota_full)

    def flush(self, timeout: float) -> bool:
        """Wait until every appended write is committed (or rejected); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self._started:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout  # one budget for flushing and stopping, not one each
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            if self._pending:
                self._log.error("%s: closing with %d writes not applied (store unreachable); they stay in the "
                                "outbox and are replayed at the next start", self.name, self._pending)

    # -- the writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except sqlite3.ProgrammingError:
            pass  # the outbox was closed under a writer that outlived its close() budget: the entry stays
        finally:
            self._drop_connection()

    def _loop(self) -> None:
        delay = self._retry[0]
        after = 0
        while True:
            with self._cond:
                while self._pending <= 0 and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
            batch = self.outbox.next_entries(self.name, after)
            if not batch:
                after = 0  # appended behind us (ids only grow) or counted twice: look again from the start
                with self._cond:
                    self._pending = self.outbox.count(self.name)
                    if self._pending:
                        continue
                continue
            for entry in batch:
                outcome = self._one(entry)
                if outcome == "outage":
                    with self._cond:
                        self._outages += 1
                        wait = delay
                        self._cond.wait(wait)  # a close() wakes us early; the entry stays in the outbox
                    delay = min(self._retry[1], self._rng.uniform(self._retry[0], delay * 3))  # decorrelated jitter
                    after = 0
                    break
                delay = self._retry[0]
                after = entry.id
                with self._cond:
                    self._pending = max(0, self._pending - 1)
                    self._cond.notify_all()
                    if self._stopping:
                        break

    def _one(self, entry: Entry) -> str:
        if self.outbox.fenced():  # a stale copy of a camera that moved hosts (handover.py)
            self.outbox.reject(entry, "fenced: a newer placement of this camera writes its results")
            with self._cond:
                self._rejected += 1
            return "rejected"
        try:
            write = self.decode(entry.payload)
        except Exception as err:
            self._log.error("%s: unreadable outbox entry %d set aside: %s", self.name, entry.id, err)
            self.outbox.reject(entry, f"unreadable: {err}")
            with self._cond:
                self._rejected += 1
            return "rejected"
        try:
            if self._conn is None:
                self._conn = self._connect()
                if self._outages:
                    self._log.info("%s: connected again", self.name)
            self._apply(self._conn, write)
        except Exception as err:
            if self._is_outage(err):
                self._drop_connection()
                text = str(err).strip()
                self._log.warning("%s: unreachable (%s), retrying", self.name,
                                  text.splitlines()[0] if text else type(err).__name__)
                return "outage"
            self._log.error("%s: write rejected: %s", self.name, err)
            self.outbox.reject(entry, str(err))
            with self._cond:
                self._rejected += 1
            return "rejected"
        self.outbox.remove(entry)
        with self._cond:
            self._written += 1
        return "written"

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection is dead anyway
                self._close(self._conn)
            self._conn = None
