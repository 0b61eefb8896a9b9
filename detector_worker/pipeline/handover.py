"""A camera's outbox mirrored to Redis while it runs on one of several hosts, so the host it moves to
starts where the last one stopped.

The outbox (outbox.py) is a SQLite file on the worker's own disk: it makes a result survive a
kill -9 and a store outage, but not a move. When the camera's host is lost, the gateway starts the
camera elsewhere with a higher placement epoch (gateway/hosts). That copy must know what the
lost one knew: the store writes not yet committed, which session holds which vehicle visit, the
result waiting for its session, which parked vehicles already fired. Without it, the parked car
fires again, a bound session takes a second vehicle, a pending result is lost.

So every committed change of the outbox (entries appended and removed, named state put and
deleted; not the notices, which are at most once anyway) is queued here and written by a
background thread to one Redis hash per camera, `fleet:outbox:<fleet id>:<slug>`, with the writer's epoch:

- `claim()` at start, atomically: a newer epoch there means this copy is stale (`Fenced`: the
  worker exits before it sends anything); an older one means a move: the hash's content replaces
  the local outbox (`adopt`), and the epoch is raised, so the old copy's later mirror writes are
  refused; the same epoch is a restart in place: the local file is the truth and is pushed whole.
- every batch of changes is written by one Lua script that first checks the epoch, so a stale
  copy that comes back from a partition can never overwrite the new copy's state.
- the store writers ask `is_fenced()` before every write (the epoch read at most once a second):
  a stale copy back from a partition writes nothing it made after the new copy took over (what it
  had before, the new copy took over and writes itself; writes are idempotent).
- Redis unreachable: changes wait; once it answers again the whole outbox is pushed (a resync),
  so nothing in between is missed. Writes to the stores never wait for the mirror.

What survives a move is what reached Redis before the host was lost. Changes are written within
milliseconds, and a vehicle's cycle (it fired, the writes it made) is in Redis before the gateway hears
of the vehicle: the worker waits for it (`wait_mirrored`, at most runtime.MIRROR_WAIT_S), so a host
lost in between cannot leave a reported vehicle unknown to the next copy, which would report it again
(a second session). Other changes in that instant are lost, as a disk loss would lose them on one host.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from .outbox import Outbox

KEY = "fleet:outbox:{fleet}:{slug}"
FENCE_CHECK_S = 1.0  # how stale the writers' view of the epoch may be
TTL_S = 7 * 24 * 3600  # a camera away this long starts empty wherever it comes back
RETRY_S = 1.0

# KEYS[1] the hash; ARGV: epoch, replace ("1": drop everything first), ttl, then ops: "s" field value | "d" field
_APPLY = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local mine = tonumber(ARGV[1])
if cur > mine then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
local i = 4
while i <= #ARGV do
  if ARGV[i] == 's' then redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2]); i = i + 3
  else redis.call('HDEL', KEYS[1], ARGV[i + 1]); i = i + 2 end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
# KEYS[1] the hash; ARGV[1] epoch → {"fenced"} | {"moved", field, value, ...} | {"same"} | {"new"}
_CLAIM = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '-1')
local mine = tonumber(ARGV[1])
if cur > mine then return {'fenced', tostring(cur)} end
if cur == mine then return {'same'} end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
if cur < 0 then return {'new'} end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'moved')
return out
"""


class Fenced(RuntimeError):
    """A newer placement of this camera runs elsewhere: this copy is stale and must not run."""


@dataclass(frozen=True)
class Op:
    field: str
    value: bytes | None  # None: delete the field


def entry_field(entry_id: int) -> str:
    return f"e:{entry_id}"


def entry_value(channel: str, ikey: str | None, grp: str | None, payload: bytes) -> bytes:
    return json.dumps([channel, ikey, grp]).encode() + b"\n" + payload


def parse_entry(value: bytes) -> tuple[str, str | None, str | None, bytes]:
    head, _, payload = value.partition(b"\n")
    channel, ikey, grp = json.loads(head)
    return str(channel), ikey, grp, payload


@dataclass
class Moved:
    """The outbox of the copy this one replaces: entries in their order, and named state."""

    entries: list[tuple[str, str | None, str | None, bytes]]
    state: dict[str, bytes]


