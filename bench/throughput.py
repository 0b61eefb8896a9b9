"""Section 1: per-worker throughput of our pipeline engine vs a bare Ultralytics predict loop.

Runs in its own process (it imports torch): `python -m bench.throughput MODEL_DIR CLIP OUT.json
[--frames N] [--rounds R]`. Every variant runs on the same decoded frames (held in memory, so no
decode cost), on one thread, in interleaved rounds (A B C D E, B C D E A, ...) so that the noise of
a shared machine lands on all of them alike; ratios are computed per round and over the whole run.

Variants:
- engine/onnx, engine/ultralytics: what a worker does per frame, `Lane.process` on a
  `PipelineInstance(..., backend=...)`: detector on every frame, tracking, and the two classifiers
  once per vehicle (when it becomes stable), as the pipeline.json says.
- bare/ultralytics: the simplest loop with `ultralytics.YOLO(...).predict`: detector on the frame,
  then the body-type classifier on every `Car` crop and the brand classifier on every `Frontal` crop,
  every frame (the classifier each pipeline branch names for that crop class).
- engine-every-frame/onnx and /ultralytics: our model wrappers doing the bare loop's work
  (classifiers on every detection of every frame); splits the ratio into "runtime" and
  "classify once per vehicle" parts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from detector_worker.synthetic.offline import prepare_ultralytics

prepare_ultralytics()

import cv2  # noqa: E402

cv2.setNumThreads(1)

CONF = 0.6  # the pipeline's minConfidence, so all variants see the same detections
BRAND, BODY = "car_brand_cls_v1", "car_bodytype_cls_v1"


def load_frames(clip: Path, count: int) -> list[np.ndarray]:
    """Decoded frames of the clip, every other one (the workers' max_fps 5 on a 10 fps camera),
    starting a little before the first vehicle so that short runs still see vehicles."""
    truth = json.loads(clip.with_suffix(".json").read_text())
    first = next((i for i, objs in enumerate(truth["frames"]) if objs), 0)
    cap = cv2.VideoCapture(str(clip))
    frames: list[np.ndarray] = []
    i = 0
    start = max(0, first - 10)
    while len(frames) < count:
        ok, image = cap.read()
        if not ok:
            break
        if i >= start and (i - start) % 2 == 0:
            frames.append(image)
        i += 1
    cap.release()
    return frames


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("clip", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = 1
    torch.set_num_threads(1)

    from detector_worker.imaging import crop, resize_to
    from detector_worker.pipeline.archive import load_pipeline
    from detector_worker.pipeline.engine import Lane, PipelineInstance

    frames = load_frames(args.clip, args.frames)
    config = load_pipeline(args.model_dir)
    branches = {b.model_id: b for b in config.pipeline.branches}
    sizes = {m: tuple(branches[m].resize_target or (64, 64)) for m in (BRAND, BODY)}
    instances = {b: PipelineInstance(config, args.model_dir, backend=b, threads=1) for b in ("onnx", "ultralytics")}
    torch.set_num_threads(1)
    det_pt = args.model_dir / config.pipeline.model_file
    yolo_det = YOLO(str(det_pt))
    yolo_brand = YOLO(str(args.model_dir / branches[BRAND].model_file))
    yolo_body = YOLO(str(args.model_dir / branches[BODY].model_file))
    det_imgsz = 320

    def bare(frame: np.ndarray) -> int:
        result = yolo_det.predict(frame, imgsz=det_imgsz, conf=CONF, verbose=False)[0]
        calls = 0
        names = result.names
        for box, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), strict=True):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            patch = frame[max(0, y1):y2, max(0, x1):x2]
            if patch.size == 0:
                continue
            label = names[int(cls)]
            if label == "Car":
                yolo_body.predict(patch, imgsz=sizes[BODY][0], verbose=False)
                calls += 1
            elif label == "Frontal":
                yolo_brand.predict(patch, imgsz=sizes[BRAND][0], verbose=False)
                calls += 1
        return calls

    def every_frame(backend: str) -> Any:
        inst = instances[backend]

        def run(frame: np.ndarray) -> int:
            calls = 0
            for d in inst.detect(frame):
                model = BODY if d.label == "Car" else BRAND if d.label == "Frontal" else None
                if model is None:
                    continue
                patch = crop(frame, d.box)
                if patch.size == 0:
                    continue
                inst.classifiers[model].classify(np.ascontiguousarray(resize_to(patch, sizes[model])))
                calls += 1
            return calls
        return run

    def engine(backend: str) -> Any:
        state: dict[str, Any] = {}

        def reset() -> None:
            state["lane"] = Lane(instances[backend])

        def run(frame: np.ndarray) -> int:
            cycles = state["lane"].process(frame, time.time())
            return len(cycles)
        return run, reset

    eng_onnx, reset_onnx = engine("onnx")
    eng_ul, reset_ul = engine("ultralytics")
    variants: dict[str, tuple[Any, Any]] = {
        "engine/onnx": (eng_onnx, reset_onnx),
        "engine/ultralytics": (eng_ul, reset_ul),
        "bare/ultralytics": (bare, None),
        "engine-every-frame/onnx": (every_frame("onnx"), None),
        "engine-every-frame/ultralytics": (every_frame("ultralytics"), None),
    }
    names = list(variants)
    # warm-up: first predicts set up predictors, allocate arenas
    for fn, reset in variants.values():
        if reset:
            reset()
        for frame in frames[:8]:
            fn(frame)
    samples: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}  # frames/s of each round
    work: dict[str, int] = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, reset = variants[name]
            if reset:
                reset()
            count = 0
            start = time.perf_counter()
            for frame in frames:
                t = time.perf_counter()
                count += fn(frame)
                samples[name].append((time.perf_counter() - t) * 1000)
            per_round[name].append(len(frames) / (time.perf_counter() - start))
            work[name] = count
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.1f}/s" for n in names),
              flush=True)
    out = {"frames": len(frames), "rounds": args.rounds, "frame_shape": list(frames[0].shape),
           "torch_threads": torch.get_num_threads(), "variants": {}}
    for name in names:
        arr = np.asarray(samples[name])
        out["variants"][name] = {
            "fps": float(len(arr) / (arr.sum() / 1000)), "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()),
            "round_fps": per_round[name], "work_per_pass": work[name],
        }
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
