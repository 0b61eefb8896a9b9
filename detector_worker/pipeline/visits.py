"""Which vehicles of a lane already had their detection cycle, kept across reloads and restarts.

A lane's tracker and its memory of fired vehicles live in memory (engine.Lane); a reload (a
display added or removed) or a restart builds them anew, and a car still standing there would
fire again. `LaneMemory` writes the fired vehicles' boxes to the camera's outbox (at most once
a second, and at once when one fires) and puts them back into a new lane, where a track born
on such a box is that vehicle again (the lane's own re-acquisition rule), so it never fires twice.

Restored boxes count only if they were seen at most `RESTORE_S` before the restore, and, as
any lost vehicle, only for the lane's re-acquisition window after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from .engine import Lane, VehicleCycle, _Fired
from .outbox import Outbox, QuotaFull

RESTORE_S = 30.0  # a restart or reload longer than this forgets the cars that were standing
SAVE_EVERY_S = 1.0


class LaneMemory:
    def __init__(self, outbox: Outbox, camera_id: str, lane_key: str, lane: Lane,
                 log: logging.Logger | None = None) -> None:
        self.outbox = outbox
        self.name = f"fired:{camera_id}:{lane_key}"
        self.lane = lane
        self.log = log or logging.getLogger(__name__)
        self._saved_at = 0.0
        self._saved_empty = False
        self._restore()

    def _restore(self) -> None:
        raw = self.outbox.get(self.name)
        if raw is None:
            return
        now_wall, now = time.time(), time.monotonic()
        restored = 0
        for i, (box, seen) in enumerate(json.loads(raw)):
            if now_wall - float(seen) <= RESTORE_S:
                # negative ids: never a live track of the new tracker (ids start at 1)
                self.lane._fired[-(i + 1)] = _Fired((box[0], box[1], box[2], box[3]), now)
                restored += 1
        if restored:
            self.log.info("lane %s: %d vehicle(s) that already had their cycle restored", self.name, restored)

    def observe(self, cycles: list[VehicleCycle]) -> None:
        """After each frame: save the fired vehicles (at once when one fired)."""
        now = time.monotonic()
        if not cycles and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_at = now
        now_wall = time.time()
        boxes = [[list(f.box), now_wall - (now - f.last_seen)] for f in self.lane._fired.values()]
        if not boxes and self._saved_empty:
            return
        self._saved_empty = not boxes
        with contextlib.suppress(QuotaFull):  # logged once by the outbox; the quota flag is up
            self.outbox.put(self.name, json.dumps(boxes).encode())
