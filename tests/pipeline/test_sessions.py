"""Sessions, actions and stores against real Redis and PostgreSQL (no models involved)."""

from __future__ import annotations

import json
import logging
import time
import uuid

import cv2
import numpy as np
import psycopg2
import redis

from detector_worker.pipeline.actions import ActionRunner
from detector_worker.pipeline.schema import parse_pipeline
from detector_worker.pipeline.sessions import DisplaySession
from detector_worker.pipeline.sinks import postgres_writer, redis_writer
from detector_worker.synthetic.standin import standin_pipeline
from tests.pipeline.factories import cycle

LOG = logging.getLogger("test")


def make_display(display: str, redis_url: str, database_url: str) -> tuple[DisplaySession, ActionRunner]:
    config = parse_pipeline(standin_pipeline(96, 64))
    runner = ActionRunner(config.pipeline, redis_writer(redis_url, LOG), postgres_writer(database_url, LOG), LOG)
    return DisplaySession("cam-x", display, f"{display};cam-x", "m1", "model", runner, LOG), runner


def rows(database_url: str) -> dict[str, tuple[str, str, str]]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('car_frontal_info')")
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return {}  # created with the first write
        cur.execute("SELECT session_id, display_id, car_brand, car_body_type FROM car_frontal_info")
        return {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}


def flush(runner: ActionRunner) -> None:
    assert runner.redis is not None and runner.postgres is not None
    assert runner.redis.flush(10) and runner.postgres.flush(10)


def test_result_waits_for_its_session_then_is_written_once(redis_url: str, database_url: str) -> None:
    display = f"display-{uuid.uuid4().hex[:8]}"
    session, runner = make_display(display, redis_url, database_url)
    r = redis.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    pubsub.subscribe("car_detections")
    session.on_cycle(cycle(1, "Aurex", "Sedan", 50))
    flush(runner)
    assert rows(database_url) == {}, "nothing is written before a session id arrives"
    sid = f"sess-{uuid.uuid4().hex[:8]}"
    session.set_session(sid)
    flush(runner)
    assert rows(database_url) == {sid: (display, "Aurex", "Sedan")}
    (written,) = session.written
    assert written.session_id == sid and written.track_id == 1
    assert written.image_key is not None and f":{sid}:" in written.image_key and display in written.image_key
    image = cv2.imdecode(np.frombuffer(r.get(written.image_key), np.uint8), cv2.IMREAD_COLOR)  # type: ignore[arg-type]
    assert image.shape == (20, 90, 3), "the Frontal crop is what is saved"
    assert 0 < r.ttl(written.image_key) <= 600
    deadline = time.monotonic() + 5
    event = None
    while time.monotonic() < deadline and event is None:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            event = json.loads(msg["data"])
    assert event == {"event": "frontal_detected", "display_id": display, "session_id": sid,
                     "image_key": written.image_key}
    for closer in (runner.redis, runner.postgres):
        assert closer is not None
        closer.close()


def test_second_vehicle_waits_for_the_next_session_and_ended_vehicle_never_returns(
        redis_url: str, database_url: str) -> None:
    display = f"display-{uuid.uuid4().hex[:8]}"
    session, runner = make_display(display, redis_url, database_url)
    session.set_session("s1")
    session.on_cycle(cycle(1, "Aurex", "Sedan", 50))  # bound at once
    session.on_cycle(cycle(2, "Borvik", "Van", 90))  # same session already has its vehicle: waits
    flush(runner)
    assert rows(database_url) == {"s1": (display, "Aurex", "Sedan")}
    session.set_session(None)
    session.set_session("s2")
    flush(runner)
    assert rows(database_url) == {"s1": (display, "Aurex", "Sedan"), "s2": (display, "Borvik", "Van")}
    session.set_session(None)
    session.set_session("s3")  # no new vehicle: nothing to write for s3
    flush(runner)
    assert set(rows(database_url)) == {"s1", "s2"}
    assert [(w.session_id, w.track_id) for w in session.written] == [("s1", 1), ("s2", 2)]


def test_two_displays_with_interleaved_sessions_never_cross(redis_url: str, database_url: str) -> None:
    a, ra = make_display(f"display-a-{uuid.uuid4().hex[:6]}", redis_url, database_url)
    b, rb = make_display(f"display-b-{uuid.uuid4().hex[:6]}", redis_url, database_url)
    a.on_cycle(cycle(1, "Aurex", "Sedan", 10))
    b.on_cycle(cycle(1, "Hollis", "Van", 200))  # same track number, other camera/display
    b.set_session("sb")
    a.set_session("sa")
    a.set_session(None)
    a.on_cycle(cycle(2, "Castell", "SUV", 30))
    a.set_session("sa2")
    flush(ra)
    flush(rb)
    got = rows(database_url)
    assert got == {"sa": (a.display_id, "Aurex", "Sedan"), "sb": (b.display_id, "Hollis", "Van"),
                   "sa2": (a.display_id, "Castell", "SUV")}


def test_template_values_cannot_break_the_published_json(redis_url: str, database_url: str) -> None:
    display = 'disp"lay\\{x}'
    session, runner = make_display(display, redis_url, database_url)
    r = redis.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    pubsub.subscribe("car_detections")
    session.on_cycle(cycle(1, "Aurex", "Sedan", 50))
    session.set_session('s"1')
    flush(runner)
    deadline = time.monotonic() + 5
    event = None
    while time.monotonic() < deadline and event is None:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            event = json.loads(msg["data"])
    assert event is not None and event["display_id"] == display and event["session_id"] == 's"1'
    assert runner.failed == 0
