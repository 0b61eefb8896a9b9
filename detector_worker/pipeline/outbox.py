"""A camera's durable outbox: every store write and every result awaiting its session, on disk.

One SQLite database (WAL mode, `synchronous=FULL`) per camera, opened by the worker process and
shared by its store writers and display sessions. Nothing is acknowledged before it is
committed here, so a worker killed at any moment (kill -9, an outage of any length) replays
what it had not yet written when it starts again.

Tables:
- `entries`: store writes in order, per channel (`redis`, `postgresql`). An entry is removed
  only when its store committed it (or, logged and kept in `dead`, when the store rejected its
  content). `ikey` is its idempotency key: a second append of the same key is a no-op.
- `notices`: what to tell the gateway once every entry of a group (one session's writes) is
  committed (`session_result` → `patchSession`); taken once (deleted before it is sent).
- `kv`: small named state that must survive a restart or a reload: the result a display holds
  for its next session, which session is bound to which vehicle visit, which vehicles of a lane
  already fired.

A disk quota bounds `entries` plus `kv`: an append over it is refused whole (`QuotaFull`),
counted, logged and flagged (`quota_full`), never silently dropped.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handover import Moved, Op, OutboxReplica

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, ikey TEXT UNIQUE, grp TEXT,
    payload BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_channel ON entries (channel, id);
CREATE INDEX IF NOT EXISTS entries_by_group ON entries (grp);
CREATE TABLE IF NOT EXISTS notices (grp TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv (name TEXT PRIMARY KEY, value BLOB NOT NULL, size INTEGER NOT NULL,
                               updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead (id INTEGER PRIMARY KEY, channel TEXT NOT NULL, ikey TEXT, payload BLOB NOT NULL,
                                 error TEXT NOT NULL, at REAL NOT NULL);
"""
DEAD_KEPT = 1000  # rejected entries kept for the operator (newest)
QUOTA_CLEAR_RATIO = 0.9  # quota_full clears once usage is back under 90 % of the quota


class QuotaFull(RuntimeError):
    """The outbox is at its disk quota: the append was refused (nothing of it was written)."""


@dataclass(frozen=True)
class Entry:
    id: int
    channel: str
    ikey: str | None
    grp: str | None
    payload: bytes


