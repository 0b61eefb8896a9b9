"""Which vehicles of a lane already had their detection cycle, kept across reloads and restarts.

A lane's tracker and its memory of fired vehicles live in memory (engine.Lane); a reload (a
display added or removed) or a restart builds them anew, and a car still standing there would
fire again. `LaneMemory` writes the fired vehicles' boxes (their spots) and when each was last
seen to the camera's outbox (at most once a second, and at once when one fires or a visit
ends), and gives them to the lane built next, which drops the cycle of a remembered vehicle.

The visit rule for a remembered vehicle (one the new lane has not tracked itself):

- It is the same vehicle, whose visit goes on, when a track becomes stable on its spot
  (IoU >= `MATCH_IOU`, the lane's own re-acquisition overlap), however the track got there: born
  on the spot, or driving in. So it does not depend on track ids (a new tracker starts again at
  1), on how long the restart and the camera's reconnect took, or on when the first frame came:
  the engine's `REACQUIRE_S` (a lost track of the running lane) plays no part. That stable
  track's cycle is dropped (`observe` returns the other cycles), and from then on the lane holds
  the vehicle as fired: its box follows it, so a vehicle seen leaving takes its memory along.
- Its visit ends when its spot is seen empty for `EMPTY_S`: no vehicle on the spot (IoU >=
  `OCCUPIED_IOU` with a track seen in that frame) in any frame the detector ran on during that
  time. Time without such frames (the restart itself, a camera outage, frames the motion gate
  skipped) is never "seen empty". Then it is forgotten, and a vehicle that stops on that spot
  afterwards is a new visit and fires.
- A restore forgets the vehicles last seen more than `RESTORE_S` before it.

The trade-off, by design: a different vehicle that stops on the same spot less than `EMPTY_S`
after the remembered one left unseen (during the restart) is taken for it and does not fire.
EMPTY_S is short on purpose (a few seconds of an empty spot), longer than a camera stream's
own restart (a reconnect to some sources starts the footage again: the spot shows empty for
about 2 s before the same car drives back in, see tests/faults/test_exactly_once.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass

from .engine import Lane, VehicleCycle
from .outbox import Outbox, QuotaFull
from .tracking import Box, iou

RESTORE_S = 30.0  # a vehicle unseen this long before the restore (a long outage) is forgotten
EMPTY_S = 3.0  # a spot seen empty this long ends the visit of the vehicle remembered there
MATCH_IOU = 0.7  # a stable track this close to a remembered spot is that vehicle (engine._reacquired's)
OCCUPIED_IOU = 0.3  # a track seen this close to a remembered spot: the spot is not empty
SAVE_EVERY_S = 1.0


@dataclass
class Remembered:
    """A vehicle that had its cycle before this lane was built, not yet tracked by it."""

    box: Box
    seen_wall: float  # when it was last seen (wall clock: it crosses processes)
    empty_since: float | None = None  # lane clock: since when every detector frame shows its spot empty


class LaneMemory:
    def __init__(self, outbox: Outbox, camera_id: str, lane_key: str, lane: Lane,
                 log: logging.Logger | None = None) -> None:
        self.outbox = outbox
        self.name = f"fired:{camera_id}:{lane_key}"
        self.lane = lane
        self.log = log or logging.getLogger(__name__)
        self.remembered: list[Remembered] = []
        self._detected = lane.stats.detected  # the lane's detector-frame count at the last observe
        self._saved_at = 0.0
        self._saved_empty = False
        self._restore()

    def _restore(self) -> None:
        raw = self.outbox.get(self.name)
        if raw is None:
            return
        try:
            items = [((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(seen)) for b, seen in json.loads(raw)]
        except (ValueError, TypeError, IndexError) as err:
            self.log.error("lane %s: unreadable memory of fired vehicles ignored: %s", self.name, err)
            return
        now_wall = time.time()
        for box, seen in sorted(items, key=lambda item: -item[1]):  # newest first: it wins a duplicate
            if now_wall - seen <= RESTORE_S and not self._match(box):
                self.remembered.append(Remembered(box, seen))
        if self.remembered:
            self.log.info("lane %s: %d vehicle(s) that already had their cycle restored", self.name,
                          len(self.remembered))

    def _match(self, box: Box) -> Remembered | None:
        return next((r for r in self.remembered if iou(r.box, box) >= MATCH_IOU), None)

    def observe(self, cycles: list[VehicleCycle], now: float | None = None) -> list[VehicleCycle]:
        """After each frame (`now`: the lane's clock, as given to Lane.process): drop the cycles of
        remembered vehicles, end the visits whose spot was seen empty long enough, save the fired
        vehicles (at once when something changed). Returns the cycles to hand to the displays."""
        now = time.monotonic() if now is None else now
        kept: list[VehicleCycle] = []
        changed = bool(cycles)
        for cycle in cycles:
            match = self._match(cycle.detections[cycle.vehicle_class].box)
            if match is None:
                kept.append(cycle)
                continue
            self.remembered.remove(match)  # the lane tracks it now (as fired)
            self.log.info("lane %s: vehicle %d is the one that had its cycle before the reload/restart (its "
                          "spot never seen empty): no second cycle", self.name, cycle.track_id)
        if self.lane.stats.detected != self._detected:  # the detector ran on this frame: the spots were seen
            self._detected = self.lane.stats.detected
            changed = self._watch_spots(now) or changed
        self._save(now, force=changed)
        return kept

    def _watch_spots(self, now: float) -> bool:
        seen = [t.box for t in self.lane.tracker.tracks if t.missed == 0]
        ended = []
        for r in self.remembered:
            if any(iou(r.box, box) >= OCCUPIED_IOU for box in seen):
                r.empty_since = None
            elif r.empty_since is None:
                r.empty_since = now
            elif now - r.empty_since >= EMPTY_S:
                ended.append(r)
        for r in ended:
            self.remembered.remove(r)
            self.log.info("lane %s: the spot of a vehicle that had its cycle before the reload/restart was seen "
                          "empty for %.0f s: its visit ended", self.name, EMPTY_S)
        return bool(ended)

    def _save(self, now: float, force: bool) -> None:
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_at = now
        now_wall = time.time()
        boxes = [[list(f.box), now_wall - (now - f.last_seen)] for f in self.lane._fired.values()]
        boxes += [[list(r.box), r.seen_wall] for r in self.remembered]
        if not boxes and self._saved_empty:
            return
        self._saved_empty = not boxes
        with contextlib.suppress(QuotaFull):  # logged once by the outbox; the quota flag is up
            self.outbox.put(self.name, json.dumps(boxes).encode())
