"""The two stores of the pipeline's actions: Redis (crop images, events) and PostgreSQL (results).

Store targets come only from the operator (the worker spec's `stores`, else REDIS_URL /
DATABASE_URL): an archive is untrusted input and names only tables, columns and key templates
(validated: actions.check_targets). Its own `redis`/`postgresql` sections are ignored.

Every write is idempotent, so a replay from the outbox changes nothing: an image is a SET of a
key derived from (camera, session, vehicle visit); a row is an upsert on its key; a publish
carries its idempotency key and is sent at most once per key (a Lua script sets a guard key
NX with a TTL and publishes only when it was not set).

redis-py (with redis.asyncio, ~0.2 s) and psycopg2 are imported where they are used, so by a
writer's thread at its first write: a camera's start never waits for them (its writes wait in
the durable outbox meanwhile).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .outbox import Outbox
from .stores import StoreWriter

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class SaveImage:
    key: str
    data: bytes
    expire_seconds: int | None


@dataclass(frozen=True)
class Publish:
    channel: str
    message: str
    dedupe_key: str | None = None  # published at most once per key (for PUBLISH_GUARD_TTL_S)


@dataclass(frozen=True)
class Upsert:
    table: str
    key_field: str
    key_value: str
    display_id: str
    captured_at: float
    fields: dict[str, str | None]


RedisWrite = SaveImage | Publish


class NoStoreTarget(ValueError):
    """The archive's actions need a store the operator did not configure."""


def redis_url(override: str | None) -> str:
    """The operator's Redis (spec `stores.redis_url` or REDIS_URL); never the archive's."""
    if not override:
        raise NoStoreTarget("the pipeline saves to Redis but no Redis is configured: set stores.redis_url "
                            "(gateway.yaml redis_url) or REDIS_URL")
    return override


def postgres_dsn(override: str | None) -> str:
    """The operator's PostgreSQL (spec `stores.database_url` or DATABASE_URL); never the archive's."""
    if not override:
        raise NoStoreTarget("the pipeline writes to PostgreSQL but no database is configured: set "
                            "stores.database_url (gateway.yaml database_url) or DATABASE_URL")
    return override


