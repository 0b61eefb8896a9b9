"""Vehicle tracks across frames, and when a vehicle counts as stable (stopped, not passing by).

A greedy IoU tracker is enough for a fixed camera watching a lane: few vehicles, large boxes,
high frame rate relative to motion. A track is *still* while its box stays close to an anchor,
the box where the stillness began (IoU ≥ `still_iou`); comparing with the anchor rather than the
previous frame catches a slow creep that no single frame shows. It is *stable* once it has been
still for `stability_frames` frames in a row. Only stable tracks start a detection cycle, so a
passer-by, whose box keeps changing, never does. Measured on the stand-in detector: a standing
vehicle's box keeps IoU ≥ 0.996 frame to frame; a decelerating one stays below 0.98.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: Box
    confidence: float
    hits: int = 1
    missed: int = 0  # frames since last matched
    still_frames: int = 0  # consecutive frames with (almost) no movement
    anchor: Box | None = None  # where the current stillness began
    extra: dict[str, object] = field(default_factory=dict)  # per-track data of the caller


class IouTracker:
    def __init__(self, *, match_iou: float = 0.3, still_iou: float = 0.95, stability_frames: int = 5,
                 max_missed: int = 10) -> None:
        self.match_iou = match_iou
        self.still_iou = still_iou
        self.stability_frames = stability_frames
        self.max_missed = max_missed
        self._tracks: dict[int, Track] = {}
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks.values())

    def is_stable(self, track: Track) -> bool:
        return track.still_frames >= self.stability_frames and track.missed == 0

    def update(self, boxes: Sequence[tuple[Box, float]]) -> list[Track]:
        """Match this frame's (box, confidence) pairs to tracks; returns the tracks seen now."""
        pairs = sorted(
            ((iou(t.box, box), tid, i) for tid, t in self._tracks.items() for i, (box, _) in enumerate(boxes)),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        seen: list[Track] = []
        for overlap, tid, i in pairs:
            if overlap < self.match_iou:
                break
            if tid in used_tracks or i in used_boxes:
                continue
            used_tracks.add(tid)
            used_boxes.add(i)
            track = self._tracks[tid]
            box, conf = boxes[i]
            anchor = track.anchor or track.box
            if track.missed == 0 and iou(anchor, box) >= self.still_iou:
                track.still_frames += 1
                track.anchor = anchor
            else:
                track.still_frames = 0
                track.anchor = box
            track.box, track.confidence = box, conf
            track.hits += 1
            track.missed = 0
            seen.append(track)
        for i, (box, conf) in enumerate(boxes):
            if i not in used_boxes:
                track = Track(self._next_id, box, conf)
                self._next_id += 1
                self._tracks[track.track_id] = track
                seen.append(track)
        for tid in list(self._tracks):
            if tid not in used_tracks and all(t.track_id != tid for t in seen):
                track = self._tracks[tid]
                track.missed += 1
                track.still_frames = 0
                if track.missed > self.max_missed:
                    del self._tracks[tid]
        return seen

    def alive(self, track_id: int) -> bool:
        return track_id in self._tracks
