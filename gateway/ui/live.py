"""The dashboard's live end: one WebSocket per open page (`/ui/live`), the operator's actions on it.

A page says what it looks at (`watch`: camera ids; `logs`: one camera's log tail) and gets:
`state` (the gateway and every camera, once a second; shared by all pages, built once), `frame`
(a watched camera's newest snapshot with its tracks, only when a new one arrived), `detections`
(a watched camera's last 20, with crops), `logs` (the tail, then what is appended) and `result`
(of an action). While any page watches a camera, its worker holds a `Live` lease, renewed here,
and sends snapshots every `FRAME_INTERVAL_S` instead of every `bus.snapshot_interval_s`.

Actions (`control`: start, stop, restart a camera; `host`: drain, undrain a worker host) go through
`Gateway.operate` / `Gateway.drain_host`, the serialized supervisord
bridge; a stop is an operator stop, which stays stopped. They exist only as WebSocket messages:
a WebSocket is opened only by `server.process_request`, after its Host, Origin and authorization
checks, and a cross-site form can neither open one nor post to this port (GET only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from detector_worker.comms.messages import DisplayDetection, Snapshot
from detector_worker.logs import log_path

from .. import views

if TYPE_CHECKING:
    from ..core import Gateway

log = logging.getLogger("gateway.ui")
FRAME_INTERVAL_S = 0.25  # a watched camera: a snapshot every 0.25 s at most (2.5/s at 5 fps: every 2nd frame)
LEASE_S = 6.0  # how long a Live lease lasts; renewed every LEASE_RENEW_S while a page watches
LEASE_RENEW_S = 2.0
TICK_S = 0.1  # how often a page's loop looks for new frames
STATE_S = 1.0
LOG_POLL_S = 0.5
LOG_LINES = 200
LOG_READ_MAX = 256 * 1024  # bytes read per poll at most (a flood is cut, not buffered)
RECENT = 20
HOUR_S = 3600.0
MAX_WATCH = 256
MAX_CLIENT_MESSAGE = 64 * 1024
ACTIONS = ("start", "stop", "restart")
HOST_ACTIONS = ("drain", "undrain")


@dataclass(eq=False)  # a page is itself, kept in a set
class _Page:
    ws: ServerConnection
    watching: set[str] = field(default_factory=set)
    sent: dict[str, Snapshot] = field(default_factory=dict)  # camera → the snapshot last sent
    sent_detections: dict[str, int] = field(default_factory=dict)  # camera → version last sent
    log_camera: str | None = None
    log_file: Path | None = None
    log_pos: int = 0
    log_inode: int | None = None
    log_partial: bytes = b""


class Dashboard:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.pages: set[_Page] = set()
        self._events: dict[str, deque[tuple[float, int, int]]] = {}  # camera → (time, reconnects, restarts)
        self._last_counts: dict[str, tuple[int, int]] = {}
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._state: tuple[float, str] = (0.0, "")
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._count_loop(), name="ui-counts"),
                       asyncio.create_task(self._lease_loop(), name="ui-leases")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _count_loop(self) -> None:
        """Reconnects and restarts per camera, kept an hour, for "in the last hour"."""
        while True:
            now = time.monotonic()
            for camera_id, state in list(self.gateway.states.items()):
                reconnects, restarts = state.reconnects, state.restarts + state.hung_restarts
                before = self._last_counts.get(camera_id)
                self._last_counts[camera_id] = (reconnects, restarts)
                if before is None:
                    continue
                # the worker's reconnects start from zero when it restarts
                dr = reconnects - before[0] if reconnects >= before[0] else reconnects
                ds = max(0, restarts - before[1])
                events = self._events.setdefault(camera_id, deque())
                if dr or ds:
                    events.append((now, dr, ds))
                while events and now - events[0][0] > HOUR_S:
                    events.popleft()
            await asyncio.sleep(2.0)

    def last_hour(self, camera_id: str) -> tuple[int, int]:
        events = self._events.get(camera_id, ())
        return sum(e[1] for e in events), sum(e[2] for e in events)

    # -- leases --------------------------------------------------------------------------------------
    def watched(self) -> set[str]:
        return {c for page in self.pages for c in page.watching}

    async def _lease_loop(self) -> None:
        while True:
            await self._renew(self.watched())
            await asyncio.sleep(LEASE_RENEW_S)

    async def _renew(self, cameras: set[str]) -> None:
        send = getattr(self.gateway.bus, "send_live", None)
        if send is None:
            return
        for camera_id in cameras:
            if camera_id in self.gateway.desired.plans:
                await send(self.gateway.identity(camera_id), camera_id, LEASE_S, FRAME_INTERVAL_S)

    # -- the shared state message ---------------------------------------------------------------------
    def state_text(self) -> str:
        """Built at most once per STATE_S, whatever the number of pages."""
        now = time.monotonic()
        if now - self._state[0] < STATE_S * 0.9 and self._state[1]:
            return self._state[1]
        gw = self.gateway
        cameras = views.cameras_json(gw)
        for entry in cameras:
            reconnects, restarts = self.last_hour(str(entry["camera"]))
            entry["reconnects_1h"], entry["restarts_1h"] = reconnects, restarts
            state = gw.states.get(str(entry["camera"]))
            snap = state.snapshot if state else None
            entry["frame_age_s"] = round(time.time() - snap.captured_at, 1) if snap else None
        online = sum(1 for c in cameras if c.get("online"))
        failing = sum(1 for c in cameras if not c.get("online") and not c.get("operator_stopped"))
        memory = self._process.memory_info()
        text = json.dumps({
            "type": "state", "time": time.time(),
            "gateway": {"cpu_percent": self._process.cpu_percent(None), "rss_mb": round(memory.rss / 2**20, 1),
                        "host_cpu_percent": psutil.cpu_percent(None),
                        "host_memory_percent": psutil.virtual_memory().percent, "pid": os.getpid(),
                        "uptime_s": round(now - gw.started_at, 1), "backend_connected": gw.backend.connected},
            "counts": {"cameras": len(cameras), "online": online, "failing": failing,
                       "stopped": sum(1 for c in cameras if c.get("operator_stopped"))},
            "cameras": cameras,
            "hosts": gw.supervisor.describe(),
        })
        self._state = (now, text)
        return text

    # -- one page -------------------------------------------------------------------------------------------
    async def serve(self, ws: ServerConnection) -> None:
        page = _Page(ws)
        self.pages.add(page)
        pump = asyncio.create_task(self._pump(page), name="ui-page")
        try:
            async for raw in ws:
                if len(raw) > MAX_CLIENT_MESSAGE:
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    await self._on_message(page, msg)
        except ConnectionClosed:
            pass
        finally:
            self.pages.discard(page)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pump

    async def _on_message(self, page: _Page, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        plans = self.gateway.desired.plans
        if op == "watch":
            cameras = msg.get("cameras")
            wanted = {c for c in cameras[:MAX_WATCH] if isinstance(c, str) and c in plans} \
                if isinstance(cameras, list) else set()
            new = wanted - self.watched()
            page.watching = wanted
            page.sent = {c: s for c, s in page.sent.items() if c in wanted}
            page.sent_detections = {}
            await self._renew(new)
        elif op == "logs":
            camera = msg.get("camera")
            page.log_camera = camera if isinstance(camera, str) and camera in plans else None
            page.log_file, page.log_pos, page.log_inode, page.log_partial = None, 0, None, b""
            if page.log_camera is not None:
                page.log_file = log_path(self.gateway.settings.log_dir, plans[page.log_camera].spec.slug)
                lines, page.log_pos, page.log_inode = await asyncio.to_thread(_tail, page.log_file)
                await page.ws.send(json.dumps({"type": "logs", "camera": page.log_camera, "reset": True,
                                               "lines": lines}))
        elif op == "host":
            host, action = msg.get("host"), msg.get("action")
            ok = isinstance(host, str) and action in HOST_ACTIONS and self.gateway.drain_host(host, action == "drain")
            if ok:
                log.info("dashboard: operator %s host %s (from %s)", action, host, page.ws.remote_address)
            self._state = (0.0, "")
            await page.ws.send(json.dumps({"type": "result", "id": msg.get("id"), "host": host, "action": action,
                                           "ok": ok, "error": None if ok else "unknown host or action"}))
        elif op == "control":
            camera, action = msg.get("camera"), msg.get("action")
            if not isinstance(camera, str) or action not in ACTIONS or camera not in plans:
                await page.ws.send(json.dumps({"type": "result", "id": msg.get("id"), "ok": False,
                                               "error": "unknown camera or action"}))
                return
            log.info("dashboard: operator %s camera %s (from %s)", action, camera, page.ws.remote_address)
            error = await self.gateway.operate(camera, str(action))
            with contextlib.suppress(Exception):
                await self.gateway.reconcile()  # supervisord's state now, not at the next poll
            self._state = (0.0, "")
            await page.ws.send(json.dumps({"type": "result", "id": msg.get("id"), "camera": camera,
                                           "action": action, "ok": error is None, "error": error}))
            await page.ws.send(self.state_text())

    async def _pump(self, page: _Page) -> None:
        next_state = next_log = 0.0
        while True:
            now = time.monotonic()
            if now >= next_state:
                await page.ws.send(self.state_text())
                next_state = now + STATE_S
                await self._send_detections(page)
            for camera_id in list(page.watching):
                state = self.gateway.states.get(camera_id)
                snap = state.snapshot if state is not None else None
                if snap is not None and page.sent.get(camera_id) is not snap:
                    page.sent[camera_id] = snap
                    await page.ws.send(_frame_text(snap))
            if page.log_file is not None and now >= next_log:
                next_log = now + LOG_POLL_S
                await self._follow_log(page)
            await asyncio.sleep(TICK_S)

    async def _send_detections(self, page: _Page) -> None:
        for camera_id in page.watching:
            state = self.gateway.states.get(camera_id)
            version = state.detections if state is not None else 0  # grows with every detection kept
            if state is not None and page.sent_detections.get(camera_id) != version:
                page.sent_detections[camera_id] = version
                items = _detection_items(state.recent)[::-1]
                await page.ws.send(json.dumps({"type": "detections", "camera": camera_id, "items": items}))

    async def _follow_log(self, page: _Page) -> None:
        path, camera = page.log_file, page.log_camera
        assert path is not None
        lines, page.log_pos, page.log_inode, page.log_partial, reset = await asyncio.to_thread(
            _follow, path, page.log_pos, page.log_inode, page.log_partial)
        if (lines or reset) and page.log_camera == camera:
            await page.ws.send(json.dumps({"type": "logs", "camera": camera, "reset": reset, "lines": lines}))


def _frame_text(snap: Snapshot) -> str:
    """The frame message; the (large, JSON-safe) base64 JPEG is spliced in, never re-encoded."""
    meta = json.dumps({"type": "frame", "camera": snap.camera, "width": snap.width, "height": snap.height,
                       "captured_at": snap.captured_at, "tracks": [t.model_dump() for t in snap.tracks],
                       "crops": snap.crops, "motion": snap.motion})
    return meta[:-1] + ', "jpeg": "' + snap.jpeg_b64 + '"}'


def _decode(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def _tail(path: Path) -> tuple[list[str], int, int | None]:
    """The last LOG_LINES lines, the offset after them and the file's inode."""
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            start = max(0, stat.st_size - LOG_READ_MAX)
            f.seek(start)
            data = f.read(stat.st_size - start)
    except OSError:
        return [], 0, None
    end = data.rfind(b"\n") + 1  # a line still being written comes with the next poll
    lines = _decode(data[:end])
    if start > 0 and lines:
        lines = lines[1:]  # the first may be cut
    return lines[-LOG_LINES:], start + end, stat.st_ino


