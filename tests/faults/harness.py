"""What the fault tests share: a recording, reconnecting backend; gap arithmetic; process census.

Everything runs against a whole real fleet (tests/fleet.py): real supervisord, gateway, event
listener and workers, real RTSP servers and real stores. Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import redis

from tests.fleet import Fleet

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = POLL_S) -> Any:
    """predicate()'s first truthy value; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


# -- footage ----------------------------------------------------------------------------------

def normal_gap_s(clip: Path) -> float:
    """The longest time between two consecutive stopped vehicles of a looped clip (ground truth):
    the longest an unaffected camera normally goes without a detection."""
    truth = json.loads(clip.with_suffix(".json").read_text())
    fps = float(truth["fps"])
    period = truth["n_frames"] / fps
    stops = sorted(v["stopped_from"] / fps for v in truth["vehicles"] if v["stopped_from"] is not None)
    assert stops, f"{clip} has no stopped vehicle"
    gaps = [b - a for a, b in itertools.pairwise(stops)] + [stops[0] + period - stops[-1]]
    return max(gaps)


def gaps(times: Iterable[float], start: float, end: float) -> list[float]:
    """Silences between `start`, each time inside [start, end], and `end`."""
    inside = sorted(t for t in times if start <= t <= end)
    points = [start, *inside, end]
    return [b - a for a, b in itertools.pairwise(points)]


# -- the gateway's view ---------------------------------------------------------------------------

def cameras(fleet: Fleet) -> dict[str, dict[str, Any]] | None:
    """/cameras, or None while the gateway does not answer."""
    try:
        with urllib.request.urlopen(fleet.request("/cameras"), timeout=2) as r:
            return {c["camera"]: c for c in json.loads(r.read())["cameras"]}
    except (OSError, urllib.error.URLError, ValueError):
        return None


def camera(fleet: Fleet, name: str) -> dict[str, Any]:
    return (cameras(fleet) or {}).get(name, {})


