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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .actions import ActionRunner, WriteContext
from .engine import VehicleCycle


@dataclass(frozen=True)
class Written:
    session_id: int | str
    track_id: int
    image_key: str | None
    cycle: VehicleCycle


class DisplaySession:
    def __init__(self, camera_id: str, display_id: str, subscription_id: str, model_id: int | str, model_name: str,
                 actions: ActionRunner, log: logging.Logger, pending_ttl_s: float = 300.0) -> None:
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
        self._pending: tuple[VehicleCycle, float] | None = None
        self.written: list[Written] = []  # what this display wrote, newest last (bounded)
        self.on_written: Callable[[DisplaySession, Written], None] = lambda display, written: None

    @property
    def pending(self) -> VehicleCycle | None:
        if self._pending is None:
            return None
        cycle, since = self._pending
        if time.monotonic() - since > self.pending_ttl_s:
            self.log.info("display %s: result of vehicle %d expired unclaimed", self.display_id, cycle.track_id)
            self._pending = None
            return None
        return cycle

    def on_cycle(self, cycle: VehicleCycle) -> None:
        if self.session_id is not None and self.bound_track is None:
            self._write(cycle)
            return
        if self._pending is not None:
            self.log.info("display %s: vehicle %d replaces unclaimed vehicle %d", self.display_id,
                          cycle.track_id, self._pending[0].track_id)
        self._pending = (cycle, time.monotonic())

    def set_session(self, session_id: int | str | None) -> None:
        if session_id == self.session_id:
            return
        if self.session_id is not None:
            self.log.info("display %s: session %s ended", self.display_id, self.session_id)
        self.session_id = session_id
        self.bound_track = None
        if session_id is None:
            return
        self.log.info("display %s: session %s started", self.display_id, session_id)
        cycle = self.pending
        if cycle is not None:
            self._pending = None
            self._write(cycle)

    def set_stage(self, stage: str | None) -> None:
        self.progression_stage = stage

    def _write(self, cycle: VehicleCycle) -> None:
        assert self.session_id is not None
        self.bound_track = cycle.track_id
        key = self.actions.write(cycle, WriteContext(self.camera_id, self.display_id, self.subscription_id,
                                                     self.session_id, self.model_id, self.model_name,
                                                     self.progression_stage))
        written = Written(self.session_id, cycle.track_id, key, cycle)
        self.written.append(written)
        del self.written[:-100]
        self.on_written(self, written)
        self.log.info("display %s: vehicle %d written under session %s", self.display_id, cycle.track_id,
                      self.session_id)
