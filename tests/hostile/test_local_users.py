"""Another local user cannot reach the bus or supervisord: no forged results, no control of programs.

The fleet's bus is unix sockets in its 0700 run/ and supervisord's socket is 0700: a process of
another user (`nobody`) cannot even connect to either, so it can send nothing. The fleet's own user
can, and a forgery of it does reach the backend: the control case, showing the test would see one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Backend, Fleet
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.rtsp import free_port

pytestmark = [pytest.mark.hostile, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

FORGER = textwrap.dedent("""
    import sys, time, zmq
    from detector_worker.comms.messages import DisplayDetection, SessionResult, VehicleResult, encode
    endpoint, camera = sys.argv[1], sys.argv[2]
    sock = zmq.Context().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    vehicle = VehicleResult(confidence=0.99, brand="FORGED", body_type="FORGED")
    for _ in range(20):
        now = time.time()
        for msg in (DisplayDetection(camera=camera, sent_at=now, subscription_identifier=f"d1;{camera}",
                                     display_id="d1", session_id="forged", track_id=666, model_id=1, model_name="x",
                                     captured_at=now, inference_ms=1, vehicle=vehicle),
                    SessionResult(camera=camera, sent_at=now, subscription_identifier=f"d1;{camera}", display_id="d1",
                                  session_id="forged", track_id=666, image_key=None, vehicle=vehicle)):
            try:
                sock.send(encode(msg), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        time.sleep(0.1)
""")


# Run as the other user by the system's own Python (the project's venv lives under root's home):
# can it open a connection to each endpoint at all? Without one, nothing can be sent.
PROBE = textwrap.dedent("""
    import socket, sys
    for endpoint in sys.argv[1:]:
        scheme, _, where = endpoint.partition("://")
        if scheme == "tcp":
            host, _, port = where.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host, int(port))
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = where
        try:
            sock.connect(address)
            print("CONNECTED", endpoint)
        except OSError as err:
            print("DENIED", endpoint, type(err).__name__)
        finally:
            sock.close()
""")


def _forge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", FORGER, *args], capture_output=True, text=True, timeout=60,
                          cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})


def _forged(backend: Backend) -> list[dict[str, object]]:
    return [m for m in backend.received if m.get("type") in ("imageDetection", "patchSession") and "FORGED" in str(m)]


@pytest.fixture
def fleet(hostile_model_cache: Path, redis_url: str, database_url: str) -> Iterator[Fleet]:
    # Not under pytest's own 0700 temp root: the fleet's run/ must be what keeps other users out.
    base = Path(tempfile.mkdtemp(prefix="fleet-users-"))
    base.chmod(0o755)
    f = Fleet(base / "fleet", model_cache=hostile_model_cache, redis_url=redis_url, database_url=database_url,
              extra={"backend": {"patch_session": True}})
    try:
        yield f.start()
    finally:
        f.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user (runuser)")
def test_another_local_user_can_neither_forge_results_nor_drive_supervisord(fleet: Fleet) -> None:
    backend = Backend(fleet.connect())
    backend.send({"type": "subscribe", "payload": {
        "subscriptionIdentifier": "d1;cam-1", "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/dead",
        "modelUrl": MODEL_URL, "modelId": MODEL_ID}})
    fleet.wait_for(lambda: fleet.programs().get("camera-cam-1", ("", 0))[0] == "RUNNING", 30, "cam-1 running")

    endpoints = [fleet.push_endpoint, fleet.control_endpoint, f"unix://{fleet.socket}"]
    probe = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", PROBE, *endpoints],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert probe.returncode == 0, probe.stderr
    assert [line.split()[0] for line in probe.stdout.splitlines()] == ["DENIED"] * 3, probe.stdout
    mine = subprocess.run(["/usr/bin/python3", "-c", PROBE, *endpoints], capture_output=True, text=True, timeout=60)
    assert [line.split()[0] for line in mine.stdout.splitlines()] == ["CONNECTED"] * 3, mine.stdout
    backend.pump(1)
    assert _forged(backend) == []

    # control: the fleet's own user is trusted, and a forgery of it does arrive (the test can see one)
    own = _forge(fleet.push_endpoint, "cam-1")
    assert own.returncode == 0, own.stderr
    backend.wait_for(lambda: _forged(backend), 10, "the same user's message at the backend")
