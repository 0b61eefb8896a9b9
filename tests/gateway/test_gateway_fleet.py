"""The gateway with a real supervisord, real workers and a real WebSocket backend client."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS
from tests.fleet import Backend, Fleet, subscription
from tests.rtsp import RtspServer

pytestmark = pytest.mark.slow  # make check skips it: a whole fleet: supervisord, gateway, workers, RTSP

MODEL_URL = (MODELS / ARCHIVE_NAME).as_uri()


@pytest.fixture
def fleet(tmp_path: Path, gateway_model_cache: Path, redis_url: str, database_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "fleet", model_cache=gateway_model_cache, redis_url=redis_url, database_url=database_url,
              cleanup_timeout=3.0, extra={"backend": {"patch_session": True}})  # patchSession is asked for
    try:
        yield f.start()
    finally:
        f.stop()


def backend(fleet: Fleet) -> Backend:
    return Backend(fleet.connect())


@pytest.mark.slow
def test_subscriptions_start_workers_and_detections_arrive(fleet: Fleet, rtsp_server: RtspServer) -> None:
    b = backend(fleet)
    subs = [subscription("display-1", "cam-a", rtsp_server.url("cam-a"), MODEL_URL),
            subscription("display-2", "cam-b", rtsp_server.url("cam-b"), MODEL_URL)]
    b.send({"type": "setSubscriptionList", "payload": subs})
    fleet.wait_for(lambda: len(fleet.programs()) == 2 and all(s == "RUNNING" for s, _ in fleet.programs().values()),
                   30, "two RUNNING camera programs")
    b.wait_for(lambda: {m["subscriptionIdentifier"] for m in b.of_type("imageDetection")} ==
               {"display-1;cam-a", "display-2;cam-b"}, 90, "detections from both cameras")
    det = b.of_type("imageDetection")[0]
    assert det["data"]["modelId"] == "standin-test" and det["data"]["detection"]["carBrand"]
    assert det["timestamp"].endswith("Z")
    report = b.wait_for(lambda: [r for r in b.of_type("stateReport") if len(r["cameraConnections"]) == 2
                                 and all(c["online"] for c in r["cameraConnections"])], 20, "an all-online report")
    assert {c["subscriptionIdentifier"] for c in report[-1]["cameraConnections"]} == {"display-1;cam-a",
                                                                                       "display-2;cam-b"}
    # the same list again restarts nothing
    pids = fleet.programs()
    b.send({"type": "setSubscriptionList", "payload": subs})
    b.pump(3)
    assert fleet.programs() == pids
    # removing one camera stops only it
    b.send({"type": "setSubscriptionList", "payload": subs[:1]})
    fleet.wait_for(lambda: len(fleet.programs()) == 1, 20, "one camera program left")
    (name, (state, pid)), = fleet.programs().items()
    assert pids[name] == (state, pid)


@pytest.mark.slow
def test_two_displays_on_one_camera_share_one_worker(fleet: Fleet, rtsp_server: RtspServer) -> None:
    b = backend(fleet)
    b.send({"type": "setSubscriptionList", "payload": [
        subscription("display-1", "cam-a", rtsp_server.url("cam-a"), MODEL_URL),
        subscription("display-2", "cam-a", rtsp_server.url("cam-a"), MODEL_URL)]})
    fleet.wait_for(lambda: len(fleet.programs()) == 1, 30, "one camera program")
    b.wait_for(lambda: {m["subscriptionIdentifier"] for m in b.of_type("imageDetection")} ==
               {"display-1;cam-a", "display-2;cam-a"}, 90, "detections for both displays")


def test_kill_9_of_a_worker_is_offline_then_online(fleet: Fleet, rtsp_server: RtspServer) -> None:
    b = backend(fleet)
    b.send({"type": "subscribe", "payload": subscription("display-1", "cam-a", rtsp_server.url("cam-a"), MODEL_URL)})
    fleet.wait_for(lambda: fleet.cameras().get("cam-a", {}).get("online"), 40, "cam-a online")
    (_, pid), = fleet.programs().values()
    os.kill(pid, signal.SIGKILL)
    fleet.wait_for(lambda: not fleet.cameras()["cam-a"]["online"], 3, "cam-a offline")
    fleet.wait_for(lambda: fleet.cameras()["cam-a"]["online"], 40, "cam-a online again")
    cam = fleet.cameras()["cam-a"]
    assert cam["restarts"] >= 1 and cam["pid"] != pid


def test_backend_gone_removes_its_cameras_after_the_timeout_but_a_quick_return_keeps_them(
        fleet: Fleet, rtsp_server: RtspServer) -> None:
    sub = subscription("display-1", "cam-a", rtsp_server.url("cam-a"), MODEL_URL)
    b = backend(fleet)
    b.send({"type": "setSubscriptionList", "payload": [sub]})
    fleet.wait_for(lambda: fleet.programs() and all(s == "RUNNING" for s, _ in fleet.programs().values()), 30,
                   "cam-a RUNNING")
    pids = fleet.programs()
    b.ws.close()
    time.sleep(1)
    b2 = backend(fleet)  # back within the 3 s timeout
    b2.send({"type": "setSubscriptionList", "payload": [sub]})
    b2.pump(4)
    assert fleet.programs() == pids, "a quick reconnect restarts nothing"
    b2.ws.close()
    fleet.wait_for(lambda: not fleet.programs(), 15, "the backend's camera removed")


def test_hostile_values_never_reach_a_config_file_raw(fleet: Fleet, rtsp_server: RtspServer) -> None:
    b = backend(fleet)
    hostile = ["x;y", "a\nb", 'q"uote', "p%40ss", "..", "../../etc", "all", "z" * 5000, "[program:evil]"]
    subs = [subscription(f"display-{i}", cam, rtsp_server.url("cam-a"), MODEL_URL) for i, cam in enumerate(hostile)]
    b.send({"type": "setSubscriptionList", "payload": subs})
    b.pump(3)
    conf_dir = fleet.base / "conf/supervisord.d"
    texts = [p.read_text() for p in conf_dir.glob("*.conf")]
    for text in texts:
        assert "[program:evil" not in text and "p%40ss" not in text and "\nb" not in text
        assert text.count("[program:") == 1
        assert "rtsp://" not in text, "URLs and credentials stay in the 0600 spec files"
    for spec in (fleet.base / "run/specs").glob("*.json"):
        assert spec.stat().st_mode & 0o777 == 0o600
    assert all(p.name.startswith("camera-") and "/" not in p.name and " " not in p.name for p in conf_dir.iterdir())
    assert "camera-all" not in {p.stem for p in conf_dir.glob("*.conf")}
    # every answer is either accepted or an error message; the connection stays up
    b.send({"type": "requestState"})
    b.wait_for(lambda: b.of_type("stateReport"), 10, "a stateReport")


def test_every_endpoint_answers_and_bad_messages_get_errors(fleet: Fleet, rtsp_server: RtspServer) -> None:
    b = backend(fleet)
    b.send({"type": "subscribe", "payload": subscription("display-1", "cam-a", rtsp_server.url("cam-a"), MODEL_URL)})
    fleet.wait_for(lambda: fleet.cameras().get("cam-a", {}).get("online"), 40, "cam-a online")
    status, body, ctype = fleet.get("/health")
    assert status == 200 and b'"ok"' in body
    status, body, ctype = fleet.get("/metrics")
    assert status == 200 and b'fleet_camera_online{camera="cam-a"} 1.0' in body
    status, body, ctype = fleet.get("/cameras")
    assert status == 200 and ctype == "application/json"
    fleet.wait_for(lambda: fleet.get("/cameras/cam-a/snapshot")[0] == 200, 20, "a snapshot")
    status, body, ctype = fleet.get("/cameras/cam-a/snapshot")
    assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert fleet.get("/cameras/nope/snapshot")[0] == 404
    assert fleet.get("/nope")[0] == 404
    for raw in ["{not json", '{"type": "launchMissiles"}', '{"type": "subscribe", "payload": {}}', "[]"]:
        b.ws.send(raw)
    errors = b.wait_for(lambda: len(b.of_type("error")) >= 4 and b.of_type("error"), 10, "four errors")
    assert [e["error"]["code"] for e in errors[:4]] == ["invalid_json", "unknown_type", "invalid_message",
                                                        "invalid_message"]
    b.send({"type": "requestState"})
    b.wait_for(lambda: b.of_type("stateReport"), 10, "still answering")


def test_a_bound_session_is_written_and_reported_back_as_patch_session(fleet: Fleet, rtsp_server: RtspServer,
                                                                        database_url: str) -> None:
    import psycopg2

    b = backend(fleet)
    b.send({"type": "subscribe", "payload": subscription("display-1", "cam-b", rtsp_server.url("cam-b"), MODEL_URL)})
    first = b.wait_for(lambda: b.of_type("imageDetection"), 90, "a detection")[0]["data"]["detection"]
    b.send({"type": "setSessionId", "payload": {"displayIdentifier": "display-1", "sessionId": 4711}})
    patch = b.wait_for(lambda: b.of_type("patchSession"), 20, "patchSession")[0]["payload"]
    assert patch["sessionId"] == 4711  # the JSON type the backend sent
    assert (patch["data"]["carBrand"], patch["data"]["bodyType"]) == (first["carBrand"], first["bodyType"])
    assert patch["data"]["imageKey"] and ":4711:" in patch["data"]["imageKey"]

    def row() -> object:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('car_frontal_info')")
            if cur.fetchone()[0] is None:  # type: ignore[index]
                return None
            cur.execute("SELECT car_brand, car_body_type FROM car_frontal_info WHERE session_id = '4711'")
            return cur.fetchone()

    assert fleet.wait_for(row, 10, "the row") == (first["carBrand"], first["bodyType"])