PUBLISH_GUARD_TTL_S = 7 * 24 * 3600
_GUARDED_PUBLISH = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return -1
"""

# Replies of a Redis that can't serve the write now (read-only replica after a failover, out of
# memory, loading, cluster down, a busy script...): outages, retried; any other reply is the write's own fault.
_REDIS_OUTAGE_REPLIES = ("READONLY", "OOM", "TRYAGAIN", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "BUSY ",
                         "NOREPLICAS", "MISCONF", "NOTREADY")


def redis_is_outage(err: BaseException) -> bool:
    import redis

    if isinstance(err, (redis.ConnectionError, redis.TimeoutError, OSError, redis.exceptions.ReadOnlyError,
                        redis.exceptions.OutOfMemoryError, redis.exceptions.TryAgainError,
                        redis.exceptions.MasterDownError, redis.exceptions.BusyLoadingError,
                        redis.exceptions.ClusterDownError)):
        return True
    if isinstance(err, redis.ResponseError):
        text = str(err).lstrip().upper()
        return any(text.startswith(reply) for reply in _REDIS_OUTAGE_REPLIES)
    return False


def encode_redis(write: RedisWrite) -> bytes:
    if isinstance(write, SaveImage):
        return json.dumps({"t": "image", "key": write.key, "data": base64.b64encode(write.data).decode(),
                           "ex": write.expire_seconds}).encode()
    return json.dumps({"t": "publish", **asdict(write)}).encode()


def decode_redis(data: bytes) -> RedisWrite:
    d = json.loads(data)
    if d["t"] == "image":
        return SaveImage(d["key"], base64.b64decode(d["data"]), d["ex"])
    return Publish(d["channel"], d["message"], d.get("dedupe_key"))


def redis_writer(url: str, log: logging.Logger, outbox: Outbox | None = None,
                 start: bool = True) -> StoreWriter[redis.Redis, RedisWrite]:
    def connect() -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # no retries of redis-py's own: the writer's backoff is the only one (a frozen Redis would
        # otherwise hold one write for ~50 s of stacked retries)
        conn = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0),
                                    retry_on_timeout=False, retry_on_error=[])
        conn.ping()
        return conn

    def apply(conn: redis.Redis, write: RedisWrite) -> None:
        if isinstance(write, SaveImage):
            conn.set(write.key, write.data, ex=write.expire_seconds)
        elif write.dedupe_key is None:
            conn.publish(write.channel, write.message)
        else:
            conn.eval(_GUARDED_PUBLISH, 1, f"outbox:published:{write.dedupe_key}", write.channel, write.message,
                      PUBLISH_GUARD_TTL_S)

    return StoreWriter("redis", connect, apply, lambda c: c.close(), redis_is_outage, encode=encode_redis,
                       decode=decode_redis, outbox=outbox, log=log, start=start)


# SQLSTATE classes of a server that can't serve the write now: connection exception, transaction
# rollback (deadlock, serialization), insufficient resources, object in use / lock not available,
# operator intervention (shutdown, starting up, cancelled), system error.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
# ... and single codes of other classes: a read-only server (a hot standby after a failover,
# default_transaction_read_only) is 25006, raised as InternalError.
_OUTAGE_SQLSTATES = frozenset({"25006"})


class _Tables:
    """Tables (and columns) this connection has made sure exist."""

    def __init__(self) -> None:
        self.ready: set[tuple[str, str, tuple[str, ...]]] = set()


def _ensure_table(cur: Any, write: Upsert) -> None:
    import psycopg2.errors
    from psycopg2 import sql

    table, key = sql.Identifier(write.table), sql.Identifier(write.key_field)
    if write.table == "car_frontal_info" and write.key_field == "session_id":
        create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (display_id TEXT, captured_timestamp TIMESTAMPTZ, "
            "session_id TEXT PRIMARY KEY, license_character TEXT, license_type TEXT, car_brand TEXT, "
            "car_model TEXT, car_body_type TEXT, updated_at TIMESTAMPTZ DEFAULT now())").format(table)
    else:
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({} TEXT PRIMARY KEY, display_id TEXT, "
                         "captured_timestamp TIMESTAMPTZ, updated_at TIMESTAMPTZ DEFAULT now())").format(table, key)
    statements = [create, *(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} TEXT").format(table, sql.Identifier(c))
                            for c in write.fields)]
    for statement in statements:
        # "IF NOT EXISTS" races with another camera creating it at the same moment: then it exists
        with contextlib.suppress(psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable,
                                 psycopg2.errors.DuplicateColumn):
            cur.execute(statement)


def _upsert(cur: Any, write: Upsert) -> None:
    from psycopg2 import sql

    columns = [write.key_field, "display_id", "captured_timestamp", *write.fields, "updated_at"]
    captured = datetime.fromtimestamp(write.captured_at, UTC)
    values = [write.key_value, write.display_id, captured, *write.fields.values(), datetime.now(UTC)]
    updates = [c for c in columns if c != write.key_field]
    cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.Identifier(write.table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        sql.Identifier(write.key_field),
        sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in updates),
    ), values)


def postgres_is_outage(err: BaseException) -> bool:
    import psycopg2

    if isinstance(err, psycopg2.InterfaceError):
        return True
    if not isinstance(err, psycopg2.Error):
        return False
    code = err.pgcode
    if code is None:
        # No SQLSTATE: the connection itself failed (refused, closed, timed out)
        return isinstance(err, psycopg2.OperationalError)
    # With one, only a server that can't serve now is an outage; psycopg2 also raises
    # OperationalError for the write's own faults (54: an index row too large, ...), which
    # retrying would repeat forever.
    return code[:2] in _OUTAGE_SQLSTATE_CLASSES or code in _OUTAGE_SQLSTATES


def encode_upsert(write: Upsert) -> bytes:
    return json.dumps(asdict(write)).encode()


def decode_upsert(data: bytes) -> Upsert:
    return Upsert(**json.loads(data))


def postgres_writer(dsn: str, log: logging.Logger, outbox: Outbox | None = None,
                    start: bool = True) -> StoreWriter[Any, Upsert]:
    tables = _Tables()

    def connect() -> Any:
        import psycopg2

        conn = psycopg2.connect(dsn, connect_timeout=3, keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                keepalives_count=3)
        conn.autocommit = True
        with conn.cursor() as cur:  # a hung server must not hold the writer forever
            cur.execute("SET statement_timeout = '10s'")
        tables.ready.clear()  # a new server may have lost nothing, but check once per connection
        return conn

    def apply(conn: Any, write: Upsert) -> None:
        with conn.cursor() as cur:
            shape = (write.table, write.key_field, tuple(write.fields))
            if shape not in tables.ready:
                _ensure_table(cur, write)
                tables.ready.add(shape)
            _upsert(cur, write)

    return StoreWriter("postgresql", connect, apply, lambda c: c.close(), postgres_is_outage, encode=encode_upsert,
                       decode=decode_upsert, outbox=outbox, log=log, start=start)
