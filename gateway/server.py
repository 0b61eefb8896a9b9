"""The gateway's one port: the backend's WebSocket (`/` or `/ws`), HTTP (health, metrics, cameras, snapshots)
and the operator's dashboard (`/ui/`, its WebSocket `/ui/live`: gateway/ui).

Transport only: it checks who is asking, parses each frame, hands the message to
`commands.handle` and sends what it is told. One backend at a time: a new connection takes
over from the old one. Every refused message (or item of one) gets an `error` answer, and the
connection stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from detector_worker.config.base import quote

from . import commands, ui, views
from . import protocol as p
from .backend import BackendChannel, BackendLink
from .core import Gateway
from .http import json_response, route
from .settings import GatewaySettings
from .ui.live import Dashboard

log = logging.getLogger("gateway.server")


class GatewayServer:
    def __init__(self, settings: GatewaySettings, gateway: Gateway, channel: BackendChannel) -> None:
        self.settings = settings
        self.gateway = gateway
        self.channel = channel
        self._server: Server | None = None
        self.dashboard = Dashboard(gateway)  # /ui/: the operator's dashboard, same access rules

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(self.handle, self.settings.host, self.settings.port,
                                   process_request=self.process_request, max_size=self.settings.max_message_bytes,
                                   ping_interval=20, ping_timeout=20)
        self.dashboard.start()
        log.info("gateway listening on %s:%d", self.settings.host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self.dashboard.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- access ----------------------------------------------------------------------------------
    def authorized(self, request: Request, remote: object) -> bool:
        """The token when one is set; without it, an address of `backend.allowed_networks`; with
        neither, anyone (only possible on loopback: settings refuse it elsewhere)."""
        token = self.settings.token
        if token:
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            if not given:
                given = (parse_qs(urlparse(request.path).query).get("token") or [""])[0]
            if hmac.compare_digest(given.encode(), token.encode()):
                return True
        networks = self.settings.backend.allowed_networks
        if networks and isinstance(remote, tuple) and remote:
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(str(remote[0]))
                return any(address in net for net in networks)
        return not token and not networks

    def browser_check(self, request: Request) -> str | None:
        """Why a request must be refused for what a browser could make of it, or None.

        Host must name this gateway (a rebound DNS name of an attacker's page does not); Origin, when a
        browser sends one, must be this gateway's own or listed (a page elsewhere cannot drive it)."""
        host = _host_name(request.headers.get("Host", ""))
        if host not in self.settings.host_names:
            return "this gateway is not served under that Host name (set allowed_hosts)"
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser page: the backend, curl, Prometheus
        parts = urlparse(origin)
        same = parts.scheme in ("http", "https") and parts.netloc.lower() == request.headers.get("Host", "").lower()
        if same or origin in self.settings.allowed_origins:
            return None
        return "requests from this Origin are not allowed (set allowed_origins)"

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlparse(request.path).path
        refused = self.browser_check(request)
        if refused is not None:
            return json_response(HTTPStatus.FORBIDDEN, {"error": refused})
        if not self.authorized(request, connection.remote_address):
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized"})
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if path == ui.LIVE_PATH:
                # frames are JPEG already: deflating them costs the gateway CPU and saves nothing
                connection.protocol.available_extensions = []
            if path in ("/", "/ws", ui.LIVE_PATH):
                return None
            return json_response(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
        if ui.is_ui(path):
            return ui.page_response(path, urlparse(request.path).query)
        return await route(self.gateway, path)

    # -- the backend ---------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        if ws.request is not None and urlparse(ws.request.path).path == ui.LIVE_PATH:
            await self.dashboard.serve(ws)  # a dashboard page, never the backend
            return
        link = BackendLink(ws, self.gateway.metrics.backend_dropped.inc)
        # Take over before awaiting anything: a connection arriving while the previous one is being
        # closed must find this one as the backend (and close it), or both would stay open.
        previous, self.channel.link = self.channel.link, link
        self.gateway.backend_connected()
        if previous is not None:
            log.warning("a new backend connection takes over from the previous one")
            with contextlib.suppress(Exception):
                await previous.ws.close(1012, "replaced by a new connection")
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
            if self.channel.link is link:
                self.channel.link = None
                self.gateway.backend_disconnected()

    async def on_message(self, link: BackendLink, raw: str | bytes) -> None:
        metrics = self.gateway.metrics
        try:
            msg = p.parse_incoming(raw, max_bytes=self.settings.max_message_bytes)
        except p.ProtocolError as err:
            metrics.backend_errors.labels(err.code.value).inc()
            link.send(p.error_message(err))
            return
        self._note_ignored(link, msg)
        try:
            answers = await commands.handle(self.gateway, msg)
        except Exception:
            log.exception("handling a backend %s message failed", msg.type)
            metrics.backend_errors.labels("internal").inc()
            answers = [p.error_message(p.ProtocolError(p.ErrorCode.INTERNAL, "the gateway failed to handle this "
                                                                              "message", msg.type))]
        for answer in answers:
            link.send(answer)

    def _note_ignored(self, link: BackendLink, msg: p.IncomingMessage) -> None:
        """Unknown keys are ignored: counted, and each logged once per connection."""
        if not msg.ignored:
            return
        self.gateway.metrics.backend_ignored_keys.inc(len(msg.ignored))
        new = [key for key in msg.ignored if key not in link.ignored_keys]
        if new and len(link.ignored_keys) < 1000:
            link.ignored_keys.update(new)
            log.info("ignoring unknown key(s) in the backend's %s: %s", msg.type,
                     ", ".join(quote(key, 40) for key in new[:20]))

    async def _report_loop(self, link: BackendLink) -> None:
        while True:
            link.send(views.state_report(self.gateway))
            await asyncio.sleep(self.settings.session_processes.health_check_interval)


def _host_name(header: str) -> str:
    """The name of a Host header: `example.com:8001` → `example.com`, `[::1]:8001` → `::1`."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value