def _follow(path: Path, pos: int, inode: int | None, partial: bytes
            ) -> tuple[list[str], int, int | None, bytes, bool]:
    """What was appended since `pos`; after a rotation (a new inode, a shorter file) the new file's tail."""
    try:
        stat = path.stat()
    except OSError:
        return [], pos, inode, partial, False
    if stat.st_ino != inode or stat.st_size < pos:
        lines, pos, inode = _tail(path)
        return lines, pos, inode, b"", True
    if stat.st_size == pos:
        return [], pos, inode, partial, False
    try:
        with path.open("rb") as f:
            f.seek(pos)
            data = f.read(min(stat.st_size - pos, LOG_READ_MAX))
    except OSError:
        return [], pos, inode, partial, False
    pos += len(data)
    data = partial + data
    end = data.rfind(b"\n") + 1
    return _decode(data[:end])[-LOG_LINES:], pos, inode, data[end:][-LOG_READ_MAX:], False


def _detection_items(recent: Iterable[DisplayDetection]) -> list[dict[str, Any]]:
    """The camera's last detections for the page, one item per vehicle (its displays together)."""
    items: list[dict[str, Any]] = []
    for msg in recent:
        if items and items[-1]["track_id"] == msg.track_id and items[-1]["captured_at"] == msg.captured_at:
            items[-1]["displays"].append(msg.display_id)  # the same vehicle, for another display
            continue
        v = msg.vehicle
        items.append({"track_id": msg.track_id, "captured_at": msg.captured_at, "displays": [msg.display_id],
                      "brand": v.brand, "brand_confidence": v.brand_confidence, "body_type": v.body_type,
                      "body_type_confidence": v.body_type_confidence, "confidence": v.confidence,
                      "session_id": msg.session_id, "thumb": msg.thumb_b64})
    return items
