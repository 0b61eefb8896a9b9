"""The worker's end of the ZeroMQ bus.

Out: a PUSH socket connected to the gateway's PULL. Sends never block the camera loop: a full
queue (high-water mark) or an absent gateway means the message is dropped and counted, and
zero linger means a stopping worker never waits on an unreachable gateway.

In: a DEALER socket, identified by the camera's slug, connected to the gateway's ROUTER. The
worker says `hello` on it at start (and again until the gateway answers), and the gateway
answers with the camera's full `control` state, so a worker that starts or restarts late
still learns its displays' session ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import zmq
from pydantic import ValidationError

from .messages import Control, Hello, Live, Reload, decode_from_gateway, encode


class WorkerBus:
    def __init__(self, camera_id: str, identity: str, push_endpoint: str, control_endpoint: str, *,
                 send_hwm: int = 1000, log: logging.Logger | None = None) -> None:
        self.camera_id = camera_id
        self.log = log or logging.getLogger(__name__)
        self._ctx = zmq.Context(io_threads=1)  # this process's own context: nothing shared with anyone
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, send_hwm)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a connected gateway, else count a drop
        self._push.connect(push_endpoint)
        self._control = self._ctx.socket(zmq.DEALER)
        self._control.setsockopt(zmq.IDENTITY, identity.encode())
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.setsockopt(zmq.SNDHWM, 100)
        self._control.connect(control_endpoint)
        self.sent = 0
        self.dropped = 0
        self.answered = False  # the gateway has sent control state since our hello
        self._started_at = time.time()

    def send(self, message: object) -> bool:
        """Queue one message for the gateway without blocking; False (and counted) if dropped."""
        try:
            self._push.send(encode(message), zmq.NOBLOCK)  # type: ignore[arg-type]
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def hello(self) -> None:
        msg = Hello(camera=self.camera_id, sent_at=time.time(), pid=os.getpid(), started_at=self._started_at)
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
