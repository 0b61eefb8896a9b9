"""Access: a gateway with a token refuses every endpoint without it, and refuses to start off
loopback without one.

One real fleet with a token for the module. Without the token, or with a wrong one, every HTTP
endpoint and both WebSocket paths answer 401 before anything else happens: no connection takes
over from the real backend, nothing is subscribed, no error is counted. With the right token
(`Authorization: Bearer …`, or `?token=` in the URL) everything works.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from detector_worker.config.spec import SpecError
from gateway.settings import load_settings
from tests.fleet import Fleet
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.hostile.harness import GatewayWatch, Link, errors_of, program_name, running_fleet
from tests.rtsp import free_port

pytestmark = pytest.mark.hostile

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hostile-token-" + "k" * 24
ENDPOINTS = ["/health", "/metrics", "/cameras", "/cameras/benign/snapshot", "/cameras/nope/snapshot", "/nope", "/",
             "/ws"]
WRONG = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong, same length": {"Authorization": "Bearer " + TOKEN[:-1] + "x"},
    "prefix": {"Authorization": "Bearer " + TOKEN[:-1]},
    "longer": {"Authorization": "Bearer " + TOKEN + "x"},
    "lower-case scheme": {"Authorization": "bearer " + TOKEN},
    "basic": {"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN}".encode()).decode()},
    "bare token": {"Authorization": TOKEN},
    "token header": {"X-Token": TOKEN},
    "unicode": {"Authorization": "Bearer " + TOKEN.replace("k", "\u00ea")},
}


class Guarded:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.watch = GatewayWatch(fleet)
        self.link = Link(fleet)  # the real backend (Fleet.connect sends the token)

    def http(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.fleet.port}{path}")
        for key, value in headers.items():
            req.add_header(key, value.encode("utf-8").decode("latin-1"))
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, hostile_model_cache: Path, module_redis_url: str,
            module_database_url: str) -> Iterator[Guarded]:
    base = tmp_path_factory.mktemp("access") / "fleet"
    extra = {"session_processes": {"process_cleanup_timeout": 30, "health_check_interval": 3600,
                                   "heartbeat_timeout": 15}}
    with running_fleet(base, model_cache=hostile_model_cache, redis_url=module_redis_url,
                       database_url=module_database_url, token=TOKEN, extra=extra) as fleet:
        g = Guarded(fleet)
        yield g
        g.watch.check()
        assert not g.watch.internal_failures()
        assert TOKEN not in (fleet.base / "logs" / "gateway_stdout.log").read_text(), "the token was logged"


@pytest.mark.parametrize("how", list(WRONG))
def test_without_the_right_token_every_endpoint_is_401_and_nothing_happens(guarded: Guarded, how: str) -> None:
    metrics_before = guarded.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    headers = WRONG[how]
    for path in ENDPOINTS:
        status, body = guarded.http(path, headers)
        assert (status, json.loads(body)) == (401, {"error": "unauthorized"}), (path, status, body[:200])
        status, body = guarded.http(f"{path}?token={TOKEN[:-1]}x", headers)
        assert status == 401, (path, "?token= wrong")
        for ws_path in ("/", "/ws"):
            with pytest.raises(InvalidStatus) as info:
                connect(f"ws://127.0.0.1:{guarded.fleet.port}{ws_path}", additional_headers=headers,
                        open_timeout=5, proxy=None)
            assert info.value.response.status_code == 401
    # no effect: nothing was counted or subscribed, the real backend is still connected and in charge
    metrics_after = guarded.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    counted = [line for line in metrics_after.decode().splitlines() if line.startswith("fleet_backend_errors")]
    assert counted == [line for line in metrics_before.decode().splitlines()
                       if line.startswith("fleet_backend_errors")]
    report = guarded.link.state_report()
    assert report["cameraConnections"] == []
    assert guarded.fleet.programs() == {}
    guarded.watch.check()


def test_with_the_right_token_everything_works(guarded: Guarded) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/health", "/metrics", "/cameras"):
        assert guarded.http(path, bearer)[0] == 200, path
        assert guarded.http(f"{path}?token={TOKEN}", {})[0] == 200, f"{path}?token="
    assert guarded.http("/cameras/nope/snapshot", bearer)[0] == 404
    assert guarded.http("/nope", bearer)[0] == 404
    # the WebSocket: subscribe a camera, see it start, remove it
    sub = {"subscriptionIdentifier": "display-1;guarded-cam", "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/x",
           "modelUrl": MODEL_URL, "modelId": MODEL_ID}
    assert not errors_of(guarded.link.exchange(json.dumps({"type": "subscribe", "payload": sub})))
    guarded.fleet.wait_for(lambda: program_name("guarded-cam") in guarded.fleet.programs(), 20, "the program")
    assert not errors_of(guarded.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": []})))
    guarded.fleet.wait_for(lambda: not guarded.fleet.programs(), 30, "the program removed")
    # ?token= in the WebSocket URL works too (and takes over as the backend)
    with connect(f"ws://127.0.0.1:{guarded.fleet.port}/ws?token={TOKEN}", open_timeout=5, proxy=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "stateReport"
    guarded.link.drop()
    guarded.watch.check()


# ---------------------------------------------------------------------------------------------
# Off loopback, a token is required to start at all


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "LOCALHOST", "",
                                  "::ffff:127.0.0.1", "127.0.0.1 "])
def test_settings_refuse_a_non_loopback_host_without_a_token(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    with pytest.raises(SpecError, match="token"):
        load_settings(None, host=host)
    with pytest.raises(SpecError, match="token"):  # too short to count as one
        load_settings(None, host=host, token="short")
    assert load_settings(None, host=host, token=TOKEN).token == TOKEN


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_settings_accept_loopback_without_a_token(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    assert load_settings(None, host=host).token is None


@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host", "0.0.0.0", "--port", "1"], ["--host", "::"]])
def test_the_gateway_cli_refuses_to_start_off_loopback_without_a_token(args: list[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    # Run the real command only once it is certain to stop at its settings (else it would serve the
    # project's own directories).
    with pytest.raises(SpecError):
        load_settings(None, host=args[1])
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 78, (done.returncode, done.stderr[-500:])  # EX_CONFIG
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detector-gateway: ") and "token" in lines[0], done.stderr
