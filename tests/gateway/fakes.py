"""In-process stand-ins for the gateway's dependencies: supervisord (the bridge) and the backend socket.

The bus stays real: a GatewayBus on `ipc://` sockets in the test's temp dir, with workers played
by real ZeroMQ DEALER/PUSH sockets (`FakeWorker`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from detector_worker.comms.messages import Control, Hello, Live, Reload, decode_from_gateway, encode
from gateway.assemble import Assembled
from gateway.backend import BackendChannel, BackendLink
from gateway.bus import GatewayBus
from gateway.core import Gateway
from gateway.desired import DesiredState
from gateway.metrics import GatewayMetrics
from gateway.protocol import dump_outgoing
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from gateway.state import CameraState
from gateway.supervisor.bridge import ApplyReport
from gateway.supervisor.local import LocalSupervisor
from gateway.supervisor.programs import ProgramSpec
from gateway.supervisor.rpc import ProcessInfo


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test, run on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class FakeSupervisor:
    """Converges like the bridge (added/removed/replaced by program content) and records every call."""

    def __init__(self) -> None:
        self.programs: dict[str, ProgramSpec] = {}
        self.running: dict[str, int] = {}  # name → pid
        self.calls: list[tuple[str, str]] = []
        self.starting: dict[str, float] = {}  # name → its start (wall clock): STARTING until removed
        self._next_pid = 1000

    def _spawn(self, name: str) -> None:
        self._next_pid += 1
        self.running[name] = self._next_pid

    async def apply(self, desired: Mapping[str, ProgramSpec]) -> ApplyReport:
        report = ApplyReport()
        for name in list(self.programs):
            if name not in desired:
                del self.programs[name]
                self.running.pop(name, None)
                report.removed.append(name)
        for name, spec in desired.items():
            old = self.programs.get(name)
            if old is None:
                report.added.append(name)
                self._spawn(name)
            elif old != spec:
                report.replaced.append(name)
                self._spawn(name)
            else:
                report.unchanged.append(name)
            self.programs[name] = spec
        self.calls.append(("apply", ",".join(sorted(desired))))
        return report

    async def states(self) -> dict[str, ProcessInfo]:
        def state(name: str) -> str:
            return ("STARTING" if name in self.starting else "RUNNING") if name in self.running else "STOPPED"

        return {name: ProcessInfo(name=name, group=name, state=state(name), pid=self.running.get(name, 0),
                                  start=self.starting.get(name, 1), stop=0, exitstatus=0, spawnerr="",
                                  description="", now=time.time())
                for name in self.programs}

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self._spawn(name)

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.running.pop(name, None)

    async def restart(self, name: str) -> None:
        self.calls.append(("restart", name))
        self._spawn(name)

    async def adopt_or_clean(self, specs_dir: Path) -> list[int]:
        return []


class FakeSocket:
    """What BackendLink needs of a WebSocket connection: the frames sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.remote_address = ("127.0.0.1", 1)

    async def send(self, text: str) -> None:
        import json

        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def settings_for(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "cameras_file": None, "port": 0, "log_dir": str(tmp_path / "logs"), "specs_dir": str(tmp_path / "specs"),
        "programs_dir": str(tmp_path / "programs"), "model_cache_dir": str(tmp_path / "cache"),
        "supervisor_socket": str(tmp_path / "supervisor.sock"),
        "bus": {"push_endpoint": f"ipc://{tmp_path}/bus-in", "control_endpoint": f"ipc://{tmp_path}/bus-control"},
        "session_processes": {"process_cleanup_timeout": 0.5, "health_check_interval": 60, "heartbeat_timeout": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GatewaySettings.model_validate(data)


class Harness:
    """A gateway with a fake supervisord, a real bus and a fake backend socket."""

    def __init__(self, settings: GatewaySettings, desired: DesiredState | None = None) -> None:
        self.settings = settings
        self.supervisor = FakeSupervisor()
        self.states: dict[str, CameraState] = {}
        self.metrics = GatewayMetrics(lambda: list(self.states.values()))
        self.channel = BackendChannel(self.metrics.backend_dropped.inc)
        self.gateway = Gateway(settings, desired=desired or DesiredState(settings),
                               supervisor=LocalSupervisor(self.supervisor, settings.specs_dir),
                               bus=GatewayBus(settings.bus.push_endpoint, settings.bus.control_endpoint),
                               backend=self.channel, metrics=self.metrics, states=self.states)
        self.server = GatewayServer(settings, self.gateway, self.channel)
        self.socket = FakeSocket()
        self.link = BackendLink(self.socket, self.metrics.backend_dropped.inc)  # type: ignore[arg-type]
        self.channel.link = self.link

    @property
    def parts(self) -> Assembled:
        return Assembled(self.gateway, self.server)

    async def __aenter__(self) -> Harness:
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.stop()

    async def send(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """One backend message through the server's own path; the frames the gateway answered."""
        import json

        before = len(self.link.outbox)
        await self.server.on_message(self.link, json.dumps(msg))
        return [json.loads(text) for text in list(self.link.outbox)[before:]]

    async def applied(self) -> None:
        assert await self.gateway.wait_applied(5.0), "the plan was not applied in 5 s"

    def worker(self, camera: str) -> FakeWorker:
        """The camera's worker as supervisord runs it (its pid is the program's)."""
        from detector_worker.naming import camera_slug

        name = self.gateway.programs[camera].name
        return FakeWorker(self.settings, camera, camera_slug(camera), self.supervisor.running.get(name, 1))

    def sent_to_backend(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(text) for text in self.link.outbox]


class FakeWorker:
    """A camera worker's two sockets, as the real worker opens them (PUSH out, DEALER identified by slug)."""

    def __init__(self, settings: GatewaySettings, camera: str, slug: str, pid: int = 1) -> None:
        self.camera = camera
        self.pid = pid  # the gateway answers only the pid supervisord runs the camera's program under
        self.ctx = zmq.asyncio.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(settings.bus.push_endpoint)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, slug.encode())
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(settings.bus.control_endpoint)

    async def hello(self) -> Control | Reload | Live:
        await self.dealer.send(encode(Hello(camera=self.camera, sent_at=time.time(), pid=self.pid,
                                            started_at=time.time())))
        return await self.receive()

    async def receive(self, timeout: float = 3.0) -> Control | Reload | Live:
        data = await asyncio.wait_for(self.dealer.recv(), timeout)
        return decode_from_gateway(data)

    async def send(self, message: Any) -> None:
        await self.push.send(encode(message))

    def close(self) -> None:
        self.push.close(0)
        self.dealer.close(0)
        self.ctx.term()


__all__ = ["FakeSupervisor", "FakeWorker", "Harness", "dump_outgoing", "run_async", "settings_for"]
