"""A realistic "day" at a fuel-station lane: long stops, empty stretches, people, light changes.

The short clips of `scene.py` have a vehicle every few seconds; a real lane is static most of the
time. A day clip has vehicles that arrive, stop for minutes (`stop_s`, 1–5 min by default) and
leave; empty stretches between them (`gap_s`); passers-by on the road behind the lane (outside
the lane's ROI: they must never be reported); people walking across the lane; global light
changes (a cloud: exposure ramps down and back; an IR switch: the picture turns grey and brighter
at once, and back); slow exposure drift and sensor noise. Everything is a pure function of the
seed; the ground truth (`<name>.json`) lists every visit exactly (frames and seconds), the lane's
ROI, the light events and the people.

Frames are drawn at a small internal size (`internal_height`, 360 by default) and scaled up to
the output size (noise included, as a real camera's is after its ISP), so a 10-minute 1080p25
clip renders in minutes, not hours. Encoding: H.264 (libx264), I and P frames only, a keyframe
every `gop_s` seconds (2 by default), like a camera's main stream.

CLI: `python -m detector_worker.synthetic.day out.mp4 --width 1920 --height 1080 --fps 25 --minutes 10 --seed 1`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .render import Image, Sprite, apply_camera, composite, draw_background, draw_vehicle
from .scene import Visit, VisitKind, place_vehicle, pose, random_look

DAY_FORMAT = "synthetic-day-gt/1"


@dataclass(frozen=True)
class Walker:
    """A person crossing the frame (inside the lane's ROI) at walking pace."""

    start: int
    frames: int
    y_share: float  # feet row, share of the frame height
    direction: int  # +1 left to right
    height_share: float  # share of the frame height
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Passer:
    """A car on the road behind the lane, outside the ROI, crossing sideways."""

    vehicle_id: int
    look_seed: int
    start: int
    frames: int
    width_share: float
    direction: int


@dataclass(frozen=True)
class LightEvent:
    kind: str  # "cloud" (ramp down, hold, ramp up) or "ir" (instant grey + brighter, and back)
    start: int
    frames: int
    strength: float  # cloud: gain factor at the bottom; ir: gain factor while on


@dataclass
class DayScene:
    seed: int
    width: int
    height: int
    fps: float
    n_frames: int
    internal: tuple[int, int]  # (w, h) drawing size
    background: Image
    horizon: int  # in internal pixels
    visits: list[Visit]
    passers: list[Passer]
    walkers: list[Walker]
    lights: list[LightEvent]
    gain: float
    tint: tuple[float, float, float]
    noise: float
    _sprites: dict[tuple[str, int, int], Sprite] = field(default_factory=dict, repr=False)

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """The lane: everything from just above the horizon down (output pixels); the back road
        where passers-by drive lies above it."""
        ih = self.internal[1]
        top = int(self.horizon * 0.92 * self.height / ih)
        return 0, top, self.width, self.height

    @classmethod
    def build(cls, seed: int, minutes: float, width: int = 1280, height: int = 720, fps: float = 25.0, *,
              stop_s: tuple[float, float] = (60.0, 300.0), gap_s: tuple[float, float] = (20.0, 120.0),
              internal_height: int = 360, lane_passes: float = 0.15, walkers_per_min: float = 0.5,
              passers_per_min: float = 1.0, lights: Sequence[str] = ("cloud", "ir")) -> DayScene:
        rng = np.random.default_rng(seed)
        ih = min(height, internal_height)
        iw = int(round(width * ih / height))
        background, horizon = draw_background(rng, iw, ih)
        n = int(round(minutes * 60 * fps))
        visits: list[Visit] = []
        f = int(rng.uniform(*gap_s) * fps * 0.3)
        while True:
            kind: VisitKind = "pass" if rng.random() < lane_passes else "stop"
            if kind == "stop":
                approach, stay, leave = (int(rng.uniform(a, b) * fps) for a, b in ((2.0, 3.5), stop_s, (1.5, 2.5)))
                peak = rng.uniform(0.30, 0.55)
            else:
                approach, stay, leave = int(rng.uniform(1.5, 2.5) * fps), 0, int(rng.uniform(1.0, 1.8) * fps)
                peak = rng.uniform(0.16, 0.34)
            visit = Visit(vehicle_id=len(visits) + 1, kind=kind, look=random_look(rng), start=f,
                          approach=max(2, approach), stay=stay, leave=max(2, leave),
                          entry_x=rng.uniform(0.40, 0.60), lane_x=rng.uniform(0.35, 0.65),
                          peak_width=float(peak), exit_side=1 if rng.random() < 0.5 else -1)
            if visit.end > n:
                break
            visits.append(visit)
            f = visit.end + int(rng.uniform(*gap_s) * fps)
        passers: list[Passer] = []
        t = rng.exponential(60 / passers_per_min) * fps if passers_per_min > 0 else n
        while t < n:
            frames = int(rng.uniform(3.0, 6.0) * fps)
            passers.append(Passer(1000 + len(passers), int(rng.integers(1 << 31)), int(t), frames,
                                  float(rng.uniform(0.06, 0.10)), 1 if rng.random() < 0.5 else -1))
            t += frames + rng.exponential(60 / passers_per_min) * fps
        walkers: list[Walker] = []
        t = rng.exponential(60 / walkers_per_min) * fps if walkers_per_min > 0 else n
        while t < n:
            frames = int(rng.uniform(6.0, 10.0) * fps)
            colour = tuple(int(v) for v in rng.integers(20, 200, 3))
            walkers.append(Walker(int(t), frames, float(rng.uniform(0.75, 0.97)), 1 if rng.random() < 0.5 else -1,
                                  float(rng.uniform(0.22, 0.30)), (colour[0], colour[1], colour[2])))
            t += frames + rng.exponential(60 / walkers_per_min) * fps
        events: list[LightEvent] = []
        for i, light in enumerate(lights):
            at = int(n * (i + 1) / (len(lights) + 1))
            if light == "cloud":
                events.append(LightEvent("cloud", at, int(30 * fps), float(rng.uniform(0.55, 0.7))))
            elif light == "ir":
                events.append(LightEvent("ir", at, int(20 * fps), float(rng.uniform(1.3, 1.5))))
            else:
                raise ValueError(f"unknown light event {light!r} (cloud or ir)")
        tint = tuple(float(v) for v in rng.uniform(0.92, 1.08, 3))
        return cls(seed, width, height, fps, n, (iw, ih), background, horizon, visits, passers, walkers, events,
                   gain=float(rng.uniform(0.85, 1.1)), tint=(tint[0], tint[1], tint[2]),
                   noise=float(rng.uniform(2.0, 4.0)))

    def _sprite(self, key: str, look_seed: int, width_px: int, visit: Visit | None = None) -> Sprite:
        k = (key, look_seed, width_px)
        sprite = self._sprites.get(k)
        if sprite is None:
            if len(self._sprites) > 256:
                self._sprites.clear()
            look = visit.look if visit is not None else random_look(np.random.default_rng(look_seed))
            sprite = self._sprites[k] = draw_vehicle(look, width_px)
        return sprite

    def light(self, frame: int) -> tuple[float, bool]:
        """(exposure factor, infrared/grey) at `frame`."""
        factor, ir = 1 + 0.04 * float(np.sin(2 * np.pi * frame / (self.fps * 90))), False
        ramp = 2.0 * self.fps
        for e in self.lights:
            t = frame - e.start
            if not 0 <= t < e.frames:
                continue
            if e.kind == "ir":
                factor, ir = factor * e.strength, True
            else:
                depth = min(1.0, t / ramp, (e.frames - t) / ramp)
                factor *= 1 - (1 - e.strength) * depth
        return factor, ir

    def render(self, frame: int) -> Image:
        iw, ih = self.internal
        img = self.background.copy()
        for p in self.passers:  # the back road, behind everything in the lane
            t = frame - p.start
            if 0 <= t < p.frames:
                sprite = self._sprite("passer", p.look_seed, max(8, int(p.width_share * iw)))
                sw, sh = sprite.image.shape[1], sprite.image.shape[0]
                u = t / p.frames
                x = int(-sw + (iw + sw) * (u if p.direction > 0 else 1 - u))
                composite(img, sprite, x, int(self.horizon * 0.8) - sh)
        placed = [(pp[1], v, pp[0]) for v in self.visits if (pp := pose(v, frame)) is not None]
        for width_share, visit, cx in sorted(placed, key=lambda item: item[0]):
            place_vehicle(img, self._sprite("visit", visit.vehicle_id, int(width_share * iw), visit), visit.look,
                          visit.vehicle_id, cx, self.horizon, stopped=frame in visit.stopped_frames)
        for w in self.walkers:
            t = frame - w.start
            if 0 <= t < w.frames:
                u = t / w.frames
                _draw_walker(img, (u if w.direction > 0 else 1 - u) * 1.1 - 0.05, w, t / self.fps)
        factor, ir = self.light(frame)
        if ir:
            img = np.asarray(cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR), np.uint8)
        tint = (1.0, 1.0, 1.0) if ir else self.tint
        out = apply_camera(img, self.gain * factor, tint, self.noise, np.random.default_rng((self.seed, frame)))
        if (iw, ih) != (self.width, self.height):
            out = np.asarray(cv2.resize(out, (self.width, self.height), interpolation=cv2.INTER_LINEAR), np.uint8)
        return out

    def stop_box(self, visit: Visit) -> tuple[int, int, int, int] | None:
        """The vehicle's box (output pixels) while it stands."""
        if not visit.stay:
            return None
        iw, ih = self.internal
        img = np.zeros((ih, iw, 3), np.uint8)
        obj = place_vehicle(img, self._sprite("visit", visit.vehicle_id, int(visit.peak_width * iw), visit),
                            visit.look, visit.vehicle_id, visit.lane_x, self.horizon, stopped=True)
        if obj is None:
            return None
        sx, sy = self.width / iw, self.height / ih
        x1, y1, x2, y2 = obj.car_box
        return int(x1 * sx), int(y1 * sy), int(x2 * sx), int(y2 * sy)

    def ground_truth(self, video_name: str) -> dict[str, object]:
        fps = self.fps

        def s(frame: int) -> float:
            return round(frame / fps, 3)

        vehicles = []
        for v in self.visits:
            stop = v.stopped_frames
            vehicles.append({
                "vehicle_id": v.vehicle_id, "kind": v.kind, "brand": v.look.brand.name, "body_type": v.look.body.name,
                "first_frame": v.start, "last_frame": v.end - 1, "arrive_s": s(v.start), "leave_s": s(v.end - 1),
                "stopped_from": stop.start if v.stay else None, "stopped_to": stop.stop - 1 if v.stay else None,
                "stop_from_s": s(stop.start) if v.stay else None, "stop_to_s": s(stop.stop - 1) if v.stay else None,
                "stop_box": list(b) if (b := self.stop_box(v)) else None,
            })
        return {
            "format": DAY_FORMAT, "video": video_name, "seed": self.seed, "width": self.width,
            "height": self.height, "fps": fps, "n_frames": self.n_frames, "roi": list(self.roi),
            "vehicles": vehicles,
            "passers_by": [{"vehicle_id": p.vehicle_id, "first_frame": p.start, "last_frame": p.start + p.frames - 1}
                           for p in self.passers],
            "people": [{"first_frame": w.start, "last_frame": w.start + w.frames - 1} for w in self.walkers],
            "light_events": [{"kind": e.kind, "first_frame": e.start, "last_frame": e.start + e.frames - 1,
                              "strength": round(e.strength, 3)} for e in self.lights],
        }


