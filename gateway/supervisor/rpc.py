"""Async client for supervisord's XML-RPC interface: over its unix socket (this host), or over
HTTP with basic auth (`HttpSupervisorClient`: another host's `inet_http_server`).

Each call builds a new `ServerProxy` (proxies are not thread-safe) and runs the blocking call in
a worker thread under `asyncio.wait_for`. supervisor's own transport has no socket timeout, so a
hung supervisord (SIGSTOP, a stuck loop) would leave the thread blocked forever after
`wait_for` gave up: the connection here carries the same timeout.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import socket
import urllib.parse
import xmlrpc.client
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection, getFaultDescription


class SupervisorError(Exception):
    """supervisord answered with a fault; `fault` is its name (BAD_NAME, ALREADY_ADDED, NOT_RUNNING, ...)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.fault = str(getFaultDescription(code))
        # supervisord's fault strings usually start with the name already ("BAD_NAME: camera-x").
        super().__init__(message if message.startswith(self.fault) else f"{self.fault}: {message}")


class SupervisorUnavailable(Exception):
    """supervisord could not be reached or did not answer in time."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    group: str
    state: str  # supervisord's state name: STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int  # 0 when not running
    start: float  # epoch seconds of the last start, 0 if never started
    stop: float  # epoch seconds of the last stop, 0 if never stopped
    exitstatus: int
    description: str
    spawnerr: str
    now: float = 0.0  # supervisord's clock when it answered (another host's clock may differ from ours)

    @classmethod
    def from_rpc(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(name=str(raw["name"]), group=str(raw["group"]), state=str(raw["statename"]), pid=int(raw["pid"]),
                   start=float(raw["start"]), stop=float(raw["stop"]), exitstatus=int(raw["exitstatus"]),
                   description=str(raw["description"]), spawnerr=str(raw.get("spawnerr", "")),
                   now=float(raw.get("now", 0) or 0))


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socketfile)
        self.sock = sock


class _TimedTransport(SupervisorTransport):  # type: ignore[misc]
    def __init__(self, socket_path: Path, timeout_s: float) -> None:
        super().__init__(None, None, serverurl=f"unix://{socket_path}")

        def get_connection() -> _TimedUnixConnection:
            conn = _TimedUnixConnection("localhost", timeout=timeout_s)
            conn.socketfile = str(socket_path)
            return conn

        self._get_connection = get_connection


class SupervisorClient:
    def __init__(self, socket_path: Path, timeout_s: float = 5, *, executor: Executor | None = None) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.where = str(socket_path)  # for error messages
        # The blocking calls run here (None: the loop's default pool, shared with everything else)
        self.executor = executor

    def _call_blocking(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        transport = _TimedTransport(self.socket_path, timeout_s)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy, method)(*args)
        finally:
            transport.close()

    async def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Any RPC by its full name, e.g. `call("supervisor.getState")`."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            blocking = asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(self._call_blocking, method, args, limit))
            return await asyncio.wait_for(blocking, limit)
        except xmlrpc.client.Fault as fault:
            raise SupervisorError(fault.faultCode, fault.faultString) from None
        except xmlrpc.client.ProtocolError as err:  # its text holds the URL, credentials included
            raise SupervisorUnavailable(f"{method} via {self.where}: HTTP {err.errcode} {err.errmsg}") from None
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            raise SupervisorUnavailable(f"{method} via {self.where}: {type(err).__name__}: {err}") from None

    async def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the config files (applies nothing): (added, changed, removed) group names."""
        [[added, changed, removed]] = await self.call("supervisor.reloadConfig")
        return list(added), list(changed), list(removed)

    async def add_group(self, name: str) -> None:
        await self.call("supervisor.addProcessGroup", name)

    async def remove_group(self, name: str) -> None:
        await self.call("supervisor.removeProcessGroup", name)

    async def start(self, name: str, wait: bool = False, *, timeout_s: float | None = None) -> None:
        await self.call("supervisor.startProcess", name, wait, timeout_s=timeout_s)

    async def stop(self, name: str, wait: bool = True, *, timeout_s: float | None = None) -> None:
        """With wait, pass a timeout above the program's stopwaitsecs (it may need SIGKILL)."""
        await self.call("supervisor.stopProcess", name, wait, timeout_s=timeout_s)

    async def stop_all(self, wait: bool = True, *, timeout_s: float | None = None) -> None:
        """Stop every program at once: supervisord's own shutdown stops them one by one (~1 s each)."""
        await self.call("supervisor.stopAllProcesses", wait, timeout_s=timeout_s)

    async def signal(self, name: str, sig: int | str) -> None:
        await self.call("supervisor.signalProcess", name, str(int(sig)) if isinstance(sig, int) else sig)

    async def all_process_info(self) -> list[ProcessInfo]:
        raw = cast(list[dict[str, Any]], await self.call("supervisor.getAllProcessInfo"))
        return [ProcessInfo.from_rpc(r) for r in raw]

    async def process_info(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(await self.call("supervisor.getProcessInfo", name))

    async def pid(self) -> int:
        """supervisord's own pid."""
        return int(await self.call("supervisor.getPID"))

    async def state(self) -> str:
        """supervisord's state name: RUNNING, RESTARTING, SHUTDOWN, FATAL."""
        return str((await self.call("supervisor.getState"))["statename"])

    async def shutdown(self) -> None:
        await self.call("supervisor.shutdown")


class _TimedHttpTransport(xmlrpc.client.Transport):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self._timeout_s
        return conn


class HttpSupervisorClient(SupervisorClient):
    """supervisord of another host, over its `inet_http_server` (http://ADDRESS:PORT) with basic auth.

    An authentication failure is a `SupervisorUnavailable` whose text says so (HTTP 401): the host
    is then reported as refusing our credentials, not as down."""

    def __init__(self, url: str, username: str, password: str, timeout_s: float = 5, *,
                 executor: Executor | None = None) -> None:
        super().__init__(Path("/nonexistent"), timeout_s, executor=executor)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.username or parts.query or parts.fragment:
            raise ValueError("a supervisord URL is http://ADDRESS:PORT (credentials are given separately)")
        user = urllib.parse.quote(username, safe="")
        secret = urllib.parse.quote(password, safe="")
        self._url = f"http://{user}:{secret}@{parts.netloc}/RPC2"
        self.where = f"http://{parts.netloc}"

    def _call_blocking(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        transport = _TimedHttpTransport(timeout_s)
        proxy = xmlrpc.client.ServerProxy(self._url, transport=transport, allow_none=False)
        try:
            return getattr(proxy, method)(*args)
        finally:
            transport.close()
