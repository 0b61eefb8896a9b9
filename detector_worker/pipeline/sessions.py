"""Which vehicle's result belongs to which backend session, per display.

The backend's flow: a vehicle becomes stable → we send `imageDetection` → the backend creates a
session and binds its id to the display → that vehicle's image and row are written under that
id → the backend clears the id (null) when its business flow ends.

Rules, per display:
- a session id takes exactly one vehicle: the result waiting when it arrives, or else the next
  one produced while it is bound; a second vehicle during the same session waits for the next;
- a result produced before any session id is held (only the newest, for `pending_ttl_s`) and
  written when an id arrives;
- when a session ends, its vehicle is done: it has had its cycle and, still in view, never
  triggers again (the lane guarantees one cycle per vehicle visit); a new vehicle does.

Session ids are kept as the backend sent them (an integer stays an integer: it gets it back so);
Redis keys, templates and PostgreSQL get their text.

With an outbox (the worker's, outbox.py) this state is durable: the result held for the next
session, and which vehicle visit the current session took, are kept in it and restored by a
display built again (a reload) or in a new process (a restart). Binding a session is one outbox
transaction: the vehicle's store writes, the new state and the `session_result` notice (sent to
the gateway once the writes are committed, not when they are queued) land together or not at all.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .actions import ActionRunner, WriteContext, visit_id
from .engine import BranchResult, VehicleCycle
from .models import DetectedObject
from .outbox import Outbox, QuotaFull


@dataclass(frozen=True)
class Written:
    session_id: int | str
    track_id: int
    image_key: str | None
    cycle: VehicleCycle


def encode_cycle(cycle: VehicleCycle) -> bytes:
    """A cycle as bytes for the outbox: its crops losslessly (PNG), everything else as JSON."""
    crops = {}
    for region, image in cycle.crops.items():
        ok, buf = cv2.imencode(".png", image)
        if ok:
            crops[region] = base64.b64encode(buf.tobytes()).decode()
    return json.dumps({
        "track_id": cycle.track_id, "captured_at": cycle.captured_at, "vehicle_class": cycle.vehicle_class,
        "detections": {k: [list(d.box), d.label, d.confidence] for k, d in cycle.detections.items()},
        "branches": {k: [b.model_id, b.label, b.confidence, b.role] for k, b in cycle.branches.items()},
        "crops": crops, "inference_ms": cycle.inference_ms}).encode()


def decode_cycle(data: bytes) -> VehicleCycle:
    d: dict[str, Any] = json.loads(data)
    crops = {region: cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
             for region, b64 in d["crops"].items()}
    return VehicleCycle(
        track_id=int(d["track_id"]), captured_at=float(d["captured_at"]), vehicle_class=d["vehicle_class"],
        detections={k: DetectedObject(tuple(v[0]), v[1], float(v[2])) for k, v in d["detections"].items()},
        branches={k: BranchResult(v[0], v[1], float(v[2]), v[3]) for k, v in d["branches"].items()},
        crops=crops, inference_ms=float(d["inference_ms"]))  # type: ignore[arg-type]


class DisplaySession:
    def __init__(self, camera_id: str, display_id: str, subscription_id: str, model_id: int | str, model_name: str,
                 actions: ActionRunner, log: logging.Logger, pending_ttl_s: float = 300.0,
                 outbox: Outbox | None = None) -> None:
        self.camera_id = camera_id
        self.display_id = display_id
        self.subscription_id = subscription_id
        self.model_id = model_id
        self.model_name = model_name
        self.actions = actions
        self.log = log
        self.pending_ttl_s = pending_ttl_s
        self.session_id: int | str | None = None
        self.progression_stage: str | None = None
        self.bound_track: int | None = None
        self.bound_visit: str | None = None  # the vehicle visit the current session took
        self._pending: tuple[VehicleCycle, float] | None = None
        self.written: list[Written] = []  # what this display wrote, newest last (bounded)
        self.on_written: Callable[[DisplaySession, Written], None] = lambda display, written: None
        # with an outbox: the session_result to send once the session's writes are committed
        self.make_notice: Callable[[DisplaySession, Written], str] | None = None
        self.outbox = outbox
        self._state_name = f"session:{camera_id}:{display_id}"
        self._pending_name = f"pending:{camera_id}:{display_id}"
        if outbox is not None:
            self._restore(outbox)

    # -- durable state ---------------------------------------------------------------------------------
    def _restore(self, outbox: Outbox) -> None:
        state = outbox.get(self._state_name)
        if state is not None:
            d = json.loads(state)
            self.session_id, self.bound_visit, self.bound_track = d["session_id"], d["bound_visit"], d["bound_track"]
            self.progression_stage = d.get("stage")
        pending = outbox.get(self._pending_name)
        if pending is not None:
            age = time.time() - float(json.loads(pending[:64].split(b"\n", 1)[0]))
            try:
                cycle = decode_cycle(pending.split(b"\n", 1)[1])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                self.log.error("display %s: unreadable held result dropped: %s", self.display_id, err)
                outbox.delete(self._pending_name)
                cycle = None
            if cycle is not None and age <= self.pending_ttl_s:
                self._pending = (cycle, time.monotonic() - max(0.0, age))
        if state is not None or self._pending is not None:
            self.log.info("display %s: restored session %s (vehicle visit %s)%s", self.display_id, self.session_id,
                          self.bound_visit, ", a result waiting for its session" if self._pending else "")

    def _state(self) -> bytes:
        return json.dumps({"session_id": self.session_id, "bound_visit": self.bound_visit,
                           "bound_track": self.bound_track, "stage": self.progression_stage}).encode()

    def _save_state(self) -> None:
        if self.outbox is not None:
            try:
                self.outbox.put(self._state_name, self._state())
            except QuotaFull:
                self.log.error("display %s: session state not saved: the outbox is at its quota", self.display_id)

    @property
    def pending(self) -> VehicleCycle | None:
        if self._pending is None:
            return None
        cycle, since = self._pending
        if time.monotonic() - since > self.pending_ttl_s:
            self.log.info("display %s: result of vehicle %d expired unclaimed", self.display_id, cycle.track_id)
            self._pending = None
            if self.outbox is not None:
                self.outbox.delete(self._pending_name)
            return None
        return cycle

    def on_cycle(self, cycle: VehicleCycle) -> None:
        if self.session_id is not None and self.bound_visit is None:
            self._write(cycle)
            return
        if self._pending is not None:
            self.log.info("display %s: vehicle %d replaces unclaimed vehicle %d", self.display_id,
                          cycle.track_id, self._pending[0].track_id)
        self._hold(cycle)

    def _hold(self, cycle: VehicleCycle) -> None:
        self._pending = (cycle, time.monotonic())
        if self.outbox is not None:
            try:
                self.outbox.put(self._pending_name, f"{time.time()!r}\n".encode() + encode_cycle(cycle))
            except QuotaFull:
                self.log.error("display %s: the result of vehicle %d waits in memory only: the outbox is at its "
                               "quota", self.display_id, cycle.track_id)

    def set_session(self, session_id: int | str | None) -> None:
        if session_id == self.session_id:
            return
        if self.session_id is not None:
            self.log.info("display %s: session %s ended", self.display_id, self.session_id)
        self.session_id = session_id
        self.bound_track = None
        self.bound_visit = None
        if session_id is not None:
            self.log.info("display %s: session %s started", self.display_id, session_id)
        cycle = self.pending if session_id is not None else None
        if cycle is not None:
            self._write(cycle)
        else:
            self._save_state()

    def set_stage(self, stage: str | None) -> None:
        if stage != self.progression_stage:
            self.progression_stage = stage
            self._save_state()

    def _write(self, cycle: VehicleCycle) -> None:
        assert self.session_id is not None
        ctx = WriteContext(self.camera_id, self.display_id, self.subscription_id, self.session_id, self.model_id,
                           self.model_name, self.progression_stage)
        visit = visit_id(cycle)
        if self.outbox is None:
            key = self.actions.write(cycle, ctx)
        else:
            key, staged = self.actions.plan(cycle, ctx)
            written = Written(self.session_id, cycle.track_id, key, cycle)
            self.bound_track, self.bound_visit = cycle.track_id, visit
            grp = f"{self.display_id}/{ctx.session_id}/{visit}"
            try:
                with self.outbox.transaction() as tx:
                    for s in staged:
                        s.writer.stage(tx, s.write, s.ikey, grp=grp)
                    tx.put(self._state_name, self._state())
                    tx.delete(self._pending_name)
                    if self.make_notice is not None:
                        tx.notice(grp, self.make_notice(self, written))
            except QuotaFull:
                self.bound_track = self.bound_visit = None
                for s in staged:
                    s.writer.count_refused()
                    self.actions.failed += 1
                self._pending = (cycle, time.monotonic())  # kept in memory: a later session may take it
                self.log.error("display %s: vehicle %d not written under session %s: the outbox is at its quota",
                               self.display_id, cycle.track_id, self.session_id)
                return
            self._pending = None
            self._remember(written)
            return
        self._pending = None
        self.bound_track, self.bound_visit = cycle.track_id, visit
        self._remember(Written(self.session_id, cycle.track_id, key, cycle))

    def _remember(self, written: Written) -> None:
        self.written.append(written)
        del self.written[:-100]
        self.on_written(self, written)
        self.log.info("display %s: vehicle %d (visit %s) written under session %s", self.display_id,
                      written.track_id, self.bound_visit, self.session_id)