def _draw_walker(img: Image, x_share: float, w: Walker, t_s: float) -> None:
    h, wd = img.shape[:2]
    height = w.height_share * h
    feet_y, cx = w.y_share * h, x_share * wd
    body_w = height * 0.28
    swing = np.sin(t_s * 2 * np.pi * 1.8) * body_w * 0.5
    top = feet_y - height
    head_r = max(2, int(height * 0.09))
    cv2.circle(img, (int(cx), int(top + head_r)), head_r, (80, 110, 150), -1, cv2.LINE_AA)
    torso = np.array([[cx - body_w / 2, top + 2 * head_r], [cx + body_w / 2, top + 2 * head_r],
                      [cx + body_w / 2, top + height * 0.58], [cx - body_w / 2, top + height * 0.58]], np.int32)
    cv2.fillPoly(img, [torso], w.colour, cv2.LINE_AA)
    leg_w = max(1, int(body_w * 0.3))
    for sgn in (-1, 1):
        cv2.line(img, (int(cx + sgn * body_w * 0.2), int(top + height * 0.58)), (int(cx + sgn * swing), int(feet_y)),
                 (40, 40, 50), leg_w, cv2.LINE_AA)


def write_day(path: Path, scene: DayScene, *, gop_s: float = 2.0, crf: int = 23, preset: str = "veryfast") -> Path:
    """Encode the day to `path` (H.264, I/P only, a keyframe every gop_s); returns the ground truth's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(scene.fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.codec_context.gop_size = max(1, int(round(scene.fps * gop_s)))
        stream.codec_context.max_b_frames = 0
        stream.options = {"crf": str(crf), "preset": preset, "bf": "0", "sc_threshold": "0",
                          "keyint_min": str(max(1, int(round(scene.fps * gop_s))))}
        for i in range(scene.n_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(scene.render(i), format="bgr24")))
        container.mux(stream.encode(None))
    tmp.replace(path)
    gt = path.with_suffix(".json")
    gt.write_text(json.dumps(scene.ground_truth(path.name), separators=(",", ":")))
    return gt


def make_day(path: Path, seed: int = 1, minutes: float = 10.0, width: int = 1280, height: int = 720,
             fps: float = 25.0, **options: object) -> Path:
    """Build and encode a day clip; `options` go to `DayScene.build` (stop_s, gap_s, lights, ...)."""
    scene = DayScene.build(seed, minutes, width, height, fps, **options)  # type: ignore[arg-type]
    return write_day(path, scene)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a synthetic day at a fuel-station lane (H.264 + truth).")
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--stop-s", type=float, nargs=2, default=(60.0, 300.0), metavar=("MIN", "MAX"))
    parser.add_argument("--gap-s", type=float, nargs=2, default=(20.0, 120.0), metavar=("MIN", "MAX"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    scene = DayScene.build(args.seed, args.minutes, args.width, args.height, args.fps,
                           stop_s=tuple(args.stop_s), gap_s=tuple(args.gap_s))
    gt = write_day(args.output, scene)
    stops = sum(1 for v in scene.visits if v.kind == "stop")
    print(f"wrote {args.output} and {gt}: {scene.n_frames} frames, {stops} stop(s), "
          f"{len(scene.visits) - stops} lane pass(es), {len(scene.passers)} passer(s)-by, {len(scene.walkers)} "
          f"walker(s), {len(scene.lights)} light event(s) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_visits(truth: dict[str, object], reports: Sequence[tuple[int, Sequence[float]]],
                 *, early_frames: int = 10) -> dict[str, object]:
    """Reports (frame, car box) against the day's stops: each stop should be reported exactly once,
    while it stands (from `early_frames` before its stop on: the stillness rule's own lag is after);
    anything else (a lane pass, a passer-by, a person, a second report) is an extra report."""
    stops = [v for v in truth["vehicles"] if v["kind"] == "stop"]  # type: ignore[attr-defined]
    counts = {v["vehicle_id"]: 0 for v in stops}
    extra: list[int] = []
    for frame, box in reports:
        match = next((v for v in stops if v["stopped_from"] - early_frames <= frame <= v["stopped_to"]
                      and v["stop_box"] and _iou(v["stop_box"], box) > 0.5), None)
        if match is None:
            extra.append(frame)
        else:
            counts[match["vehicle_id"]] += 1
    found = sum(1 for c in counts.values() if c >= 1)
    return {"stops": len(stops), "found": found, "recall": found / len(stops) if stops else 1.0,
            "exactly_once": all(c == 1 for c in counts.values()),
            "duplicates": sum(max(0, c - 1) for c in counts.values()),
            "extra_reports": extra, "counts": counts}
