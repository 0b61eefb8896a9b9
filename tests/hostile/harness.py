"""Helpers for the hostile-input suite: a fleet that cleans up after itself, a reusable backend link
that attributes every reply to the message that caused it, and liveness checks of the gateway."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from gateway.supervisor.programs import program_for_camera
from tests.fleet import Fleet

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "700"))  # per property test; `make fuzz` sets many more
CAMERA_STATES_UP = ("STARTING", "RUNNING", "BACKOFF")


def examples(share: float = 1.0) -> int:
    """max_examples for one property test: `share` of FUZZ_EXAMPLES (at least 10)."""
    return max(10, int(FUZZ_EXAMPLES * share))


@contextlib.contextmanager
def running_fleet(base: Path, **kwargs: Any) -> Iterator[Fleet]:
    """A started Fleet; on exit supervisord is shut down and any worker of this fleet that
    survived it is killed by pid (only processes whose --spec lies in this fleet's own dir)."""
    fleet = Fleet(base, **kwargs)
    try:
        yield fleet.start()
    finally:
        fleet.stop()
        marker = f"{base}/run/specs/"
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in part for part in proc.info["cmdline"] or []):
                    proc.send_signal(signal.SIGKILL)


def open_ws(fleet: Fleet) -> ClientConnection:
    """A backend WebSocket to `fleet` (with its token), held open without a `with` block."""
    headers = {"Authorization": f"Bearer {fleet.token}"} if fleet.token else None
    return connect(f"ws://127.0.0.1:{fleet.port}/", additional_headers=headers, open_timeout=5, proxy=None,
                   legacy=True)


def program_name(camera_id: str) -> str:
    """The supervisord program the gateway makes for `camera_id` (only its slug reaches the file)."""
    return program_for_camera(camera_id, python="/x", spec_path=Path("/x"), project_dir=Path("/x"),
                              log_dir=Path("/x")).name


class GatewayWatch:
    """The gateway program must never crash: same pid for the whole module, /health answering."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        info = fleet.rpc().supervisor.getProcessInfo("gateway")
        assert info["statename"] == "RUNNING"
        self.pid = int(info["pid"])

    def check(self) -> None:
        info = self.fleet.rpc().supervisor.getProcessInfo("gateway")
        assert (info["statename"], info["pid"]) == ("RUNNING", self.pid), f"the gateway restarted: {info}"
        status, body, _ = self.fleet.get("/health")
        assert status == 200 and json.loads(body)["status"] == "ok", (status, body[:200])

    def internal_failures(self) -> list[str]:
        """Lines of the gateway's log that say a message was mishandled (should be none)."""
        log = self.fleet.base / "logs" / "gateway_stdout.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or "handling a backend message failed"
                in line or "applying the camera plan failed" in line]


class Link:
    """One backend WebSocket connection reused across many examples.

    `exchange(frame)` sends `frame` and then a marker message of an unknown type; the gateway
    handles a connection's messages in order and answers in order, so everything received before
    the marker's own `error` was caused by `frame` (periodic stateReports aside: the fleets here
    send one only at connect). A connection closed on purpose (`close()`) is reopened on next use;
    one that closed by itself is a failure."""

    _markers = itertools.count()

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._ws: ClientConnection | None = None
        self.reconnects = 0

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            self._ws = open_ws(self.fleet)
            self.reconnects += 1
            first = json.loads(self._ws.recv(timeout=10))  # the report sent at connect
            assert first["type"] == "stateReport", first
        assert self._ws.state is State.OPEN, f"the gateway closed the connection: {self._ws.close_code} " \
                                              f"{self._ws.close_reason!r}"
        return self._ws

    def close(self) -> None:
        """Close on purpose; the next use reconnects."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
        self._ws = None

    def drop(self) -> None:
        """Forget a connection the test itself caused to be closed (e.g. by sending too much)."""
        self._ws = None

    def exchange(self, frame: str | bytes | list[str] | list[bytes], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Send `frame` (a list: one message in fragments) and return every reply it caused."""
        ws = self.ws
        marker = f"zzMarker{next(self._markers)}"
        ws.send(frame)
        ws.send(json.dumps({"type": marker}))
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer to the marker within {timeout} s; got {replies[-5:]}"
            try:
                msg = json.loads(ws.recv(timeout=left))
            except ConnectionClosed as err:
                raise AssertionError(f"the gateway closed the connection: {err}") from None
            if msg.get("type") == "error" and f'"{marker}"' in msg["error"]["message"]:
                assert msg["error"]["code"] == "unknown_type"
                return replies
            replies.append(msg)

    def state_report(self) -> dict[str, Any]:
        """requestState, answered with exactly one stateReport and nothing else."""
        replies = self.exchange(json.dumps({"type": "requestState"}))
        assert [m["type"] for m in replies] == ["stateReport"], replies
        return replies[0]


def errors_of(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["error"] for m in replies if m.get("type") == "error"]


def stop_camera_workers(fleet: Fleet) -> None:
    """Stop every camera program that is (being) started: the gateway's behaviour is under test
    here, not the workers', and idle stopped programs cost the shared cores nothing."""
    rpc = fleet.rpc()
    for name, (state, _) in fleet.programs().items():
        if state in CAMERA_STATES_UP:
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc.supervisor.stopProcess(name, False)


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """relative path → (size, mtime_ns) of every file below `root` (empty when it is missing)."""
    out: dict[str, tuple[int, int]] = {}
    if not root.exists():
        return out
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            with contextlib.suppress(OSError):
                st = path.lstat()
                out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def paths_named(roots: list[Path], needle: str, *, skip: tuple[Path, ...] = (), max_depth: int = 6) -> list[Path]:
    """Every path below `roots` (to `max_depth`) whose name contains `needle`, outside `skip`."""
    found: list[Path] = []
    skipped = tuple(str(s) for s in skip)
    for root in roots:
        base_depth = len(root.parts)
        for dirpath, dirnames, names in os.walk(root, onerror=lambda _: None):
            if dirpath.startswith(skipped) or len(Path(dirpath).parts) - base_depth >= max_depth:
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "__pycache__", "node_modules")]
            found += [Path(dirpath, n) for n in (*dirnames, *names) if needle in n]
    return found
