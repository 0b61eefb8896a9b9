"""The two stores of the pipeline's actions: Redis (crop images, events) and PostgreSQL (results).

Connection settings come from the archive's `redis`/`postgresql` sections unless the deployment
gives its own (`REDIS_URL`/`DATABASE_URL` or the worker spec), so archives need no secrets.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import redis
from psycopg2 import sql

from .schema import PostgresConfig, RedisConfig
from .stores import StoreWriter


@dataclass(frozen=True)
class SaveImage:
    key: str
    data: bytes
    expire_seconds: int | None


@dataclass(frozen=True)
class Publish:
    channel: str
    message: str


@dataclass(frozen=True)
class Upsert:
    table: str
    key_field: str
    key_value: str
    display_id: str
    captured_at: float
    fields: dict[str, str | None]


RedisWrite = SaveImage | Publish


def redis_url(config: RedisConfig | None, override: str | None) -> str:
    if override:
        return override
    c = config or RedisConfig()
    auth = f":{c.password}@" if c.password else ""
    return f"redis://{auth}{c.host}:{c.port}/{c.db}"


def postgres_dsn(config: PostgresConfig | None, override: str | None) -> str:
    if override:
        return override
    if config is None:
        raise ValueError("no PostgreSQL settings: give the archive a postgresql section or set DATABASE_URL")
    parts: dict[str, Any] = {"host": config.host, "port": config.port, "dbname": config.database}
    if config.username:
        parts["user"] = config.username
    if config.password:
        parts["password"] = config.password
    return str(psycopg2.extensions.make_dsn(**parts))


def redis_writer(url: str, log: logging.Logger) -> StoreWriter[redis.Redis, RedisWrite]:
    def connect() -> redis.Redis:
        conn = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        conn.ping()
        return conn

    def apply(conn: redis.Redis, write: RedisWrite) -> None:
        if isinstance(write, SaveImage):
            conn.set(write.key, write.data, ex=write.expire_seconds)
        else:
            conn.publish(write.channel, write.message)

    def is_outage(err: BaseException) -> bool:
        return isinstance(err, (redis.ConnectionError, redis.TimeoutError, OSError))

    return StoreWriter("redis", connect, apply, lambda c: c.close(), is_outage, log=log)


# SQLSTATE classes of a server that can't serve the write now: connection exception, transaction
# rollback (deadlock, serialization), insufficient resources, object in use / lock not available,
# operator intervention (shutdown, starting up, cancelled), system error.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


class _Tables:
    """Tables (and columns) this connection has made sure exist."""

    def __init__(self) -> None:
        self.ready: set[tuple[str, str, tuple[str, ...]]] = set()


def _ensure_table(cur: Any, write: Upsert) -> None:
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


def postgres_writer(dsn: str, log: logging.Logger) -> StoreWriter[Any, Upsert]:
    tables = _Tables()

    def connect() -> Any:
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

    def is_outage(err: BaseException) -> bool:
        if isinstance(err, psycopg2.InterfaceError):
            return True
        if not isinstance(err, psycopg2.OperationalError):
            return False
        # No SQLSTATE: the connection itself failed (refused, closed, timed out). With one, only a
        # server that can't serve now is an outage; psycopg2 also raises OperationalError for the
        # write's own faults (54: an index row too large, ...), which retrying would repeat forever.
        return err.pgcode is None or err.pgcode[:2] in _OUTAGE_SQLSTATE_CLASSES

    return StoreWriter("postgresql", connect, apply, lambda c: c.close(), is_outage, log=log)
