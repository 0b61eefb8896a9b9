"""One port for the backend's WebSocket and for HTTP (health, metrics, cameras, snapshots).

One backend at a time owns the subscriptions: a new connection takes over from the old one.
When the backend goes away its cameras keep running for `process_cleanup_timeout` seconds; a
backend that reconnects and declares the same subscriptions in that time restarts nothing.
Every message gets an answer when it is refused (an `error` message), and the connection stays.
Messages to the backend wait in a bounded queue: when it is full the oldest is dropped and
counted, so a slow backend can never hold up the bus.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections import deque
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlparse

import psutil
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from detector_worker.comms.messages import Detection as BusDetection
from detector_worker.comms.messages import SessionResult as BusSessionResult

from . import protocol as p
from .app import Gateway
from .backend_subs import to_backend_subscription
from .gpu import gpu_usage
from .http import json_response as _json
from .http import route

log = logging.getLogger("gateway.server")
OUTBOX_LIMIT = 1000


class BackendLink:
    """The connected backend: its socket and its bounded outbox."""

    def __init__(self, ws: ServerConnection, on_drop: Any) -> None:
        self.ws = ws
        self.outbox: deque[str] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._on_drop = on_drop

    def send(self, msg: p.ImageDetection | p.StateReport | p.PatchSession | p.ErrorMessage) -> None:
        if len(self.outbox) >= OUTBOX_LIMIT:
            self.outbox.popleft()
            self.dropped += 1
            self._on_drop()
        self.outbox.append(p.dump_outgoing(msg))
        self.ready.set()

    async def pump(self) -> None:
        while True:
            await self.ready.wait()
            while self.outbox:
                await self.ws.send(self.outbox.popleft())
            self.ready.clear()


class GatewayServer:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.backend: BackendLink | None = None
        self.subscriptions: dict[str, p.Subscription] = {}  # the backend's, by identifier
        self._cleanup: asyncio.Task[None] | None = None
        self._forget_inherited: asyncio.Task[None] | None = None
        self._server: Server | None = None
        gateway.on_detection = self.relay_detection
        gateway.on_session_result = self.relay_session_result

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(self.handle, self.settings.host, self.settings.port,
                                   process_request=self.process_request, max_size=self.settings.max_message_bytes,
                                   ping_interval=20, ping_timeout=20)
        log.info("gateway listening on %s:%d", self.settings.host, self.settings.port)
        if self.gateway.inherited_subs:  # a previous gateway's backend: as if it had just disconnected
            self._forget_inherited = asyncio.create_task(self._forget_inherited_later())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for task in (self._cleanup, self._forget_inherited):
            if task is not None:
                task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- access --------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        token = self.settings.token
        if not token:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not given:
            given = (parse_qs(urlparse(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlparse(request.path).path
        if not self.authorized(request):
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized"})
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None if path in ("/", "/ws") else _json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
        return await route(self, path)

    # -- the backend -----------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        link = BackendLink(ws, self.gateway.metrics.backend_dropped.inc)
        # Take over before awaiting anything: a connection arriving while the previous one is being
        # closed must find this one as the backend (and close it), or both would stay open.
        previous, self.backend = self.backend, link
        if previous is not None:
            log.warning("a new backend connection takes over from the previous one")
            with contextlib.suppress(Exception):
                await previous.ws.close(1012, "replaced by a new connection")
        if self._cleanup is not None:
            self._cleanup.cancel()
            self._cleanup = None
        log.info("backend connected from %s", ws.remote_address)
        tasks = [asyncio.create_task(link.pump()), asyncio.create_task(self._report_loop(link))]
        try:
            async for raw in ws:
                await self.on_message(link, raw)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            if self.backend is link:
                self.backend = None
                log.info("backend disconnected; its cameras stay for %.0f s",
                         self.settings.session_processes.process_cleanup_timeout)
                self._cleanup = asyncio.create_task(self._cleanup_later())

    async def _cleanup_later(self) -> None:
        await asyncio.sleep(self.settings.session_processes.process_cleanup_timeout)
        if self.backend is None and self.subscriptions:
            log.info("backend did not come back: removing its %d subscription(s)", len(self.subscriptions))
            self._sync_desired({})

    async def _forget_inherited_later(self) -> None:
        await asyncio.sleep(self.settings.session_processes.process_cleanup_timeout)
        if self.gateway.inherited_subs:
            log.info("the backend did not declare %d subscription(s) of the previous gateway again: removing them",
                     len(self.gateway.inherited_subs))
            self.gateway.inherited_subs.clear()
            self.gateway.mark_dirty()

    async def on_message(self, link: BackendLink, raw: str | bytes) -> None:
        try:
            msg = p.parse_incoming(raw, max_bytes=self.settings.max_message_bytes)
            await self.dispatch(link, msg)
        except p.ProtocolError as err:
            self.gateway.metrics.backend_errors.labels(err.code.value).inc()
            link.send(err.to_message())
        except Exception:
            log.exception("handling a backend message failed")
            self.gateway.metrics.backend_errors.labels("internal").inc()
            link.send(p.ProtocolError(p.ErrorCode.INTERNAL, "the gateway failed to handle this message").to_message())

    async def dispatch(self, link: BackendLink, msg: Any) -> None:
        if isinstance(msg, p.SetSubscriptionList):
            wanted = {s.subscription_identifier: s for s in msg.payload}
            self._sync_desired(wanted, link, msg.type, mentioned=set(wanted))
            self.gateway.inherited_subs.clear()  # the backend's whole list: nothing else of its is wanted
        elif isinstance(msg, p.Subscribe):
            key = msg.payload.subscription_identifier
            self._sync_desired({**self.subscriptions, key: msg.payload}, link, msg.type, mentioned={key})
        elif isinstance(msg, p.Unsubscribe):
            wanted = {k: v for k, v in self.subscriptions.items() if k != msg.payload.subscription_identifier}
            self.gateway.inherited_subs.pop(msg.payload.subscription_identifier, None)
            self._sync_desired(wanted, link, msg.type)
        elif isinstance(msg, p.RequestState):
            link.send(self.state_report())
        elif isinstance(msg, p.SetSessionId):
            await self.gateway.set_display_control(msg.payload.display_identifier, session_id=msg.payload.session_id)
        elif isinstance(msg, p.SetProgressionStage):
            await self.gateway.set_display_control(msg.payload.display_identifier,
                                                   stage=msg.payload.progression_stage)
        elif isinstance(msg, p.PatchSessionResult):
            log.info("patchSessionResult for session %s: %s", msg.payload.session_id, msg.payload.success)

    def _sync_desired(self, wanted: dict[str, p.Subscription], link: BackendLink | None = None,
                      request_type: str = "setSubscriptionList", mentioned: set[str] | None = None) -> None:
        """Make `wanted` the backend's subscriptions. Converted first, so a failure leaves the previous
        set in place; a refused subscription is reported to the message that named it."""
        converted = {k: to_backend_subscription(s) for k, s in wanted.items()}
        self.subscriptions, self.gateway.backend_subs = wanted, converted
        _, errors = self.gateway.compute_plan()
        for err in errors:
            if err.subscription_identifier not in (mentioned or set()):
                continue  # refused earlier, and reported to the message that named it
            self.gateway.metrics.backend_errors.labels(err.code).inc()
            if link is not None:
                link.send(p.ProtocolError(err.code, str(err), request_type,
                                          subscription_identifier=err.subscription_identifier).to_message())
        self.gateway.mark_dirty()

    # -- out ----------------------------------------------------------------------------------------
    def relay_detection(self, det: BusDetection) -> None:
        if self.backend is None:
            self.gateway.metrics.backend_dropped.inc()
            return
        v = det.vehicle
        detection = p.Detection.model_validate({
            "carBrand": v.brand, "bodyType": v.body_type, "carBrandConfidence": v.brand_confidence,
            "bodyTypeConfidence": v.body_type_confidence, "carBox": v.car_box, "frontalBox": v.frontal_box,
            "trackId": det.track_id, "confidence": round(v.confidence, 4), "sessionId": det.session_id,
            "cameraId": det.camera})
        model_id = det.model_id if det.model_id is not None else "unknown"
        self.backend.send(p.ImageDetection(
            subscription_identifier=det.subscription_identifier,
            timestamp=datetime.fromtimestamp(det.captured_at, UTC),
            data=p.DetectionData(detection=detection, model_id=model_id, model_name=det.model_name)))

    def relay_session_result(self, result: BusSessionResult) -> None:
        """The vehicle's result is stored under the session: tell the backend (patchSession)."""
        if self.backend is None:
            self.gateway.metrics.backend_dropped.inc()
            return
        v = result.vehicle
        data: dict[str, object] = {
            "carBrand": v.brand, "bodyType": v.body_type, "carBrandConfidence": v.brand_confidence,
            "bodyTypeConfidence": v.body_type_confidence, "imageKey": result.image_key, "trackId": result.track_id,
            "displayIdentifier": result.display_id, "subscriptionIdentifier": result.subscription_identifier}
        self.backend.send(p.PatchSession(payload=p.PatchSessionPayload(session_id=result.session_id, data=data)))

    async def _report_loop(self, link: BackendLink) -> None:
        while True:
            link.send(self.state_report())
            await asyncio.sleep(self.settings.session_processes.health_check_interval)

    def state_report(self) -> p.StateReport:
        gpu, gpu_mem = gpu_usage()
        connections = []
        plans = self.gateway.plans
        for camera_id, plan in plans.items():
            state = self.gateway.states.get(camera_id)
            for sub in plan.spec.subscriptions:
                backend_sub = self.subscriptions.get(sub.subscription_identifier)
                if backend_sub is None:
                    continue  # static cameras are ours, not the backend's
                connections.append(p.CameraConnection.from_subscription(
                    backend_sub, online=bool(state and state.online), fps=state.fps if state else None,
                    inference_ms=state.inference_ms if state else None,
                    reconnects=state.reconnects if state else None, restarts=state.restarts if state else None))
        return p.StateReport(cpu_usage=psutil.cpu_percent(interval=None),
                             memory_usage=psutil.virtual_memory().percent, gpu_usage=gpu, gpu_memory_usage=gpu_mem,
                             camera_connections=connections)

    def cameras_json(self) -> list[dict[str, object]]:
        out = []
        for camera_id, plan in self.gateway.plans.items():
            state = self.gateway.states.get(camera_id)
            entry: dict[str, object] = state.as_json() if state else {"camera": camera_id}
            entry["origin"] = plan.origin
            entry["subscriptions"] = [s.subscription_identifier for s in plan.spec.subscriptions]
            entry["crops"] = {s.display_id: s.crop.model_dump() if s.crop else None for s in plan.spec.subscriptions}
            entry["model"] = {s.display_id: {"id": s.model.id, "name": s.model.name} for s in plan.spec.subscriptions}
            out.append(entry)
        return out

    def snapshot(self, camera_id: str) -> bytes | None:
        state = self.gateway.states.get(camera_id)
        if state is None or state.snapshot is None:
            return None
        return base64.b64decode(state.snapshot.jpeg_b64)

    def health(self) -> dict[str, object]:
        return {"status": "ok", "uptime_s": round(time.monotonic() - self.gateway.started_at, 1),
                "backend_connected": self.backend is not None, "cameras": len(self.gateway.plans),
                "online": sum(1 for s in self.gateway.states.values() if s.online)}