@dataclass
class Tx:
    """One atomic change of the outbox (see `Outbox.transaction`)."""

    _cur: sqlite3.Cursor
    added: int = 0
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    record: bool = False  # keep `changes` (for a replica)
    changes: list[tuple[str, int | str, bytes | None]] = field(default_factory=list)

    def append(self, channel: str, payload: bytes, ikey: str | None = None, grp: str | None = None) -> bool:
        """Queue a store write; False when an entry with this idempotency key is already waiting."""
        self._cur.execute("INSERT OR IGNORE INTO entries (channel, ikey, grp, payload, size, created) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (channel, ikey, grp, payload, len(payload), time.time()))
        if self._cur.rowcount:
            self.added += len(payload)
            if self.record:
                self.changes.append(("entry", int(self._cur.lastrowid or 0), _entry_blob(channel, ikey, grp, payload)))
            return True
        return False

    def notice(self, grp: str, payload: str) -> None:
        self._cur.execute("INSERT OR REPLACE INTO notices (grp, payload, created) VALUES (?, ?, ?)",
                          (grp, payload, time.time()))

    def put(self, name: str, value: bytes) -> None:
        row = self._cur.execute("SELECT size FROM kv WHERE name = ?", (name,)).fetchone()
        self._cur.execute("INSERT OR REPLACE INTO kv (name, value, size, updated) VALUES (?, ?, ?, ?)",
                          (name, value, len(value), time.time()))
        self.added += len(value) - (row[0] if row else 0)
        if self.record:
            self.changes.append(("kv", name, value))

    def delete(self, name: str) -> None:
        row = self._cur.execute("SELECT size FROM kv WHERE name = ?", (name,)).fetchone()
        if row:
            self._cur.execute("DELETE FROM kv WHERE name = ?", (name,))
            self.added -= row[0]
            if self.record:
                self.changes.append(("kv", name, None))


class Outbox:
    def __init__(self, path: Path | str, quota_bytes: int = 512 * 2**20, log: logging.Logger | None = None) -> None:
        self.path = str(path)
        self.quota_bytes = quota_bytes
        self.log = log or logging.getLogger(__name__)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._used = self._measure()
        self.refused = 0  # appends refused at the quota since this process opened the outbox
        self.quota_full = False
        self._notices_maybe_ready = True  # replayed groups may be complete already
        self.replica: OutboxReplica | None = None  # mirrors every change (handover.py), on several hosts

    @classmethod
    def memory(cls, log: logging.Logger | None = None) -> Outbox:
        """A private, in-memory outbox (for a writer used on its own: nothing survives the process)."""
        return cls(":memory:", log=log)

    def _measure(self) -> int:
        a = self._db.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]
        b = self._db.execute("SELECT coalesce(sum(size), 0) FROM kv").fetchone()[0]
        return int(a) + int(b)

    @property
    def used_bytes(self) -> int:
        return self._used

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing; raises QuotaFull (rolled back) when it would grow past the quota."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            tx = Tx(cur, record=self.replica is not None)
            try:
                yield tx
                if tx.added > 0 and self._used + tx.added > self.quota_bytes:
                    raise QuotaFull(f"outbox {self.path} is at its quota ({self.quota_bytes // 2**20} MB, "
                                    f"{self._used} bytes used): refused {tx.added} bytes")
                cur.execute("COMMIT")
            except BaseException as err:
                cur.execute("ROLLBACK")
                if isinstance(err, QuotaFull):
                    self.refused += 1
                    if not self.quota_full:
                        self.log.error("%s", err)
                    self.quota_full = True
                raise
            self._used += tx.added
            if tx.added < 0:
                self._maybe_clear_quota()
            if self.replica is not None and tx.changes:
                self.replica.changed(_ops(tx.changes))  # under the lock: the replica sees changes in order
        for callback in tx.after_commit:
            callback()

    # -- entries -------------------------------------------------------------------------------------
    def append(self, channel: str, payload: bytes, ikey: str | None = None, grp: str | None = None) -> bool:
        with self.transaction() as tx:
            return tx.append(channel, payload, ikey, grp)

    def next_entries(self, channel: str, after: int = 0, limit: int = 32) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT id, channel, ikey, grp, payload FROM entries WHERE channel = ? AND id > ? "
                                    "ORDER BY id LIMIT ?", (channel, after, limit)).fetchall()
        return [Entry(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def count(self, channel: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM entries WHERE channel = ?", (channel,)).fetchone()[0])

    def remove(self, entry: Entry) -> None:
        """The store committed the entry."""
        self._drop(entry, None)

    def reject(self, entry: Entry, error: str) -> None:
        """The store refused the entry's content: kept in `dead`, and its group tells nobody."""
        self._drop(entry, error)

    def _drop(self, entry: Entry, error: str | None) -> None:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("DELETE FROM entries WHERE id = ? RETURNING size", (entry.id,)).fetchone()
                if error is not None:
                    cur.execute("INSERT INTO dead (channel, ikey, payload, error, at) VALUES (?, ?, ?, ?, ?)",
                                (entry.channel, entry.ikey, entry.payload, error[:500], time.time()))
                    cur.execute("DELETE FROM dead WHERE id <= (SELECT max(id) FROM dead) - ?", (DEAD_KEPT,))
                    if entry.grp is not None:
                        cur.execute("DELETE FROM notices WHERE grp = ?", (entry.grp,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            if row:
                self._used -= int(row[0])
                self._maybe_clear_quota()
                if self.replica is not None:
                    self.replica.changed(_ops([("entry", entry.id, None)]))
            if entry.grp is not None:
                self._notices_maybe_ready = True

    def _maybe_clear_quota(self) -> None:
        if self.quota_full and self._used < self.quota_bytes * QUOTA_CLEAR_RATIO:
            self.quota_full = False
            self.log.info("outbox %s: under its quota again (%d bytes used)", self.path, self._used)

    # -- notices ---------------------------------------------------------------------------------------
    def take_ready_notices(self) -> list[str]:
        """Notices whose group has no entry left; deleted before they are returned (at most once)."""
        if not self._notices_maybe_ready:
            return []
        with self._lock:
            self._notices_maybe_ready = False
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                rows = cur.execute("DELETE FROM notices WHERE grp NOT IN (SELECT grp FROM entries WHERE grp IS NOT "
                                   "NULL) RETURNING payload, created").fetchall()
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return [r[0] for r in sorted(rows, key=lambda r: r[1])]

    # -- named state ------------------------------------------------------------------------------------
    def get(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def put(self, name: str, value: bytes) -> None:
        with self.transaction() as tx:
            tx.put(name, value)

    def delete(self, name: str) -> None:
        with self.transaction() as tx:
            tx.delete(name)

    def dead(self) -> list[tuple[str, str | None, str]]:
        """(channel, idempotency key, error) of the rejected entries kept."""
        with self._lock:
            return [(r[0], r[1], r[2]) for r in self._db.execute("SELECT channel, ikey, error FROM dead ORDER BY id")]

    # -- moving hosts (handover.py) -----------------------------------------------------------------------
    def fenced(self) -> bool:
        """A newer placement of this camera took over (several hosts): write nothing more."""
        return self.replica is not None and self.replica.is_fenced()

    def wait_mirrored(self, timeout: float) -> bool:
        """Every change so far is in the replica (several hosts; at once on one host). handover.py."""
        return self.replica is None or self.replica.wait_mirrored(timeout)

    def snapshot(self) -> tuple[list[tuple[int, str, str | None, str | None, bytes]], dict[str, bytes]]:
        """Every entry (id, channel, ikey, group, payload) in order, and the named state."""
        with self._lock:
            entries = [(int(r[0]), str(r[1]), r[2], r[3], bytes(r[4])) for r in self._db.execute(
                "SELECT id, channel, ikey, grp, payload FROM entries ORDER BY id")]
            state = {str(r[0]): bytes(r[1]) for r in self._db.execute("SELECT name, value FROM kv")}
        return entries, state

    def adopt(self, moved: Moved) -> None:
        """Become the outbox of the copy this camera moved from: its entries and state replace ours
        (what is here is of an older placement, whose pending writes that copy held too)."""
        with self.transaction() as tx:
            for table in ("entries", "notices", "kv"):
                tx._cur.execute(f"DELETE FROM {table}")  # fixed table names
            tx.added = -self._used
            for channel, ikey, grp, payload in moved.entries:
                tx.append(channel, payload, ikey, grp)
            for name, value in moved.state.items():
                tx.put(name, value)
            tx.changes.clear()  # a replica attached later pushes the whole outbox
        self.log.info("outbox: took over %d pending write(s) and %d state item(s) of this camera's previous host",
                      len(moved.entries), len(moved.state))

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()


def _entry_blob(channel: str, ikey: str | None, grp: str | None, payload: bytes) -> bytes:
    from .handover import entry_value

    return entry_value(channel, ikey, grp, payload)


def _ops(changes: list[tuple[str, int | str, bytes | None]]) -> list[Op]:
    from .handover import Op, entry_field

    return [Op(entry_field(int(key)) if kind == "entry" else f"k:{key}", value) for kind, key, value in changes]
