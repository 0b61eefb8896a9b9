"""The gateway's end of the ZeroMQ bus: PULL from workers (and supervisord's event listener),
ROUTER to workers for control (session ids, stages, reload), addressed by camera slug.

Workers of other hosts (gateway/hosts) reach the same two sockets over tcp://, bound after the
ipc:// endpoints with CURVE on: ZeroMQ applies security options to the binds that follow them, so
local workers keep plain unix sockets while every TCP peer must encrypt and present a host key
that the ZAP handler finds in the hosts' allow-list (a refused key is counted and logged).

Intake never waits for the backend: every message is handed to a callback that only updates
state or queues for the backend (bounded), so a slow or absent backend can't back up the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
from pydantic import ValidationError

from detector_worker.comms.messages import (
    AnyWorkerMessage,
    Control,
    DisplayControl,
    Hello,
    Live,
    Reload,
    decode_from_worker,
    encode,
)

from .quiet import LogLimiter

log = logging.getLogger("gateway.bus")
YIELD_EVERY = 32
MAX_MESSAGE_BYTES = 8 * 2**20  # the largest bus message is a snapshot (≤ 4 MiB of base64); more is not ours
Handler = Callable[[AnyWorkerMessage], Awaitable[None] | None]
HelloHandler = Callable[[Hello, bytes], Awaitable[None]]


@dataclass(frozen=True)
class RemoteBus:
    """The tcp:// side of the bus: where other hosts' workers connect, and who may."""

    push_endpoint: str
    control_endpoint: str
    secret_key_file: Path  # the gateway's CURVE key pair (zmq.auth's .key_secret format)
    allowed: Mapping[str, str]  # Z85 public key → host name
    on_refused: Callable[[], None] = field(default=lambda: None)


class _HostKeys:
    """ZAP's CURVE credentials check: a key of a configured host, or refused (counted, logged)."""

    def __init__(self, remote: RemoteBus, quiet: LogLimiter) -> None:
        self._remote = remote
        self._quiet = quiet

    def callback(self, domain: str, key: bytes) -> bool:
        if key.decode("ascii", "replace") in self._remote.allowed:
            return True
        self._remote.on_refused()
        if self._quiet.allow("refused"):
            log.warning("refused a bus connection with a CURVE key of no configured host%s", self._quiet.suffix())
        return False


class GatewayBus:
    def __init__(self, pull_endpoint: str, control_endpoint: str, remote: RemoteBus | None = None) -> None:
        self._ctx = zmq.asyncio.Context()
        self._remote = remote
        self._auth: object | None = None
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 100_000)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # a bigger one closes that peer's connection
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to an absent worker fails loudly
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity
        self._router.setsockopt(zmq.LINGER, 0)
        self._endpoints = (pull_endpoint, control_endpoint)
        self._quiet = LogLimiter()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, on_message: Handler, on_hello: HelloHandler, on_invalid: Callable[[], None]) -> None:
        """Bind and serve, handing every worker message to `on_message`, every hello (camera,
        identity) to `on_hello`, and counting malformed messages with `on_invalid`.

        Called only after orphaned workers of an earlier run are gone: bound earlier, an orphan
        could connect with its camera's identity and take it over (ROUTER handover) from the
        camera's new worker, and then die with it, cutting that worker off."""
        self._on_message = on_message
        self._on_hello = on_hello
        self._on_invalid = on_invalid
        self._pull.bind(self._endpoints[0])
        self._router.bind(self._endpoints[1])
        if self._remote is not None:
            self._bind_remote(self._remote)
        self._tasks = [asyncio.create_task(self._pull_loop(), name="bus-pull"),
                       asyncio.create_task(self._control_loop(), name="bus-control")]

    def _bind_remote(self, remote: RemoteBus) -> None:
        import zmq.auth
        from zmq.auth.asyncio import AsyncioAuthenticator

        public, secret = zmq.auth.load_certificate(remote.secret_key_file)
        if secret is None:
            raise ValueError(f"{remote.secret_key_file} holds no secret key")
        auth = AsyncioAuthenticator(self._ctx)
        auth.start()
        auth.configure_curve_callback("fleet", _HostKeys(remote, self._quiet))
        self._auth = auth
        for socket, endpoint in ((self._pull, remote.push_endpoint), (self._router, remote.control_endpoint)):
            socket.curve_server = True
            socket.curve_publickey = public
            socket.curve_secretkey = secret
            socket.zap_domain = b"fleet"
            socket.bind(endpoint)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pull.close(0)
        self._router.close(0)
        if self._auth is not None:
            self._auth.stop()  # type: ignore[attr-defined]
        self._ctx.term()

    async def _pull_loop(self) -> None:
        received = 0
        while True:
            data = await self._pull.recv()
            received += 1
            if received % YIELD_EVERY == 0:
                # a zmq.asyncio recv with a message ready returns without yielding: under a backlog this
                # loop would starve the backend pump, HTTP and applies (measured by make bench)
                await asyncio.sleep(0)
            try:
                msg = decode_from_worker(data)
            except ValidationError as err:
                self._on_invalid()
                if self._quiet.allow("malformed"):
                    log.warning("dropped a malformed bus message: %s%s", err.errors()[0]["msg"], self._quiet.suffix())
                continue
            try:
                result = self._on_message(msg)
                if result is not None:
                    await result
            except Exception:
                log.exception("handling a %s message failed", msg.type)

    async def _control_loop(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 2:
                self._on_invalid()
                continue
            identity, data = frames
            try:
                msg = decode_from_worker(data)
            except ValidationError:
                self._on_invalid()
                continue
            if not isinstance(msg, Hello):
                continue
            try:
                await self._on_hello(msg, identity)
            except Exception:
                log.exception("answering hello of %s failed", msg.camera)

    async def send_control(self, identity: bytes, camera_id: str, displays: dict[str, DisplayControl]) -> bool:
        """The full control state of one camera; False if its worker is not connected (it gets the
        state with its next hello)."""
        return await self._send(identity, Control(camera=camera_id, sent_at=time.time(), displays=displays))

    async def send_reload(self, identity: bytes, camera_id: str) -> bool:
        return await self._send(identity, Reload(camera=camera_id, sent_at=time.time()))

    async def send_live(self, identity: bytes, camera_id: str, lease_s: float, interval_s: float) -> bool:
        """A dashboard watches this camera: snapshots every `interval_s` for the next `lease_s`."""
        return await self._send(identity, Live(camera=camera_id, sent_at=time.time(), lease_s=lease_s,
                                               interval_s=interval_s))

    async def _send(self, identity: bytes, msg: Control | Reload | Live) -> bool:
        try:
            await self._router.send_multipart([identity, encode(msg)], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError as err:  # EHOSTUNREACH: not connected (yet); EAGAIN: its queue is full
            log.debug("control for %s not sent: %s", msg.camera, err)
            return False
