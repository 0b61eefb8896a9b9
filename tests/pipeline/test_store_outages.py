"""Store outages against real, private Redis and PostgreSQL servers (tests/servers.py): killed,
stopped, frozen, made read-only and restarted mid-run. No completed session may be lost; an
outbox at its quota refuses new writes (counted, logged, flagged) and keeps every write it
holds; a write the store rejects never blocks the rest; close() keeps to its timeout while a
store is down, and what it could not write stays in the outbox for the next writer."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from detector_worker.pipeline.actions import ActionRunner
from detector_worker.pipeline.outbox import Outbox
from detector_worker.pipeline.schema import parse_pipeline
from detector_worker.pipeline.sessions import DisplaySession
from detector_worker.pipeline.sinks import Publish, SaveImage, Upsert, encode_redis, postgres_writer, redis_writer
from detector_worker.pipeline.stores import StoreWriter
from detector_worker.synthetic.standin import standin_pipeline
from tests.pipeline.factories import cycle
from tests.servers import (
    PostgresServer,
    PostgresTemplate,
    RedisServer,
    ServerUnavailable,
    postgres_template,
)

pytestmark = pytest.mark.slow  # make check skips it: Redis and PostgreSQL servers stopped and restarted

LOG = logging.getLogger("test.store_outages")
DISPLAY = "display-7"
# session id, brand, body, colour of the vehicle's crops (tells the saved images apart)
VEHICLES = [("s1", "Aurex", "Sedan", 30), ("s2", "Borvik", "Van", 70), ("s3", "Castell", "SUV", 110),
            ("s4", "Delmar", "Sedan", 150), ("s5", "Elvora", "Pickup", 190)]
OUTAGE_S = 2.0


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PostgresTemplate]:
    """initdb once per test session; every test gets its own copy of it (tests/servers.py)."""
    with postgres_template("store-outages-pg-") as template:
        yield template


@pytest.fixture
def pg(pg_template: PostgresTemplate) -> Iterator[PostgresServer]:
    """A private PostgreSQL on its own port and data dir, not started yet."""
    server = pg_template.server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def rds(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, started redis-server whose acknowledged writes survive a kill -9 (AOF)."""
    try:
        server = RedisServer(tmp_path / "redis", persist=True)
    except ServerUnavailable as err:
        pytest.skip(f"no private Redis: {err}")
    with server:
        server.start()
        yield server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """messages("substring") -> the writers' log messages containing it."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    return lambda part: [r.getMessage() for r in caplog.records if r.name == LOG.name and part in r.getMessage()]


class Display:
    """A DisplaySession writing through an ActionRunner to the two private stores."""

    def __init__(self, redis_url: str, dsn: str) -> None:
        config = parse_pipeline(standin_pipeline(96, 64))
        self.redis = redis_writer(redis_url, LOG)
        self.postgres = postgres_writer(dsn, LOG)
        self.runner = ActionRunner(config.pipeline, self.redis, self.postgres, LOG)  # type: ignore[arg-type]
        self.session = DisplaySession("cam-x", DISPLAY, f"{DISPLAY};cam-x", "m1", "model", self.runner, LOG)

    def bind(self, index: int) -> None:
        """Vehicle `index` becomes stable, then the backend binds its session, then ends it."""
        sid, brand, body, colour = VEHICLES[index]
        self.session.on_cycle(cycle(index + 1, brand, body, colour))
        self.session.set_session(sid)
        self.session.set_session(None)

    def flush(self, timeout: float = 10.0) -> None:
        assert self.redis.flush(timeout), f"redis writes still pending: {self.redis.stats()}"
        assert self.postgres.flush(timeout), f"postgresql writes still pending: {self.postgres.stats()}"

    def image_keys(self) -> dict[str, str]:
        keys = {w.session_id: w.image_key for w in self.session.written}
        assert all(isinstance(k, str) for k in keys.values())
        return keys  # type: ignore[return-value]

    def close(self) -> None:
        self.redis.close(1.0)
        self.postgres.close(1.0)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def expected_rows(indexes: range) -> dict[str, tuple[str, str, str]]:
    return {VEHICLES[i][0]: (DISPLAY, VEHICLES[i][1], VEHICLES[i][2]) for i in indexes}


def rows(pg: PostgresServer) -> dict[str, tuple[str, str, str]]:
    found = pg.execute("SELECT session_id, display_id, car_brand, car_body_type FROM car_frontal_info")
    return {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in found}


def assert_images(rds: RedisServer, display: Display, indexes: range) -> None:
    """Each session's image key holds that session's own vehicle (told apart by its colour)."""
    keys = display.image_keys()
    assert sorted(keys) == [VEHICLES[i][0] for i in indexes]
    client = rds.client()
    try:
        for i in indexes:
            sid, colour = VEHICLES[i][0], VEHICLES[i][3]
            assert f":{sid}:" in keys[sid]
            data = client.get(keys[sid])
            assert isinstance(data, bytes), f"image of session {sid} lost"
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (20, 90, 3) and abs(float(image.mean()) - colour) < 3, sid
    finally:
        client.close()


def command_calls(rds: RedisServer, command: str) -> int:
    """How many times the server ran `command` since it started."""
    client = rds.client()
    try:
        stats = client.info("commandstats").get(f"cmdstat_{command}")
        return int(stats["calls"]) if stats else 0
    finally:
        client.close()


def events(pubsub: redis.client.PubSub, sessions: set[str], timeout: float = 5.0) -> dict[str, dict[str, str]]:
    """The car_detections events received for `sessions` (waits until all came, or the timeout)."""
    got: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + timeout
    while not sessions <= set(got) and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            event = json.loads(msg["data"])
            got[event["session_id"]] = event
    return got


def subscribed(rds: RedisServer) -> redis.client.PubSub:
    pubsub: redis.client.PubSub = rds.client().pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("car_detections")
    deadline = time.monotonic() + 5
    while True:  # the confirmation: from now on every publish reaches us
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "subscribe":
            return pubsub
        assert time.monotonic() < deadline, "no subscription confirmation"


def resized(writer: StoreWriter[object, object], outbox: Outbox | None = None,
            **options: float) -> StoreWriter[object, object]:
    """A writer applying exactly as `writer` (the real sink code) but with another outbox or retry settings."""
    w = StoreWriter(writer.name, writer._connect, writer._apply, writer._close, writer._is_outage,
                    encode=writer.encode, decode=writer.decode, outbox=outbox, log=LOG,
                    **options)  # type: ignore[arg-type]
    writer.close(0.1)  # never used
    return w


def test_redis_restart_mid_run_loses_no_completed_session(
        rds: RedisServer, pg: PostgresServer, logs: Callable[[str], list[str]]) -> None:
    pg.start()
    display = Display(rds.url, pg.dsn)
    try:
        display.bind(0)
        display.bind(1)
        display.flush()
        assert_images(rds, display, range(2))
        rds.kill()  # crash: its acknowledged writes are on disk (AOF)
        down_at = time.monotonic()
        display.bind(2)  # completed while Redis is down: must wait, not vanish
        wait_for(lambda: display.redis.stats().outages >= 1, "the writer noticing the outage")
        stats = display.redis.stats()
        assert not stats.connected and stats.pending == 2 and stats.written == 4, stats
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        rds.start()  # same port, same (persisted) data
        pubsub = subscribed(rds)
        display.bind(3)
        display.bind(4)
        display.flush()

        assert_images(rds, display, range(5))
        got = events(pubsub, {"s4", "s5"})
        keys = display.image_keys()
        for sid in ("s4", "s5"):
            assert got[sid] == {"event": "frontal_detected", "display_id": DISPLAY, "session_id": sid,
                                "image_key": keys[sid]}
        # exactly s3's, s4's and s5's image and event reached the restarted server, once each
        # (each guarded publish also sets its idempotency guard key: 3 images + 3 guards)
        assert command_calls(rds, "publish") == 3 and command_calls(rds, "set") == 6
        stats = display.redis.stats()
        assert stats.connected and stats.outages >= 1 and stats.refused == 0 and stats.rejected == 0, stats
        assert stats.written == 10 and stats.pending == 0, stats  # 5 images + 5 events
        assert rows(pg) == expected_rows(range(5)), "PostgreSQL, never down, has every session"
        pg_stats = display.postgres.stats()
        assert pg_stats.written == 5 and pg_stats.outages == 0 and pg_stats.refused == 0
        assert display.runner.failed == 0
        assert logs("redis: unreachable") and logs("redis: connected again")
        assert not logs("dropped")
    finally:
        display.close()


def test_postgres_restart_mid_run_loses_no_completed_session(
        rds: RedisServer, pg: PostgresServer, logs: Callable[[str], list[str]]) -> None:
    pg.start()
    display = Display(rds.url, pg.dsn)
    try:
        display.bind(0)
        display.bind(1)
        display.flush()
        assert rows(pg) == expected_rows(range(2))
        down_at = time.monotonic()
        pg.stop("fast")  # ends the writer's connection
        display.bind(2)
        wait_for(lambda: display.postgres.stats().outages >= 1, "the writer noticing the outage")
        stats = display.postgres.stats()
        assert not stats.connected and stats.pending == 1 and stats.written == 2, stats
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        pg.start()  # same data dir and port
        display.bind(3)
        display.bind(4)
        display.flush()

        assert rows(pg) == expected_rows(range(5))
        stats = display.postgres.stats()
        assert stats.connected and stats.outages >= 1 and stats.refused == 0 and stats.rejected == 0, stats
        assert stats.written == 5 and stats.pending == 0, stats
        assert_images(rds, display, range(5))
        assert display.redis.stats().written == 10 and display.redis.stats().outages == 0
        assert logs("postgresql: unreachable") and logs("postgresql: connected again")
        assert not logs("dropped")
    finally:
        display.close()


def test_postgres_unreachable_at_start_rows_appear_once_it_is_up(
        rds: RedisServer, pg: PostgresServer, logs: Callable[[str], list[str]]) -> None:
    display = Display(rds.url, pg.dsn)  # the server has never run yet
    try:
        display.bind(0)
        display.bind(1)
        wait_for(lambda: display.postgres.stats().outages >= 2, "the writer retrying")
        stats = display.postgres.stats()
        assert not stats.connected and stats.pending == 2 and stats.written == 0, stats
        assert not display.postgres.flush(0.2)
        pg.start()
        display.flush()
        assert rows(pg) == expected_rows(range(2))  # the table is created by the first write
        stats = display.postgres.stats()
        assert stats.connected and stats.written == 2 and stats.refused == 0 and stats.rejected == 0, stats
        assert_images(rds, display, range(2))
        assert logs("postgresql: connected again")
    finally:
        display.close()


def test_full_outbox_refuses_new_writes_loudly_and_keeps_every_write_it_holds(
        rds: RedisServer, logs: Callable[[str], list[str]]) -> None:
    rds.kill()
    outbox = Outbox.memory(LOG)
    outbox.quota_bytes = 3 * len(encode_redis(SaveImage("k0", b"v0", None)))  # room for three writes
    writer = resized(redis_writer(rds.url, LOG), outbox, retry_max_s=0.5)  # type: ignore[arg-type]
    try:
        accepted = [writer.submit(SaveImage(f"k{i}", f"v{i}".encode(), None)) for i in range(10)]
        assert accepted == [True] * 3 + [False] * 7
        stats = writer.stats()
        assert stats.refused == 7 and stats.pending == 3 and stats.written == 0 and stats.quota_full, stats
        assert len(logs("write refused: the outbox is at its disk quota")) == 7
        assert len(logs("is at its quota")) == 1, "the outbox logs the quota once, the writer each refusal"
        rds.start()
        assert writer.flush(5), writer.stats()
        client = rds.client()
        try:
            assert [client.get(f"k{i}") for i in range(10)] == [b"v0", b"v1", b"v2"] + [None] * 7
        finally:
            client.close()
        stats = writer.stats()
        assert stats.written == 3 and stats.refused == 7 and stats.rejected == 0 and stats.pending == 0, stats
        assert not stats.quota_full, "the flag clears once the outbox has room again"
        assert not logs("dropped")
    finally:
        writer.close(1.0)


def test_redis_rejected_write_is_counted_and_does_not_block_the_rest(
        rds: RedisServer, logs: Callable[[str], list[str]]) -> None:
    writer = redis_writer(rds.url, LOG)
    try:
        writer.submit(SaveImage("bad", b"x", -5))  # ERR invalid expire time: the write's own fault
        writer.submit(SaveImage("good", b"y", 60))
        writer.submit(Publish("car_detections", "{}"))
        assert writer.flush(5), writer.stats()
        stats = writer.stats()
        assert (stats.written, stats.rejected, stats.outages, stats.refused) == (2, 1, 0, 0), stats
        client = rds.client()
        try:
            assert client.get("bad") is None and client.get("good") == b"y"
        finally:
            client.close()
        assert len(logs("redis: write rejected")) == 1
    finally:
        writer.close(1.0)


def test_postgres_rejected_writes_are_counted_and_do_not_block_the_rest(
        pg: PostgresServer, logs: Callable[[str], list[str]]) -> None:
    pg.start()
    pg.execute("CREATE TABLE plates (plate TEXT, display_id TEXT, captured_timestamp TIMESTAMPTZ, "
               "updated_at TIMESTAMPTZ)")  # no unique key: ON CONFLICT (plate) is an error
    writer = postgres_writer(pg.dsn, LOG)
    huge_key = random.Random(1).randbytes(6000).hex()  # an index row larger than PostgreSQL allows
    try:
        writer.submit(Upsert("plates", "plate", "AB-123", DISPLAY, time.time(), {"colour": "red"}))
        writer.submit(Upsert("car_frontal_info", "session_id", huge_key, DISPLAY, time.time(), {"car_brand": "X"}))
        writer.submit(Upsert("car_frontal_info", "session_id", "s1", DISPLAY, time.time(),
                             {"car_brand": "Aurex", "car_body_type": "Sedan"}))
        assert writer.flush(5), writer.stats()
        stats = writer.stats()
        assert (stats.written, stats.rejected, stats.outages, stats.refused) == (1, 2, 0, 0), stats
        assert rows(pg) == {"s1": (DISPLAY, "Aurex", "Sedan")}
        assert pg.execute("SELECT count(*) FROM plates") == [(0,)]
        assert len(logs("postgresql: write rejected")) == 2 and not logs("unreachable")
    finally:
        writer.close(1.0)


@pytest.mark.parametrize("how", ["redis killed", "redis frozen", "postgresql stopped"])
def test_close_while_the_store_is_down_keeps_to_its_timeout(
        how: str, rds: RedisServer, request: pytest.FixtureRequest, logs: Callable[[str], list[str]]) -> None:
    if how.startswith("redis"):
        writer: StoreWriter[object, object] = redis_writer(rds.url, LOG)  # type: ignore[assignment]
        first: object = SaveImage("first", b"1", None)
        later: list[object] = [SaveImage(f"later{i}", b"2", None) for i in range(3)]
    else:
        pg: PostgresServer = request.getfixturevalue("pg")
        pg.start()
        writer = postgres_writer(pg.dsn, LOG)  # type: ignore[assignment]
        first = Upsert("car_frontal_info", "session_id", "first", DISPLAY, time.time(), {})
        later = [Upsert("car_frontal_info", "session_id", f"later{i}", DISPLAY, time.time(), {}) for i in range(3)]
    writer.submit(first)
    assert writer.flush(5)
    if how == "redis killed":
        rds.kill()
    elif how == "redis frozen":
        rds.freeze()  # accepts connections, never answers: the writer hangs in its socket timeout
    else:
        pg.stop("fast")
    for write in later:
        writer.submit(write)
    if how == "redis frozen":
        time.sleep(0.2)  # the writer is now blocked sending the first of them
    else:
        wait_for(lambda: writer.stats().outages >= 1, "the writer noticing the outage")
    assert writer.stats().pending == 3, writer.stats()
    started = time.monotonic()
    writer.close(1.0)
    took = time.monotonic() - started
    assert took < 1.3, f"close(1.0) took {took:.2f} s"
    assert logs(f"{writer.name}: closing with 3 writes not applied")
    assert writer.outbox.count(writer.name) == 3, "kept in the outbox for the next writer"
