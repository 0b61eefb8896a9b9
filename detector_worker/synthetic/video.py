"""Render a scene to an H.264 MP4 with its ground truth beside it (`<name>.json`).

The encoding suits a looping RTSP test camera: no B-frames (frames leave the encoder in display
order) and a keyframe every second, so a client can join at any time and the loop point is
always decodable.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from .scene import Scene, VisitKind

GROUND_TRUTH_FORMAT = "synthetic-camera-gt/1"


def ground_truth_path(video: Path) -> Path:
    return video.with_suffix(".json")


def write_clip(path: Path, scene: Scene, *, crf: int = 23) -> Path:
    """Encode every frame of `scene` to `path`; returns the ground-truth file's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames: list[list[dict[str, object]]] = []
    tmp = path.with_name(path.name + ".part")
    fps = Fraction(scene.fps).limit_denominator(1000)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.codec_context.gop_size = max(1, int(round(scene.fps)))
        stream.codec_context.max_b_frames = 0
        stream.options = {"crf": str(crf), "preset": "veryfast", "bf": "0", "sc_threshold": "0"}
        for i in range(scene.n_frames):
            image, objects = scene.render(i)
            frames.append([o.to_json() for o in objects])
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.replace(path)
    truth = {
        "format": GROUND_TRUTH_FORMAT,
        "video": path.name,
        "seed": scene.seed,
        "width": scene.width,
        "height": scene.height,
        "fps": scene.fps,
        "n_frames": scene.n_frames,
        "vehicles": [
            {
                "vehicle_id": v.vehicle_id,
                "kind": v.kind,
                "brand": v.look.brand.name,
                "body_type": v.look.body.name,
                "first_frame": v.start,
                "last_frame": v.end - 1,
                "stopped_from": v.stopped_frames.start if v.stay else None,
                "stopped_to": v.stopped_frames.stop - 1 if v.stay else None,
            }
            for v in scene.visits
        ],
        "frames": frames,
    }
    gt = ground_truth_path(path)
    gt.write_text(json.dumps(truth, separators=(",", ":")))
    return gt


def make_clip(path: Path, seed: int, seconds: float = 60.0, width: int = 640, height: int = 480,
              fps: float = 10.0, kinds: Sequence[VisitKind] | None = None,
              brands: Sequence[str] | None = None, body_types: Sequence[str] | None = None) -> Path:
    scene = Scene.build(seed, seconds, width, height, fps, kinds=kinds, brands=brands, body_types=body_types)
    return write_clip(path, scene)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a synthetic camera clip (H.264 MP4 + ground truth JSON).")
    parser.add_argument("output", type=Path, help="the .mp4 to write; the ground truth goes beside it as .json")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--kinds", help="comma-separated visit kinds in order, e.g. stop,pass,stop")
    parser.add_argument("--brands", help="comma-separated brands to draw vehicles from")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k] if args.kinds else None
    for k in kinds or []:
        if k not in ("stop", "pass"):
            parser.error(f"--kinds: unknown visit kind {k!r} (use stop or pass)")
    brands = [b for b in args.brands.split(",") if b] if args.brands else None
    gt = make_clip(args.output, args.seed, args.seconds, args.width, args.height, args.fps,
                   kinds=kinds, brands=brands)
    print(f"wrote {args.output} and {gt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
