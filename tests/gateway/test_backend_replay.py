"""A backend session written against the original worker's documentation, replayed over a real fleet.

Top-level `subscriptions`, keys the gateway does not know, integer ids, one bad item in a list,
a source change, a display on two cameras, junk frames: every valid camera runs, each bad item
gets one error, the source change lands within 2 s, the session gets its row, displays the
backend never subscribed send it nothing, and the connection stays up throughout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS
from tests.fleet import Backend, Fleet
from tests.rtsp import RtspServer, free_port

MODEL_URL = (MODELS / ARCHIVE_NAME).as_uri()


def original(display: str, camera: str, rtsp_url: str, **extra: Any) -> dict[str, Any]:
    """A subscription as the original worker's documentation shows it (integer modelId, a crop)."""
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": rtsp_url,
            "snapshotUrl": "http://127.0.0.1:9/snapshot", "snapshotInterval": 5000, "modelUrl": MODEL_URL,
            "modelName": "Car Frontal Pipeline", "modelId": 102, **extra}


@pytest.fixture
def fleet(tmp_path: Path, gateway_model_cache: Path, redis_url: str, database_url: str,
          rtsp_server: RtspServer) -> Iterator[Fleet]:
    # A static camera the backend never hears of: its detections must not reach the backend.
    cameras = {"defaults": {"pipeline": str(MODELS / ARCHIVE_NAME), "model_id": "standin-static"},
               "cameras": {"yard": {"source": {"kind": "rtsp", "url": rtsp_server.url("cam-b")},
                                    "displays": ["yard-screen"]}}}
    f = Fleet(tmp_path / "fleet", cameras=cameras, model_cache=gateway_model_cache, redis_url=redis_url,
              database_url=database_url, cleanup_timeout=5.0)
    try:
        yield f.start()
    finally:
        f.stop()


def _rows(database_url: str, session_id: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT count(*) FROM car_frontal_info WHERE session_id = %s", (session_id,))
        except psycopg2.errors.UndefinedTable:
            return 0
        row = cur.fetchone()
        return int(row[0]) if row else 0


@pytest.mark.slow
def test_an_unmodified_backend_session(fleet: Fleet, rtsp_server: RtspServer, database_url: str) -> None:
    b = Backend(fleet.connect())
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing-here"
    b.send({"type": "setSubscriptionList", "requestId": "r-1", "subscriptions": [
        original("display-1", "cam-a", rtsp_server.url("cam-a"), displayName="Pump 1", cropX1=0, cropY1=0,
                 cropX2=640, cropY2=480),
        original("display-2", "cam-bad", "ftp://127.0.0.1/stream"),
        original("display-3", "cam-x", dead),
    ]})
    errors = b.wait_for(lambda: b.of_type("error"), 10, "the bad item's error")
    assert [e["error"]["subscriptionIdentifier"] for e in errors] == ["display-2;cam-bad"]
    assert errors[0]["error"]["index"] == 1
    fleet.wait_for(lambda: {c for c, info in fleet.cameras().items() if info["process_state"] == "RUNNING"}
                   == {"cam-a", "cam-x", "yard"}, 30, "every valid camera RUNNING")

    # junk frames: one error each, and the connection stays
    for junk in ("not json", '{"type": "noSuchCommand"}', "[1, 2]"):
        b.ws.send(junk)
    b.wait_for(lambda: len(b.of_type("error")) == 4, 10, "an error per junk frame")

    # the dead source is replaced by a working one: once its worker runs, that takes effect within 2 s
    fleet.wait_for(lambda: fleet.cameras()["cam-x"]["last_error"], 30, "cam-x's worker trying its dead source")
    pid = fleet.cameras()["cam-x"]["pid"]
    changed_at = time.monotonic()
    b.send({"type": "setSubscriptionList", "subscriptions": [
        original("display-1", "cam-a", rtsp_server.url("cam-a"), cropX1=0, cropY1=0, cropX2=640, cropY2=480),
        original("display-3", "cam-x", rtsp_server.url("cam-b")),
        original("display-1", "cam-x", rtsp_server.url("cam-b")),  # display-1 now watches two cameras
    ]})
    fleet.wait_for(lambda: fleet.cameras()["cam-x"]["stream_online"], 10, "cam-x online on its new source")
    took = time.monotonic() - changed_at
    assert took <= 2.0, f"the source change took {took:.2f} s"
    assert fleet.cameras()["cam-x"]["pid"] == pid, "a source change reloads the worker, it does not restart it"

    # a session for display-1 (an integer, as the backend sends it) reaches both its cameras
    b.send({"type": "setSessionId", "payload": {"displayIdentifier": "display-1", "sessionId": 4711}})
    sessions = fleet.wait_for(lambda: [c["sessions"].get("display-1") for c in fleet.cameras().values()
                                       if "display-1" in c["sessions"]], 5, "display-1's session on its cameras")
    assert sessions == [4711, 4711]
    fleet.wait_for(lambda: _rows(database_url, "4711") >= 1, 90, "a row under session 4711")

    detections = b.wait_for(lambda: b.of_type("imageDetection"), 60, "detections")
    assert {d["subscriptionIdentifier"] for d in detections} <= {"display-1;cam-a", "display-1;cam-x",
                                                                 "display-3;cam-x"}
    assert all(d["data"]["modelId"] == 102 for d in detections), "modelId goes back as the integer it came as"
    bound = [d for d in detections if d["data"]["detection"].get("sessionId") is not None]
    assert all(d["data"]["detection"]["sessionId"] == 4711 for d in bound)
    assert not b.of_type("patchSession"), "patchSession is off unless the settings turn it on"
    reports = b.of_type("stateReport")
    assert reports and {c["subscriptionIdentifier"] for c in reports[-1]["cameraConnections"]} == {
        "display-1;cam-a", "display-3;cam-x", "display-1;cam-x"}
    assert all(c["modelId"] == 102 for c in reports[-1]["cameraConnections"])
    assert fleet.cameras()["yard"]["detections"] >= 0  # the static camera runs, for itself only
    b.ws.send('{"type": "requestState"}')
    b.wait_for(lambda: len(b.of_type("stateReport")) > len(reports), 5, "the connection still answers")
