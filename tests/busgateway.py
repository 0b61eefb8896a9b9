"""A minimal gateway end of the real ZeroMQ bus, for testing workers without the gateway.

It binds the PULL and ROUTER sockets a worker connects to, decodes everything with the shared
message module, and answers `hello` with the control state the test set.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Self

import zmq
from pydantic import ValidationError

from detector_worker.comms.messages import (
    Control,
    DisplayControl,
    DisplayDetection,
    Hello,
    Status,
    decode_from_worker,
    encode,
)
from tests.rtsp import free_port

WorkerMsg = object


class BusGateway:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull_port = free_port()
        self.pull.bind(f"tcp://127.0.0.1:{self.pull_port}")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.control_port = free_port()
        self.router.bind(f"tcp://127.0.0.1:{self.control_port}")
        self.messages: list[WorkerMsg] = []
        self.invalid: list[str] = []
        self.hellos: list[tuple[bytes, Hello]] = []
        self.state: dict[str, dict[str, DisplayControl]] = {}
        self.identities: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._outbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def push_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.pull_port}"

    @property
    def control_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.control_port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert not self.invalid, f"workers sent malformed messages: {self.invalid[:3]}"
        self._stop.set()
        self._thread.join(2)
        self.pull.close(0)
        self.router.close(0)
        self.ctx.term()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(50))
            while not self._outbox.empty():
                self._send_state(self._outbox.get())
            if self.pull in events:
                while True:
                    try:
                        data = self.pull.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = decode_from_worker(data)
                    except ValidationError as err:  # kept, so a test can assert there were none
                        self.invalid.append(str(err))
                        continue
                    with self._lock:
                        self.messages.append(msg)
            if self.router in events:
                identity, data = self.router.recv_multipart()
                msg = decode_from_worker(data)
                assert isinstance(msg, Hello), msg
                with self._lock:
                    self.hellos.append((identity, msg))
                    self.identities[msg.camera] = identity
                self._send_state(msg.camera)

    def _send_state(self, camera: str) -> None:
        with self._lock:
            identity = self.identities.get(camera)
            displays = dict(self.state.get(camera, {}))
        if identity is not None:
            control = Control(camera=camera, sent_at=time.time(), displays=displays)
            self.router.send_multipart([identity, encode(control)])

    def set_session(self, camera: str, display: str, session_id: str | None, stage: str | None = None) -> None:
        """Called from the test thread: updates the state; the loop thread sends it."""
        with self._lock:
            self.state.setdefault(camera, {})[display] = DisplayControl(session_id=session_id,
                                                                        progression_stage=stage)
        self._outbox.put(camera)  # ZeroMQ sockets are not thread-safe: the loop thread sends

    def snapshot(self) -> list[WorkerMsg]:
        with self._lock:
            return list(self.messages)

    def of_type(self, kind: type, camera: str | None = None) -> list[WorkerMsg]:
        return [m for m in self.snapshot() if isinstance(m, kind) and (camera is None or m.camera == camera)]  # type: ignore[attr-defined]

    def detections(self, camera: str | None = None) -> list[DisplayDetection]:
        return self.of_type(DisplayDetection, camera)  # type: ignore[return-value]

    def statuses(self, camera: str | None = None) -> list[Status]:
        return self.of_type(Status, camera)  # type: ignore[return-value]

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str = "condition") -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
