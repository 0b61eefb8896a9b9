"""A fixed camera watching a fuel-station lane: vehicle visits over time, with ground truth.

Everything is a pure function of the seed, so a clip, its ground truth and any single frame can
be regenerated exactly (frame noise is seeded per frame, not drawn from a shared stream).

A visit is either a *stop* (drive in, decelerate, stay still, drive off to a side) or a *pass*
(drive through at an even pace without stopping). Between visits the lane is empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .catalog import BODY_COLOURS, BODY_TYPES, BRANDS, body_type_by_name, brand_by_name
from .render import Appearance, Image, Sprite, apply_camera, composite, draw_background, draw_vehicle

VisitKind = Literal["stop", "pass"]
Box = tuple[int, int, int, int]
MIN_VISIBLE_PX = 6  # objects with less than this visible width or height are not labelled


@dataclass(frozen=True)
class Visit:
    vehicle_id: int
    kind: VisitKind
    look: Appearance
    start: int
    approach: int
    stay: int
    leave: int
    entry_x: float  # centre x (share of frame width) where the vehicle appears
    lane_x: float  # centre x at the closest point
    peak_width: float  # vehicle width at the closest point, share of frame width
    exit_side: int  # -1 leaves to the left, +1 to the right

    @property
    def end(self) -> int:
        return self.start + self.approach + self.stay + self.leave

    @property
    def stopped_frames(self) -> range:
        s = self.start + self.approach
        return range(s, s + self.stay)


@dataclass(frozen=True)
class GroundTruthObject:
    vehicle_id: int
    car_box: Box
    frontal_box: Box | None
    brand: str
    body_type: str
    stopped: bool
    visible: float  # share of the vehicle's area inside the frame

    def to_json(self) -> dict[str, object]:
        return {
            "vehicle_id": self.vehicle_id,
            "car_box": list(self.car_box),
            "frontal_box": list(self.frontal_box) if self.frontal_box else None,
            "brand": self.brand,
            "body_type": self.body_type,
            "state": "stopped" if self.stopped else "moving",
            "visible": round(self.visible, 3),
        }


def random_look(rng: np.random.Generator, brands: Sequence[str] | None = None,
                body_types: Sequence[str] | None = None) -> Appearance:
    brand_pool = [brand_by_name(n) for n in brands] if brands else list(BRANDS)
    body_pool = [body_type_by_name(n) for n in body_types] if body_types else list(BODY_TYPES)
    return Appearance(
        brand=brand_pool[int(rng.integers(len(brand_pool)))],
        body=body_pool[int(rng.integers(len(body_pool)))],
        colour=BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))],
        plate_seed=int(rng.integers(1 << 31)),
    )


def plan_visits(rng: np.random.Generator, n_frames: int, fps: float, *,
                kinds: Sequence[VisitKind] | None = None,
                brands: Sequence[str] | None = None,
                body_types: Sequence[str] | None = None) -> list[Visit]:
    """Lay out visits one after another until the clip is full (or `kinds` is used up)."""
    visits: list[Visit] = []
    f = int(rng.uniform(0.5, 2.5) * fps)
    queue = list(kinds) if kinds is not None else None
    while True:
        if queue is not None:
            if not queue:
                break
            kind = queue.pop(0)
        else:
            kind = "stop" if rng.random() < 0.6 else "pass"
        side = 1 if rng.random() < 0.5 else -1
        if kind == "stop":
            approach, stay, leave = (int(rng.uniform(a, b) * fps) for a, b in ((2.0, 3.5), (5.0, 9.0), (1.5, 2.5)))
            peak = rng.uniform(0.30, 0.58)
        else:
            approach, stay, leave = int(rng.uniform(1.5, 2.5) * fps), 0, int(rng.uniform(1.0, 1.8) * fps)
            peak = rng.uniform(0.16, 0.34)
        visit = Visit(
            vehicle_id=len(visits) + 1, kind=kind, look=random_look(rng, brands, body_types),
            start=f, approach=max(2, approach), stay=stay, leave=max(2, leave),
            entry_x=rng.uniform(0.40, 0.60), lane_x=rng.uniform(0.32, 0.68),
            peak_width=float(peak), exit_side=side,
        )
        if queue is None and visit.end > n_frames:
            break
        visits.append(visit)
        gap = rng.uniform(6.0, 12.0) if rng.random() < 0.2 else rng.uniform(0.5, 5.0)
        f = visit.end + int(gap * fps)
    return visits


def pose(visit: Visit, frame: int) -> tuple[float, float] | None:
    """Centre x and width (shares of the frame width) of a vehicle at `frame`, or None."""
    t = frame - visit.start
    if t < 0 or frame >= visit.end:
        return None
    far = 0.05
    if t < visit.approach:
        u = t / visit.approach
        e = 1 - (1 - u) ** 2 if visit.kind == "stop" else u
        return visit.entry_x + (visit.lane_x - visit.entry_x) * e, far + (visit.peak_width - far) * e
    t -= visit.approach
    if t < visit.stay:
        return visit.lane_x, visit.peak_width
    u = (t - visit.stay + 1) / visit.leave
    e = u**2 if visit.kind == "stop" else u
    return visit.lane_x + visit.exit_side * e * (0.6 + visit.peak_width), visit.peak_width * (1 + 0.25 * e)


@dataclass
class Scene:
    """One camera's clip: background, lighting, visits. Frames are rendered on demand."""

    seed: int
    width: int
    height: int
    fps: float
    n_frames: int
    visits: list[Visit]
    background: Image
    horizon: int
    gain: float
    tint: tuple[float, float, float]
    noise: float
    _sprites: dict[tuple[int, int], Sprite] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, seed: int, seconds: float, width: int = 640, height: int = 480, fps: float = 10.0, *,
              kinds: Sequence[VisitKind] | None = None, brands: Sequence[str] | None = None,
              body_types: Sequence[str] | None = None) -> Scene:
        rng = np.random.default_rng(seed)
        background, horizon = draw_background(rng, width, height)
        n_frames = int(round(seconds * fps))
        visits = plan_visits(rng, n_frames, fps, kinds=kinds, brands=brands, body_types=body_types)
        if kinds is not None and visits:
            n_frames = max(n_frames, visits[-1].end + int(fps))
        tint = tuple(float(v) for v in rng.uniform(0.92, 1.08, 3))
        return cls(seed, width, height, fps, n_frames, visits, background, horizon,
                   gain=float(rng.uniform(0.75, 1.2)), tint=(tint[0], tint[1], tint[2]),
                   noise=float(rng.uniform(1.5, 5.0)))

    def _sprite(self, visit: Visit, width_px: int) -> Sprite:
        key = (visit.vehicle_id, width_px)
        sprite = self._sprites.get(key)
        if sprite is None:
            if len(self._sprites) > 256:  # a clip only ever needs a few sizes at once
                self._sprites.clear()
            sprite = self._sprites[key] = draw_vehicle(visit.look, width_px)
        return sprite

    def render(self, frame: int) -> tuple[Image, list[GroundTruthObject]]:
        img = self.background.copy()
        placed: list[tuple[float, Visit, float]] = []
        for v in self.visits:
            p = pose(v, frame)
            if p is not None:
                placed.append((p[1], v, p[0]))
        objects: list[GroundTruthObject] = []
        for width_share, visit, cx in sorted(placed, key=lambda item: item[0]):  # far ones first
            obj = place_vehicle(img, self._sprite(visit, int(width_share * self.width)), visit.look,
                                visit.vehicle_id, cx, self.horizon, stopped=frame in visit.stopped_frames)
            if obj is not None:
                objects.append(obj)
        return self._camera(img, frame), objects

    def _camera(self, img: Image, frame: int) -> Image:
        """Lighting drift, colour tint and sensor noise."""
        drift = 1 + 0.06 * np.sin(2 * np.pi * frame / (self.fps * 40))
        return apply_camera(img, self.gain * drift, self.tint, self.noise, np.random.default_rng((self.seed, frame)))


