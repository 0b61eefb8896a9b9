"""The durable outbox against real, private Redis and PostgreSQL: writes and held results survive a
worker's death and are replayed once; read-only, OOM and failover replies are outages (retried,
never dropped); session state survives a rebuild, so a bound session never takes a second
vehicle; patchSession's notice waits for the commit; store targets come from the operator only."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from detector_worker.pipeline.actions import ActionRunner, check_targets
from detector_worker.pipeline.engine import BranchResult, Lane
from detector_worker.pipeline.models import DetectedObject
from detector_worker.pipeline.outbox import Outbox
from detector_worker.pipeline.schema import PipelineConfigError, parse_pipeline
from detector_worker.pipeline.sessions import DisplaySession
from detector_worker.pipeline.sinks import (
    NoStoreTarget,
    SaveImage,
    Upsert,
    postgres_dsn,
    postgres_is_outage,
    postgres_writer,
    redis_is_outage,
    redis_url,
    redis_writer,
)
from detector_worker.pipeline.visits import LaneMemory
from detector_worker.synthetic.standin import standin_pipeline
from tests.pipeline.factories import cycle
from tests.pipeline.test_store_outages import pg, pg_template, rds  # noqa: F401  (fixtures)
from tests.servers import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.slow
LOG = logging.getLogger("test.exactly_once")
DISPLAY = "display-9"


class Worker:
    """What a worker process holds for one display: outbox, the two writers, one display session."""

    def __init__(self, path: Path, redis: str, dsn: str) -> None:
        self.outbox = Outbox(path, log=LOG)
        config = parse_pipeline(standin_pipeline(96, 64))
        self.redis = redis_writer(redis, LOG, self.outbox, start=False)
        self.postgres = postgres_writer(dsn, LOG, self.outbox, start=False)
        self.runner = ActionRunner(config.pipeline, self.redis, self.postgres, LOG)  # type: ignore[arg-type]
        self.session = DisplaySession("cam-x", DISPLAY, f"{DISPLAY};cam-x", "m1", "model", self.runner, LOG,
                                      outbox=self.outbox)
        self.session.make_notice = lambda display, written: f"{written.session_id}:{written.track_id}"
        self.redis.start()
        self.postgres.start()

    def die(self) -> None:
        """As a kill -9 would leave it: nothing flushed (the threads stop, the file stays)."""
        self.redis.close(0.0)
        self.postgres.close(0.0)
        self.outbox.close()


def rows(server: PostgresServer) -> dict[str, str]:
    try:
        return {str(r[0]): str(r[1]) for r in server.execute("SELECT session_id, car_brand FROM car_frontal_info")}
    except psycopg2.Error:
        return {}


def images(server: RedisServer, session: str) -> list[bytes]:
    client = server.client()
    try:
        return list(client.scan_iter(match=f"inference:{DISPLAY}:*:{session}:*"))
    finally:
        client.close()


def wait(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_writes_and_held_results_survive_a_kill_and_replay_once(
        rds: RedisServer, pg: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "cam-x.sqlite"
    pg.start()
    rds.kill()  # Redis down: the session's image and event wait in the outbox
    w = Worker(path, rds.url, pg.dsn)
    w.session.on_cycle(cycle(1, "Aurex", "Sedan", 40))
    w.session.set_session("s1")  # bound: row (PostgreSQL up) and image (Redis down)
    wait(lambda: "s1" in rows(pg), "s1's row")
    assert w.outbox.take_ready_notices() == [], "no patchSession before every write of the session is committed"
    w.session.on_cycle(cycle(2, "Borvik", "Van", 80))  # a second vehicle during s1: held for the next session
    w.die()

    pg.stop()  # now PostgreSQL is down too while the worker is away
    rds.start()
    w2 = Worker(path, rds.url, pg.dsn)  # the restarted worker
    try:
        assert (w2.session.session_id, w2.session.bound_visit is not None) == ("s1", True), "state restored"
        assert w2.session.pending is not None and w2.session.pending.track_id == 2, "held result restored"
        w2.session.set_session("s1")  # the gateway's control after a restart: the same session, nothing new
        w2.session.on_cycle(cycle(3, "Castell", "SUV", 120))  # s1 already has its vehicle: held, not written
        wait(lambda: len(images(rds, "s1")) == 1, "s1's image replayed")
        # the image is visible in Redis a moment before the writer has removed it from the outbox
        notices: list[str] = []
        wait(lambda: notices.extend(w2.outbox.take_ready_notices()) or notices, "s1's notice")
        assert notices == ["s1:1"], "s1's notice once its writes are committed"
        assert w2.outbox.take_ready_notices() == [], "at most once"
        w2.session.set_session(None)
        w2.session.set_session("s2")  # takes the held vehicle (3 replaced 2)
        time.sleep(0.5)
        pg.start()
        wait(lambda: set(rows(pg)) == {"s1", "s2"}, "s2's row after PostgreSQL is back")
        wait(lambda: len(images(rds, "s2")) == 1, "s2's image")
        assert rows(pg) == {"s1": "Aurex", "s2": "Castell"}
        assert len(images(rds, "s1")) == 1 and len(images(rds, "s2")) == 1
        wait(lambda: w2.outbox.count("redis") == w2.outbox.count("postgresql") == 0, "the outbox drained")
        assert w2.redis.stats().rejected == w2.postgres.stats().rejected == 0
    finally:
        w2.die()

    w3 = Worker(path, rds.url, pg.dsn)  # a third start replays nothing
    try:
        time.sleep(0.5)
        assert w3.redis.stats().written == w3.postgres.stats().written == 0
        assert (w3.session.session_id, w3.session.pending) == ("s2", None)
    finally:
        w3.die()


def test_redis_read_only_replica_and_oom_are_outages_retried_not_dropped(rds: RedisServer) -> None:  # noqa: F811
    writer = redis_writer(rds.url, LOG)
    admin = rds.client()
    try:
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a replica of a dead master: READONLY
        writer.submit(SaveImage("ro", b"1", None))
        wait(lambda: writer.stats().outages >= 2, "retries against the read-only replica")
        assert writer.stats().pending == 1 and writer.stats().rejected == 0
        admin.execute_command("REPLICAOF", "NO", "ONE")
        assert writer.flush(10), writer.stats()
        assert admin.get("ro") == b"1"

        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        outages = writer.stats().outages
        writer.submit(SaveImage("oom", b"2" * 1000, None))
        wait(lambda: writer.stats().outages >= outages + 2, "retries while Redis is out of memory")
        assert writer.stats().pending == 1 and writer.stats().rejected == 0
        admin.config_set("maxmemory", "0")
        assert writer.flush(10), writer.stats()
        assert admin.get("oom") == b"2" * 1000
    finally:
        writer.close(1.0)
        admin.close()


def test_frozen_redis_holds_a_write_for_one_socket_timeout_not_stacked_retries(
        rds: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.WARNING, logger=LOG.name)
    writer = redis_writer(rds.url, LOG)
    try:
        writer.submit(SaveImage("a", b"1", None))
        assert writer.flush(5)
        rds.freeze()
        t0 = time.monotonic()
        writer.submit(SaveImage("b", b"2", None))
        wait(lambda: writer.stats().outages >= 1, "the first failed attempt", timeout=30)
        took = time.monotonic() - t0
        assert took < 8.0, f"one attempt took {took:.1f} s (redis-py's own retries stacked under the writer's)"
        rds.thaw()
        assert writer.flush(15), writer.stats()
    finally:
        rds.thaw()
        writer.close(1.0)


def test_postgres_read_only_is_an_outage_retried_not_dropped(pg: PostgresServer) -> None:  # noqa: F811
    pg.start()
    writer = postgres_writer(pg.dsn, LOG)
    try:
        writer.submit(Upsert("car_frontal_info", "session_id", "s0", DISPLAY, time.time(), {"car_brand": "A"}))
        assert writer.flush(10)
        pg.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        pg.execute("SELECT pg_reload_conf()")
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                   "AND backend_type = 'client backend'")
        writer.submit(Upsert("car_frontal_info", "session_id", "s1", DISPLAY, time.time(), {"car_brand": "B"}))
        wait(lambda: writer.stats().outages >= 2, "retries against the read-only server")
        assert writer.stats().pending == 1 and writer.stats().rejected == 0
        pg.execute("ALTER SYSTEM RESET default_transaction_read_only")
        pg.execute("SELECT pg_reload_conf()")
        assert writer.flush(15), writer.stats()
        assert {r[0] for r in pg.execute("SELECT session_id FROM car_frontal_info")} == {"s0", "s1"}
    finally:
        writer.close(1.0)


def test_outage_classification() -> None:
    import redis

    for reply in ("READONLY You can't write against a read only replica.", "OOM command not allowed",
                  "TRYAGAIN Multiple keys request during rehashing", "MASTERDOWN Link with MASTER is down",
                  "LOADING Redis is loading", "CLUSTERDOWN The cluster is down", "BUSY Redis is busy running a script"):
        assert redis_is_outage(redis.ResponseError(reply)), reply
    assert not redis_is_outage(redis.ResponseError("ERR invalid expire time in 'set' command"))
    assert not redis_is_outage(redis.ResponseError("WRONGTYPE Operation against a key"))


def test_store_targets_come_from_the_operator_only() -> None:
    with pytest.raises(NoStoreTarget):
        redis_url(None)
    with pytest.raises(NoStoreTarget):
        postgres_dsn("")
    assert redis_url("redis://op:6379/1") == "redis://op:6379/1"
    data = standin_pipeline(96, 64)
    data["redis"] = {"host": "attacker.example", "port": 6379}  # parsed, never used (pipelines.py warns)
    config = parse_pipeline(data)
    check_targets(config.pipeline)
    for table in ("Car_Info", "pg_catalog.pg_authid", "x" * 64):
        bad = standin_pipeline(96, 64)
        for node in [bad["pipeline"], *bad["pipeline"]["branches"]]:
            for action in node.get("actions", []) + node.get("parallelActions", []):
                if action["type"] == "postgresql_update_combined":
                    action["table"] = table
        with pytest.raises(PipelineConfigError):
            check_targets(parse_pipeline(bad).pipeline)


def test_postgres_error_classes() -> None:
    class Fake(psycopg2.Error):
        def __init__(self, code: str | None) -> None:
            super().__init__("x")
            self.code = code

        @property
        def pgcode(self) -> str | None:  # type: ignore[override]
            return self.code

    assert postgres_is_outage(Fake("25006"))  # read-only transaction (hot standby)
    assert postgres_is_outage(Fake("57P01"))  # admin shutdown
    assert not postgres_is_outage(Fake("23505"))  # unique violation: the write's own fault
    assert not postgres_is_outage(Fake("54000"))



# -- the visit rule across reloads and restarts (visits.LaneMemory) -------------------------------------

SPOT = (273.0, 262.0, 525.0, 383.0)  # where the parked car of the fault test stands


class _Detector:
    """A fake PipelineInstance: `boxes` is what the next frame shows (a Car and its Frontal each)."""

    def __init__(self) -> None:
        self.root = parse_pipeline(standin_pipeline(96, 64)).pipeline
        self.boxes: list[tuple[float, float, float, float]] = []

    def detect(self, view: object) -> list[DetectedObject]:
        out = []
        for x1, y1, x2, y2 in self.boxes:
            out.append(DetectedObject((x1, y1, x2, y2), "Car", 0.95))
            out.append(DetectedObject((x1 + 5, y1 + (y2 - y1) / 2, x2 - 5, y2 - 5), "Frontal", 0.9))
        return out

    def run_branches(self, frame: object, detections: object) -> dict[str, BranchResult]:
        return {}


class _Camera:
    """One lane (+ its memory in `outbox`) fed frames on a fake clock, 10 frames a second."""

    def __init__(self, outbox: Outbox, clock: float = 1000.0) -> None:
        self.detector = _Detector()
        self.lane = Lane(self.detector)  # type: ignore[arg-type]
        self.memory = LaneMemory(outbox, "cam-x", "m1|url|None", self.lane, LOG)
        self.clock = clock
        self.fired: list[int] = []

    def show(self, seconds: float, *boxes: tuple[float, float, float, float]) -> list[int]:
        frame = np.zeros((480, 640, 3), np.uint8)
        self.detector.boxes = list(boxes)
        fired = []
        for _ in range(round(seconds * 10)):
            self.clock += 0.1
            cycles = self.memory.observe(self.lane.process(frame, time.time(), now=self.clock), now=self.clock)
            fired += [c.track_id for c in cycles]
        self.fired += fired
        return fired

    def drive_in(self, spot: tuple[float, float, float, float] = SPOT) -> list[int]:
        """From far away (a small box near the horizon) to `spot` in 2.8 s, as the synthetic clips do."""
        far = (353.0, 184.0, 385.0, 199.0)
        fired = []
        for i in range(28):
            k = i / 27
            fired += self.show(0.1, tuple(a + (b - a) * k for a, b in zip(far, spot, strict=True)))  # type: ignore[arg-type]
        return fired


def test_a_parked_car_fires_once_through_reloads_and_restarts_whatever_they_take(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "cam-x.sqlite", log=LOG)
    first = _Camera(outbox)
    first.show(1.0)
    assert first.drive_in() == [] and first.show(1.0, SPOT) == [1], "the car fires once, when stable"
    assert first.show(2.0, SPOT) == []

    reloaded = _Camera(outbox, first.clock)  # a reload: a new lane and tracker, the car still there
    assert reloaded.show(3.0, SPOT) == [], "the same car after a reload"

    late = _Camera(outbox, reloaded.clock + 25.0)  # a restart whose first frame comes 25 s later (> REACQUIRE_S)
    assert late.show(3.0, SPOT) == [], "the same car after a long restart"

    # a restart whose stream starts its footage again: the spot empty for 2 s, then the car drives back in
    again = _Camera(outbox, late.clock + 2.0)
    assert again.show(0.8) == [] and again.drive_in() == [] and again.show(3.0, SPOT) == [], \
        "a stream restarted under a parked car: still the same car"
    assert again.memory.remembered == [], "the lane tracks it as its own now"

    # a second restart before the car was seen again keeps the memory (of the car, not of a duplicate)
    blind = _Camera(outbox, again.clock + 1.0)
    assert len(blind.memory.remembered) == 1
    blind.show(1.0)  # the spot empty for 1 s only
    again2 = _Camera(outbox, blind.clock + 1.0)
    assert len(again2.memory.remembered) == 1 and again2.show(3.0, SPOT) == []
    outbox.close()


def test_a_new_car_on_the_spot_of_a_remembered_one_fires_once_the_spot_was_seen_empty(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "cam-x.sqlite", log=LOG)
    first = _Camera(outbox)
    first.drive_in()
    assert first.show(1.0, SPOT) == [1]
    # the worker restarts; meanwhile the car leaves unseen
    second = _Camera(outbox, first.clock + 3.0)
    assert len(second.memory.remembered) == 1
    second.show(3.5)  # the spot seen empty for longer than EMPTY_S: that visit ended
    assert second.memory.remembered == []
    assert second.drive_in() == [] and second.show(1.0, SPOT) == [1], "a new car on the same spot fires"
    assert second.show(3.0, SPOT) == [], "once"

    # seen leaving, the car takes its memory along: the next one fires without any empty wait
    third = _Camera(outbox, second.clock + 1.0)
    assert third.show(1.0, SPOT) == []
    third.show(0.5, (150.0, 262.0, 402.0, 383.0))  # moving away, still tracked (IoU with the spot < 0.7)
    third.show(0.5, (20.0, 262.0, 272.0, 383.0))
    third.show(0.3)
    assert third.drive_in() == [] and third.show(1.0, SPOT) == [2], "a new car right after the old one left"
    outbox.close()


def test_unobserved_time_never_counts_as_an_empty_spot(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "cam-x.sqlite", log=LOG)
    first = _Camera(outbox)
    first.drive_in()
    assert first.show(1.0, SPOT) == [1]
    second = _Camera(outbox, first.clock + 1.0)
    for _ in range(100):  # 10 s of frames the detector did not run on (a motion gate skipping them), or none
        second.clock += 0.1
        second.memory.observe([], now=second.clock)
    assert len(second.memory.remembered) == 1
    assert second.show(3.0, SPOT) == [], "10 s without detector frames: still the same car"
    outbox.close()