def metric(fleet: Fleet, name: str, camera_id: str) -> float | None:
    try:
        with urllib.request.urlopen(fleet.request("/metrics"), timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    prefix = f'{name}{{camera="{camera_id}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), None)


def program_pid(fleet: Fleet, name: str) -> int:
    return int(fleet.rpc().supervisor.getProcessInfo(name)["pid"])


# -- processes -------------------------------------------------------------------------------------

def _cmdline(proc: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        if proc.status() != psutil.STATUS_ZOMBIE:
            return proc.cmdline()
    return []


def workers_by_slug(fleet: Fleet) -> dict[str, list[int]]:
    """slug -> pids of every live process whose cmdline has `--spec <fleet>/run/specs/<slug>.json`."""
    prefix = f"{fleet.base}/run/specs/"
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter():
        cmd = _cmdline(proc)
        for i, part in enumerate(cmd[:-1]):
            if part == "--spec" and cmd[i + 1].startswith(prefix) and cmd[i + 1].endswith(".json"):
                found.setdefault(Path(cmd[i + 1]).stem, []).append(proc.pid)
    return {slug: sorted(pids) for slug, pids in found.items()}


def gateway_pids(fleet: Fleet) -> list[int]:
    """Every live gateway process of this fleet (supervised or orphaned)."""
    config = f"{fleet.base}/gateway.yaml"
    return sorted(p.pid for p in psutil.process_iter() if "gateway.cli" in (c := _cmdline(p)) and config in c)


def fleet_pids(fleet: Fleet) -> list[int]:
    """Every live process of this fleet: supervisord, gateway, event listener, workers."""
    base, push = str(fleet.base), fleet.push_endpoint
    out = []
    for proc in psutil.process_iter():
        cmd = _cmdline(proc)
        if any(base in part for part in cmd) or ("gateway.supervisor.events" in cmd and push in cmd):
            out.append(proc.pid)
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(fleet: Fleet) -> list[int]:
    """SIGKILL, by pid, whatever of this fleet still runs (after a test that killed supervisord)."""
    pids = [p for p in fleet_pids(fleet) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


# -- the backend ---------------------------------------------------------------------------------

@dataclass
class Binding:
    display: str
    session_id: str
    at: float  # monotonic, when setSessionId was sent


@dataclass
class RecordingBackend:
    """The controlling backend of a fault test, on a thread of its own.

    Keeps every message with its arrival time (monotonic), reconnects by itself when the
    gateway goes away and then declares the same subscription list again (and re-binds each
    display's current session, as a backend restoring its state would). For the displays in
    `bind` it behaves like the real backend: every `imageDetection` of such a display starts a
    new session (`setSessionId` with a fresh id), which ends the previous one.
    """

    fleet: Fleet
    subscriptions: list[dict[str, Any]]
    bind: set[str] = field(default_factory=set)
    tag: str = "s"
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ws: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-backend", daemon=True)

    # -- lifecycle
    def start(self, timeout: float = 20) -> RecordingBackend:
        self._thread.start()
        wait_until(lambda: self.connects, timeout, "the backend's first connection")
        return self

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ws = self.fleet.connect()
            except Exception:
                self._stop.wait(0.1)
                continue
            with self._lock:
                self._ws = ws
                self.connects.append(time.monotonic())
                current = {b.display: b.session_id for b in self.bindings}
            try:
                self.send({"type": "setSubscriptionList", "payload": self.subscriptions})
                for display, session_id in current.items():
                    self.send({"type": "setSessionId",
                               "payload": {"displayIdentifier": display, "sessionId": session_id}})
                for raw in ws:
                    msg = json.loads(raw)
                    with self._lock:
                        self.received.append((time.monotonic(), msg))
                    if msg.get("type") == "imageDetection":
                        display = msg["subscriptionIdentifier"].split(";", 1)[0]
                        if display in self.bind:
                            self._new_session(display)
            except Exception:
                pass  # the gateway went away: connect again
            finally:
                with self._lock:
                    self._ws = None
                    self.disconnects.append(time.monotonic())
                with contextlib.suppress(Exception):
                    ws.close()

    def _new_session(self, display: str) -> None:
        with self._lock:
            n = sum(1 for b in self.bindings if b.display == display) + 1
            binding = Binding(display, f"{self.tag}-{display}-{n}", time.monotonic())
            self.bindings.append(binding)
        self.send({"type": "setSessionId", "payload": {"displayIdentifier": display, "sessionId": binding.session_id}})

    def send(self, msg: dict[str, Any]) -> bool:
        with self._lock:
            ws = self._ws
            if ws is None:
                return False
            try:
                ws.send(json.dumps(msg))
                return True
            except Exception:
                return False

    # -- what arrived
    def messages(self, kind: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, m) for t, m in self.received if m.get("type") == kind and t >= since]

    def detections(self, subscription: str, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages("imageDetection", since) if m["subscriptionIdentifier"] == subscription]

    def report_entry(self, report: dict[str, Any], subscription: str) -> dict[str, Any] | None:
        return next((c for c in report["cameraConnections"] if c["subscriptionIdentifier"] == subscription), None)

    def first_report(self, subscription: str, since: float,
                     check: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        """The first stateReport after `since` whose entry for `subscription` passes `check`."""
        for t, report in self.messages("stateReport", since):
            entry = self.report_entry(report, subscription)
            if entry is not None and check(entry):
                return t, entry
        return None

    def sessions(self, display: str) -> list[Binding]:
        with self._lock:
            return [b for b in self.bindings if b.display == display]

    def patched(self) -> set[str]:
        """Sessions the gateway said were written (`patchSession`)."""
        return {m["payload"]["sessionId"] for _, m in self.messages("patchSession")}

    def written_since(self, display: str, since: float) -> Binding | None:
        """The first session bound to `display` after `since` whose result the worker wrote."""
        patched = self.patched()
        return next((b for b in self.sessions(display) if b.at >= since and b.session_id in patched), None)


# -- the stores ------------------------------------------------------------------------------------

def stored_sessions(database_url: str) -> dict[str, tuple[str, str | None, str | None]]:
    """session_id -> (display, brand, body type) of every car_frontal_info row."""
    try:
        conn = psycopg2.connect(database_url, connect_timeout=3)
    except psycopg2.Error:
        return {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT session_id, display_id, car_brand, car_body_type FROM car_frontal_info")
            return {str(r[0]): (str(r[1]), r[2], r[3]) for r in cur.fetchall()}
    except psycopg2.Error:
        return {}  # no table yet
    finally:
        conn.close()


def stored_images(redis_url: str, bindings: Iterable[Binding]) -> dict[str, list[str]]:
    """session_id -> the Redis keys of its saved crops (`inference:{display}:{ts}:{session}:{file}`)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return {b.session_id: [k.decode() for k in client.scan_iter(match=f"inference:{b.display}:*:{b.session_id}:*",
                                                                    count=1000)]
                for b in bindings}
    except redis.RedisError:
        return {}
    finally:
        client.close()


def completed(backend: RecordingBackend) -> list[Binding]:
    """Sessions whose result the worker reported written (`patchSession`), and those the backend
    ended by starting the display's next one (a newer vehicle came)."""
    patched = backend.patched()
    out: list[Binding] = []
    for display in sorted(backend.bind):
        sessions = backend.sessions(display)
        out.extend(b for i, b in enumerate(sessions) if i < len(sessions) - 1 or b.session_id in patched)
    return out


def assert_sessions_stored(backend: RecordingBackend, redis_url: str, database_url: str,
                           timeout: float = 20.0) -> dict[str, int]:
    """Every completed session has its row and its image (waiting for writers still retrying)."""
    done = completed(backend)
    missing: dict[str, list[str]] = {}

    def check() -> bool:
        rows = stored_sessions(database_url)
        images = stored_images(redis_url, done)
        missing.clear()
        for b in done:
            if b.session_id not in rows:
                missing.setdefault("row", []).append(b.session_id)
            elif rows[b.session_id][0] != b.display:
                missing.setdefault("row of the wrong display", []).append(b.session_id)
            if not images.get(b.session_id):
                missing.setdefault("image", []).append(b.session_id)
        return not missing

    with contextlib.suppress(AssertionError):
        wait_until(check, timeout, "every completed session's row and image", poll=0.5)
    assert not missing, f"completed sessions lost: {missing} (of {[b.session_id for b in done]})"
    return {"completed": len(done), "bound": len(backend.bindings)}
