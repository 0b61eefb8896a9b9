"""The bench's generated footage, rendered once and cached (everything is deterministic by seed).

- `throughput_clip`: an ordinary synthetic clip (stop, pass, stop), decoded into memory for the
  per-worker throughput section.
- `lane_clip`: a busy lane for the fleet sections: a vehicle stops every ~4.4 s (1.2 s approach,
  2 s stop, 0.8 s leave, 0.4 s gap), at four lane positions in turn so that consecutive vehicles
  never look like one re-acquired vehicle to the tracker. Many detections per minute = many
  end-to-end latency samples. Stamped (pixels + SEI).
- `first_clip`: a vehicle already stopped at frame 0 (for 8 s), then the busy lane: a worker that
  joins at the start of the stream has a detectable vehicle at once. Stamped.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import av

from detector_worker.synthetic.scene import Scene, Visit
from detector_worker.synthetic.video import ground_truth_path, make_clip, write_clip

from .common import CACHE
from .stamp import sei_nal, stamp

VERSION = 1  # bump when the clips change
FPS = 10.0
# (lane_x, peak_width): far enough apart that consecutive stops overlap with IoU < 0.7
POSITIONS = [(0.34, 0.34), (0.52, 0.46), (0.66, 0.38), (0.44, 0.54)]
APPROACH_S, STAY_S, LEAVE_S, GAP_S = 1.2, 2.0, 0.8, 0.4


class StampedScene(Scene):
    def render(self, frame: int):  # type: ignore[no-untyped-def]
        image, objects = super().render(frame)
        stamp(image, frame)
        return image, objects


def _busy_scene(seed: int, seconds: float, first_stopped_s: float | None) -> StampedScene:
    count = int(seconds / (APPROACH_S + STAY_S + LEAVE_S + GAP_S)) + 2
    base = Scene.build(seed, seconds, fps=FPS, kinds=["stop"] * count)
    visits: list[Visit] = []
    f = 0
    template = base.visits[0]
    if first_stopped_s:
        approach = int(APPROACH_S * FPS)
        visits.append(dataclasses.replace(
            template, vehicle_id=1, start=-approach, approach=approach, stay=int(first_stopped_s * FPS),
            leave=int(LEAVE_S * FPS), lane_x=0.5, peak_width=0.46, entry_x=0.5, exit_side=1))
        f = visits[-1].end + int(GAP_S * FPS)
    n_frames = int(seconds * FPS)
    i = 0
    while True:
        lane_x, peak = POSITIONS[i % len(POSITIONS)]
        v = dataclasses.replace(
            base.visits[(i + 1) % len(base.visits)], vehicle_id=len(visits) + 1, start=f,
            approach=int(APPROACH_S * FPS), stay=int(STAY_S * FPS), leave=int(LEAVE_S * FPS),
            lane_x=lane_x, peak_width=peak, entry_x=0.5, exit_side=1 if i % 2 else -1)
        if v.end > n_frames:
            break
        visits.append(v)
        f = v.end + int(GAP_S * FPS)
        i += 1
    fields = {fl.name: getattr(base, fl.name) for fl in dataclasses.fields(base)}
    fields.update(visits=visits, n_frames=max(f, 1))
    return StampedScene(**fields)


def _add_sei(src: Path, dst: Path) -> int:
    """Copy an H.264 MP4, prefixing every access unit with an SEI NAL unit holding its index."""
    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for pkt in inp.demux(stream):
            if pkt.size == 0:
                continue
            nal = sei_nal(n)
            new = av.Packet(struct.pack(">I", len(nal)) + nal + bytes(pkt))
            new.pts, new.dts, new.time_base, new.is_keyframe = pkt.pts, pkt.dts, pkt.time_base, pkt.is_keyframe
            new.stream = ostream
            out.mux(new)
            n += 1
    return n


def _stamped_clip(name: str, seed: int, seconds: float, first_stopped_s: float | None) -> Path:
    final = CACHE / "clips" / f"{name}-v{VERSION}.mp4"
    if final.exists() and ground_truth_path(final).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    raw = final.with_name(final.stem + ".raw.mp4")
    write_clip(raw, _busy_scene(seed, seconds, first_stopped_s))
    tmp = final.with_name(final.name + ".part")
    _add_sei(raw, tmp)
    shutil.move(str(ground_truth_path(raw)), ground_truth_path(final))
    tmp.replace(final)
    raw.unlink()
    return final


def lane_clip() -> Path:
    return _stamped_clip("lane", 5301, 60.0, None)


def first_clip() -> Path:
    return _stamped_clip("first", 5302, 30.0, 8.0)


def throughput_clip() -> Path:
    path = CACHE / "clips" / f"throughput-v{VERSION}.mp4"
    if not (path.exists() and ground_truth_path(path).exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        make_clip(path, 7101, 30.0, kinds=["stop", "pass", "stop"])
    return path


def stops_per_second(clip: Path) -> float:
    """Vehicle stops per second of a looping clip (from its ground truth): what a camera showing it offers."""
    import json

    truth = json.loads(ground_truth_path(clip).read_text())
    stops = [v for v in truth["vehicles"] if v["stopped_from"] is not None and v["first_frame"] >= 0]
    return len(stops) / (truth["n_frames"] / truth["fps"])
