"""A whole fleet in a temp dir for tests: a real supervisord, the real gateway, real workers.

The layout mirrors the project's (conf/supervisord.conf with fleet.d/ and supervisord.d/,
run/, logs/), with free ports, so tests never touch a fleet started by `make run`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]
from websockets.sync.client import ClientConnection, connect

from detector_worker.config.spec import bus_endpoints
from gateway.supervisor.programs import EventListenerSpec, render_eventlistener
from tests.rtsp import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


class Fleet:
    def __init__(self, base: Path, *, cameras: dict[str, Any] | None = None, model_cache: Path,
                 redis_url: str, database_url: str, cleanup_timeout: float = 30.0, token: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.base = base
        self.port = free_port()
        # the bus as shipped: unix sockets in the fleet's 0700 run/ (only this user can connect)
        self.push_endpoint, self.control_endpoint = bus_endpoints(base / "run")
        self.token = token
        for d in ("conf/fleet.d", "conf/supervisord.d", "run", "logs"):
            (base / d).mkdir(parents=True, exist_ok=True)
        os.chmod(base / "run", 0o700)
        self.socket = base / "run" / "supervisor.sock"
        settings: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "project_dir": str(ROOT), "python": PYTHON,
            "supervisor_socket": str(self.socket), "programs_dir": str(base / "conf/supervisord.d"),
            "specs_dir": str(base / "run/specs"), "log_dir": str(base / "logs"),
            "model_cache_dir": str(model_cache), "cameras_file": str(base / "cameras.yaml"),
            "bus": {"push_endpoint": self.push_endpoint, "control_endpoint": self.control_endpoint},
            "session_processes": {"process_cleanup_timeout": cleanup_timeout, "health_check_interval": 1,
                                  "heartbeat_timeout": 15},
            "redis_url": redis_url, "database_url": database_url, **(extra or {}),
        }
        if token:
            settings["token"] = token
        (base / "gateway.yaml").write_text(yaml.safe_dump(settings))
        (base / "cameras.yaml").write_text(yaml.safe_dump(cameras or {"cameras": {}}))
        (base / "conf/supervisord.conf").write_text(f"""
[unix_http_server]
file={self.socket}
chmod=0700
[supervisord]
logfile={base}/logs/supervisord.log
pidfile={base}/run/supervisord.pid
childlogdir={base}/logs
directory={ROOT}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{self.socket}
[include]
files = fleet.d/*.conf supervisord.d/*.conf
""")
        (base / "conf/fleet.d/gateway.conf").write_text(f"""
[program:gateway]
command={PYTHON} -m gateway.cli --config {base}/gateway.yaml
directory={ROOT}
environment=PYTHONUNBUFFERED="1"
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={base}/logs/gateway_stdout.log
""")
        # the same renderer as the shipped conf/fleet.d/events.conf, on this fleet's paths and bus
        (base / "conf/fleet.d/events.conf").write_text(render_eventlistener(EventListenerSpec(
            python=Path(PYTHON), push_endpoint=self.push_endpoint, directory=ROOT,
            stderr_logfile=base / "logs/camera_events.log")))

    # -- supervisord ------------------------------------------------------------------------
    def start(self) -> Fleet:
        subprocess.run([f"{ROOT}/.venv/bin/supervisord", "-c", str(self.base / "conf/supervisord.conf")], check=True)
        self.wait_for(lambda: self.state("gateway") == "RUNNING", 20, "the gateway program")
        self.wait_for(self._http_up, 20, "the gateway's HTTP port")
        return self

    def rpc(self) -> Any:
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl=f"unix://{self.socket}"))

    def state(self, name: str) -> str | None:
        try:
            return str(self.rpc().supervisor.getProcessInfo(name)["statename"])
        except Exception:
            return None

    def programs(self) -> dict[str, tuple[str, int]]:
        """camera program name → (state, pid)."""
        infos = self.rpc().supervisor.getAllProcessInfo()
        return {i["name"]: (i["statename"], i["pid"]) for i in infos if i["name"].startswith("camera-")
                and i["name"] != "camera-events"}

    def stop(self) -> None:
        pid_file = self.base / "run/supervisord.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return
        try:
            self.rpc().supervisor.stopAllProcesses()
            self.rpc().supervisor.shutdown()
        except Exception:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        # never leave a worker behind, whatever happened to supervisord
        subprocess.run(["pkill", "-9", "-f", "--", f"--spec {self.base}/run/specs/"], check=False)

    # -- the gateway ----------------------------------------------------------------------------
    def _http_up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.request("/health"), timeout=1) as r:
                return bool(r.status == 200)
        except Exception:
            return False

    def request(self, path: str) -> Any:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req

    def get(self, path: str) -> tuple[int, bytes, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.request(path), timeout=5) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "")

    def cameras(self) -> dict[str, dict[str, Any]]:
        status, body, _ = self.get("/cameras")
        assert status == 200
        return {c["camera"]: c for c in json.loads(body)["cameras"]}

    def connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return connect(f"ws://127.0.0.1:{self.port}/", additional_headers=headers, open_timeout=5)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Backend:
    """A test backend: one WebSocket connection, every message it received kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def pump(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.received.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.2)
            value = predicate()
            if value:
                return value
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; got types "
                             f"{sorted({m.get('type') for m in self.received})}")


def subscription(display: str, camera: str, rtsp_url: str, model_url: str, **extra: Any) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": rtsp_url, "modelUrl": model_url,
            "modelId": "standin-test", "modelName": "stand-in", **extra}
