"""The worker's end of the ZeroMQ bus.

Out: a PUSH socket connected to the gateway's PULL. Sends never block the camera loop: a full
queue (high-water mark) or an absent gateway means the message is dropped and counted, and
zero linger means a stopping worker never waits on an unreachable gateway.

In: a DEALER socket, identified by the camera's slug, connected to the gateway's ROUTER. The
worker says `hello` on it at start (and again until the gateway answers), and the gateway
answers with the camera's full `control` state, so a worker that starts or restarts late
still learns its displays' session ids.

Across hosts (the gateway's `remote.listen_*` endpoints, which accept nothing else) both sockets
use CURVE: the gateway's public key and this host's key pair (`spec.bus.curve`), so the link is
encrypted and only allow-listed hosts get in. Every
message carries the spec's placement epoch, and the control identity includes it, so a stale copy
of a camera that moved (its host was cut off and came back) can neither be heard nor take over
the new copy's control identity.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import zmq
from pydantic import BaseModel, ValidationError

from ..config.spec import BusSettings, CurveClient
from .messages import Control, Hello, Live, Reload, decode_from_gateway, encode


def control_identity(slug: str, epoch: int) -> bytes:
    """A worker's identity on the gateway's ROUTER: its camera slug, and its placement epoch if any."""
    return f"{slug}@{epoch}".encode() if epoch else slug.encode()


def _secure(socket: zmq.Socket[bytes], curve: CurveClient) -> None:
    import zmq.auth  # only on another host than the gateway

    public, secret = zmq.auth.load_certificate(Path(curve.secret_key_file))
    if secret is None:
        raise ValueError(f"{curve.secret_key_file} holds no secret key")
    socket.curve_serverkey = curve.server_public_key.encode()
    socket.curve_publickey = public
    socket.curve_secretkey = secret


class WorkerBus:
    def __init__(self, camera_id: str, identity: str, push_endpoint: str, control_endpoint: str, *,
                 send_hwm: int = 1000, log: logging.Logger | None = None, epoch: int = 0,
                 curve: CurveClient | None = None) -> None:
        self.camera_id = camera_id
        self.epoch = epoch
        self.log = log or logging.getLogger(__name__)
        self._ctx = zmq.Context(io_threads=1)  # this process's own context: nothing shared with anyone
        self._push = self._ctx.socket(zmq.PUSH)
        if curve is not None:
            _secure(self._push, curve)
        self._push.setsockopt(zmq.SNDHWM, send_hwm)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a connected gateway, else count a drop
        self._push.connect(push_endpoint)
        self._control = self._ctx.socket(zmq.DEALER)
        if curve is not None:
            _secure(self._control, curve)
        self._control.setsockopt(zmq.IDENTITY, control_identity(identity, epoch))
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.setsockopt(zmq.SNDHWM, 100)
        self._control.connect(control_endpoint)
        self.sent = 0
        self.dropped = 0
        self.answered = False  # the gateway has sent control state since our hello
        self._started_at = time.time()

    @classmethod
    def for_camera(cls, camera_id: str, slug: str, settings: BusSettings, *, epoch: int = 0,
                   log: logging.Logger | None = None) -> WorkerBus:
        return cls(camera_id, slug, settings.push_endpoint, settings.control_endpoint, send_hwm=settings.send_hwm,
                   log=log, epoch=epoch, curve=settings.curve)

    def send(self, message: BaseModel) -> bool:
        """Queue one message for the gateway without blocking; False (and counted) if dropped."""
        if self.epoch and getattr(message, "epoch", None) == 0:
            message = message.model_copy(update={"epoch": self.epoch})
        try:
            self._push.send(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def hello(self) -> None:
        msg = Hello(camera=self.camera_id, sent_at=time.time(), pid=os.getpid(), started_at=self._started_at,
                    epoch=self.epoch)
        with contextlib.suppress(zmq.Again):  # not connected yet: the caller says hello again later
            self._control.send(encode(msg), zmq.NOBLOCK)

    def poll_control(self, timeout_ms: int = 0) -> list[Control | Reload | Live]:
        """Every control message that has arrived (waiting up to `timeout_ms` for the first)."""
        out: list[Control | Reload | Live] = []
        if not self._control.poll(timeout_ms):
            return out
        while True:
            try:
                data = self._control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                msg = decode_from_gateway(data)
            except ValidationError as err:
                self.log.error("ignored a malformed control message: %s", err.errors()[0]["msg"])
                continue
            if msg.camera != self.camera_id:
                self.log.error("ignored a control message for camera %r", msg.camera)
                continue
            self.answered = True
            out.append(msg)

    def close(self) -> None:
        self._push.close(0)
        self._control.close(0)
        self._ctx.term()