def place_vehicle(img: Image, sprite: Sprite, look: Appearance, vehicle_id: int, cx: float, horizon: int,
                  stopped: bool) -> GroundTruthObject | None:
    """Draw `sprite` with its centre at `cx` on the ground line its size implies; label it."""
    h, w = img.shape[:2]
    sh, sw = sprite.image.shape[:2]
    width_share = sw / w
    bottom = horizon + (h - horizon) * (0.08 + 1.6 * width_share)
    x, y = int(round(cx * w - sw / 2)), int(round(bottom - sh))
    visible = composite(img, sprite, x, y)
    if visible is None:
        return None
    vx1, vy1, vx2, vy2 = visible
    if vx2 - vx1 < MIN_VISIBLE_PX or vy2 - vy1 < MIN_VISIBLE_PX:
        return None
    fx1, fy1, fx2, fy2 = sprite.frontal
    frontal: Box | None = (max(0, x + fx1), max(0, y + fy1), min(w, x + fx2), min(h, y + fy2))
    if frontal is not None and (frontal[2] - frontal[0] < MIN_VISIBLE_PX or frontal[3] - frontal[1] < MIN_VISIBLE_PX):
        frontal = None
    area = (vx2 - vx1) * (vy2 - vy1) / float(sw * sh)
    return GroundTruthObject(vehicle_id, visible, frontal, look.brand.name, look.body.name, stopped, area)