class OutboxReplica:
    def __init__(self, redis_url: str, fleet_id: str, slug: str, epoch: int,
                 log: logging.Logger | None = None) -> None:
        self.key = KEY.format(fleet=fleet_id, slug=slug)
        self.epoch = epoch
        self.log = log or logging.getLogger(__name__)
        self._url = redis_url
        self._conn: redis.Redis | None = None
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._outbox: Outbox | None = None
        self._resync = True  # push the whole outbox first, and again after Redis was away
        self.fenced = False
        self._checked = 0.0  # monotonic time of the last epoch check
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._closing = threading.Event()
        self._queued = self._mirrored = 0  # changes queued / written to Redis so far (wait_mirrored)

    def _redis(self) -> redis.Redis:
        if self._conn is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._conn = redis.Redis.from_url(self._url, socket_connect_timeout=2, socket_timeout=5,
                                              retry=Retry(NoBackoff(), 0), retry_on_error=[])
        return self._conn

    def claim(self) -> Moved | None:
        """Take the camera for this epoch. Returns the previous copy's outbox after a move (None for a
        restart in place or a first start); raises `Fenced` when a newer copy holds it, and any
        redis error when Redis cannot be asked (the caller starts from its local outbox then)."""
        reply = self._redis().eval(_CLAIM, 1, self.key, str(self.epoch))
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "fenced":
            raise Fenced(f"placement epoch {int(reply[1])} of this camera runs elsewhere; this copy's is {self.epoch}")
        if kind != "moved":
            return None
        fields = dict(zip(reply[1::2], reply[2::2], strict=True))
        entries = sorted(((int(k[2:]), v) for k, v in fields.items() if k.startswith(b"e:")))
        return Moved([parse_entry(bytes(v)) for _, v in entries],
                     {k[2:].decode(): bytes(v) for k, v in fields.items() if k.startswith(b"k:")})

    def is_fenced(self) -> bool:
        """Whether a newer copy of this camera took over (asked of Redis at most every FENCE_CHECK_S;
        when Redis can't be asked, the last answer)."""
        if self.fenced:
            return True
        now = time.monotonic()
        if now - self._checked >= FENCE_CHECK_S:
            try:
                current = self._redis().hget(self.key, "epoch")
            except Exception:  # unreachable: the write itself will find out; asked again at the next write, so
                return False  # the first write after a partition heals never goes by an answer from before it
            self._checked = now
            if current is not None and int(current) > self.epoch:
                self._fence(int(current))
        return self.fenced

    def _fence(self, newer: int) -> None:
        self.fenced = True
        self.log.error("placement epoch %d of this camera runs elsewhere (this copy's is %d): this copy is stale, "
                       "it writes and mirrors nothing more and will be stopped", newer, self.epoch)

    def attach(self, outbox: Outbox) -> None:
        """Mirror `outbox` from now on (its whole content first)."""
        self._outbox = outbox
        self._thread = threading.Thread(target=self._run, name="outbox-replica", daemon=True)
        self._thread.start()

    def changed(self, ops: Iterable[Op]) -> None:
        with self._progress:
            for op in ops:
                self._queue.put(op)
                self._queued += 1

    def wait_mirrored(self, timeout: float) -> bool:
        """Wait until every change queued so far is in Redis (False: not within `timeout`, e.g. Redis
        unreachable). The worker calls it between a vehicle's cycle and telling the gateway of it, so a
        host lost in that instant cannot leave a reported vehicle unknown to the copy that takes over."""
        if self._thread is None:
            return True  # not mirroring (yet): nothing to wait for
        deadline = time.monotonic() + timeout
        with self._progress:
            target = self._queued
            while self._mirrored < target and not self.fenced:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self) -> None:
        if self._thread is not None:
            self._closing.set()
            self._queue.put(None)
            self._thread.join(2.0)

    def _run(self) -> None:
        while True:
            batch: list[Op] = []
            first = self._queue.get()
            if first is None:
                return
            batch.append(first)
            while len(batch) < 256:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    self._write(batch)
                    return
                batch.append(op)
            self._write(batch)
            with self._progress:
                self._mirrored += len(batch)
                self._progress.notify_all()

    def _write(self, batch: list[Op]) -> None:
        import redis

        while not self.fenced:
            try:
                if self._resync:
                    self._push(self._whole(), replace=True)
                    self._resync = False
                else:
                    self._push(batch, replace=False)
                return
            except (redis.RedisError, OSError) as err:
                if not self._resync:
                    self.log.warning("outbox mirror: Redis unreachable (%s); resyncing when it is back", err)
                self._resync = True  # the whole outbox then: it includes this batch
                if self._closing.wait(RETRY_S):
                    return  # the worker is stopping: its file keeps the changes (a restart in place pushes them)

    def _whole(self) -> list[Op]:
        assert self._outbox is not None
        entries, state = self._outbox.snapshot()
        return ([Op(entry_field(i), entry_value(c, k, g, p)) for i, c, k, g, p in entries]
                + [Op(f"k:{name}", value) for name, value in state.items()])

    def _push(self, ops: list[Op], *, replace: bool) -> None:
        args: list[Any] = [str(self.epoch), "1" if replace else "0", str(TTL_S)]
        for op in ops:
            args += ["d", op.field] if op.value is None else ["s", op.field, op.value]
        if not self._redis().eval(_APPLY, 1, self.key, *args):
            self._fence(int(self._redis().hget(self.key, "epoch") or 0))
