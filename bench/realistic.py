"""Realistic cost per camera: CPU core-seconds per camera-hour on generated "day" footage (not in CI).

`python -m bench.realistic [--width 1280 --height 720 --fps 25 --minutes 3 --seed 1] [--clip DAY.mp4]`

Variants, each on the same H.264 day clip (detector_worker/synthetic/day.py), one thread, at the
workers' max_fps (5):
- decode-only: OpenCV decodes every frame (one decode thread), converts only the 5 fps kept
  (`grab()`/`retrieve()`, what the worker's reader does).
- worker-ungated / worker-gated: decode-only + `Lane.process` on the kept frames (crop = the
  ground truth's lane ROI), without and with motion gating.
- bare-ultralytics: what a user would write: `cv2.VideoCapture.read()` of every frame (decode +
  convert), and at 5 fps `YOLO(...).predict` and the two classifiers on every Car/Frontal crop.

Recall comes from the stand-in models (they know the synthetic world); the COST of a real-size
detector comes from `YOLO("yolov8n.yaml")` (the architecture, random weights: offline) exported to
ONNX at 640: each variant's detector time is measured with the stand-in, then replaced by the
measured per-call time of YOLOv8n@640 on ONNX Runtime (1 thread) times the detector calls the
variant made (bare: the Ultralytics predict time of YOLOv8n@640). Results go to
bench/results/results.json under "realistic".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

cv2.setNumThreads(1)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.json"
MAX_FPS = 5.0


def decode(clip: Path, fps: float, on_frame: Any = None, *, convert_all: bool = False) -> tuple[float, int]:
    """CPU seconds to decode the clip keeping MAX_FPS (on_frame(i, image) for each kept frame)."""
    cap = cv2.VideoCapture(str(clip), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
    step = max(1, round(fps / MAX_FPS))
    cpu0, i, kept = time.process_time(), 0, 0
    while True:
        if convert_all:
            ok, image = cap.read()
        else:
            ok = cap.grab()
            image = None
        if not ok:
            break
        if i % step == 0:
            if image is None:
                image = cap.retrieve()[1]
            kept += 1
            if on_frame is not None:
                on_frame(i, image)
        i += 1
    cap.release()
    return time.process_time() - cpu0, kept


def yolov8n_onnx(work: Path) -> Path:
    """YOLOv8n (random weights) exported to ONNX at 640, once."""
    out = work / "yolov8n-640.onnx"
    if not out.is_file():
        from detector_worker.synthetic.offline import prepare_ultralytics
        prepare_ultralytics()
        from ultralytics import YOLO
        made = YOLO("yolov8n.yaml").export(format="onnx", imgsz=640, dynamic=False, simplify=False)
        Path(made).replace(out)
    return out


def ort_time(model: Path, frames: list[np.ndarray], threads: int = 1) -> float:
    """Seconds per detector call of `model` on ONNX Runtime (letterbox + run), median of the frames."""
    import onnxruntime as ort

    from detector_worker.pipeline.onnx_backend import session_options
    session = ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    h, w = int(shape[2]), int(shape[3])
    times = []
    for image in frames:
        t0 = time.process_time()
        blob = cv2.dnn.blobFromImage(cv2.resize(image, (w, h)), 1 / 255.0, swapRB=True)
        session.run(None, {name: blob})
        times.append(time.process_time() - t0)
    return float(np.median(times[1:] if len(times) > 1 else times))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", type=Path, help="an existing day clip (its .json beside it)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stop-s", type=float, nargs=2, default=(60.0, 300.0), metavar=("MIN", "MAX"))
    parser.add_argument("--gap-s", type=float, nargs=2, default=(20.0, 120.0), metavar=("MIN", "MAX"))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-realistic")
    parser.add_argument("--skip-bare", action="store_true", help="no Ultralytics variant (no torch import)")
    parser.add_argument("--timeline", action="store_true",
                        help="only the gated worker, second by second (motion, detector calls, visits): "
                             "results.json realistic.timeline, for the timeline plot")
    parser.add_argument("--detector-onnx", type=Path,
                        help="the 640 detector whose cost counts, e.g. make models-real's "
                             "build/models-real/car_frontal_detection_v8n.onnx (or .int8.onnx); "
                             "default: an untrained YOLOv8n export")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from bench.common import write_json
    from detector_worker.config.spec import MotionSettings
    from detector_worker.pipeline.archive import open_archive
    from detector_worker.pipeline.engine import Lane, PipelineInstance
    from detector_worker.pipeline.export import prepare_archive_dir
    from detector_worker.synthetic.day import DayScene, score_visits, write_day

    clip = args.clip
    generated_s = None
    if clip is None:
        stops = f"{args.stop_s[0]:g}-{args.stop_s[1]:g}s"
        clip = args.work / f"day-{args.width}x{args.height}-{args.fps:g}-{args.minutes:g}m-{stops}-{args.seed}.mp4"
        if not clip.is_file():
            t0 = time.monotonic()
            write_day(clip, DayScene.build(args.seed, args.minutes, args.width, args.height, args.fps,
                                           stop_s=tuple(args.stop_s), gap_s=tuple(args.gap_s)))
            generated_s = time.monotonic() - t0
    truth = json.loads(clip.with_suffix(".json").read_text())
    fps, hours = truth["fps"], truth["n_frames"] / truth["fps"] / 3600
    model_dir, config = open_archive(str(ROOT / "models" / "car_frontal_pipeline.mpta"), args.work / "cache", "standin")
    prepare_archive_dir(model_dir)
    instance = PipelineInstance(config, model_dir)
    load1 = os.getloadavg()[0]
    if args.timeline:
        return write_timeline(clip, truth, instance)

    sample: list[np.ndarray] = []
    decode(clip, fps, lambda i, img: sample.append(img) if len(sample) < 20 and i % 50 == 0 else None)
    standin_det = ort_time(model_dir / f"{config.pipeline.model_id}.onnx", sample) if (
        model_dir / f"{config.pipeline.model_id}.onnx").is_file() else None
    cost_model = args.detector_onnx or yolov8n_onnx(args.work)
    v8n = ort_time(cost_model, sample)

    figures: dict[str, Any] = {}
    cpu, kept = decode(clip, fps)
    figures["decode-only"] = {"core_s_per_camera_hour": cpu / hours, "frames_kept": kept}
    for gated in (False, True):
        lane = Lane(instance, tuple(truth["roi"]), motion=MotionSettings(enabled=gated))
        reports: list[tuple[int, Any]] = []

        def step(i: int, image: np.ndarray, lane: Lane = lane, reports: list[tuple[int, Any]] = reports) -> None:
            for cycle in lane.process(image, i / fps, now=i / fps):
                reports.append((i, cycle.detections["Car"].box))

        cpu, kept = decode(clip, fps, step)
        calls = lane.stats.detected
        real = cpu + calls * (v8n - (standin_det or 0.0))
        figures["worker-gated" if gated else "worker-ungated"] = {
            "core_s_per_camera_hour": real / hours, "measured_core_s_per_camera_hour_standin": cpu / hours,
            "detector_calls": calls, "frames": lane.stats.frames, "detected_share": calls / max(1, lane.stats.frames),
            "gate": vars(lane.gate_stats) if lane.gate_stats else None, **score_visits(truth, reports)}
    if not args.skip_bare:
        from detector_worker.synthetic.offline import prepare_ultralytics
        prepare_ultralytics()
        import torch
        from ultralytics import YOLO
        torch.set_num_threads(1)
        det = YOLO(str(model_dir / f"{config.pipeline.model_id}.pt"))
        classifiers = {b.crop_class: (YOLO(str(model_dir / b.model_file)),
                                      b.resize_target[0] if b.resize_target else 224)
                       for b in config.pipeline.branches}
        big = YOLO("yolov8n.yaml")
        t_big = []
        for image in sample[:8]:
            t0 = time.process_time()
            big.predict(image, imgsz=640, verbose=False)
            t_big.append(time.process_time() - t0)
        t_standin = []
        calls_bare, crops_bare = 0, 0
        bare_reports: list[tuple[int, Any]] = []

        def bare(i: int, image: np.ndarray) -> None:
            nonlocal calls_bare, crops_bare
            t0 = time.process_time()
            result = det.predict(image, imgsz=320, conf=0.6, verbose=False)[0]
            t_standin.append(time.process_time() - t0)
            calls_bare += 1
            for box, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), strict=True):
                label = result.names[int(cls)]
                if label == "Car":
                    bare_reports.append((i, box))
                if label in classifiers:
                    model, size = classifiers[label]
                    x1, y1, x2, y2 = (int(v) for v in box)
                    patch = image[max(0, y1):y2, max(0, x1):x2]
                    if patch.size:
                        model.predict(patch, imgsz=size, verbose=False)
                        crops_bare += 1

        cpu, kept = decode(clip, fps, bare, convert_all=True)
        real = cpu - sum(t_standin) + calls_bare * float(np.median(t_big[1:]))
        figures["bare-ultralytics"] = {
            "core_s_per_camera_hour": real / hours, "measured_core_s_per_camera_hour_standin": cpu / hours,
            "detector_calls": calls_bare, "classifier_calls": crops_bare,
            "yolov8n_640_predict_s": float(np.median(t_big[1:])), "standin_predict_s": float(np.median(t_standin)),
            **score_visits(truth, bare_reports),
            "note": "no tracking: a vehicle is reported on every frame it is seen (duplicates); "
                    "recall = stops seen at least once"}
        figures["bare-ultralytics"]["extra_reports"] = len(figures["bare-ultralytics"]["extra_reports"])
    out = {"clip": {"path": clip.name, "width": truth["width"], "height": truth["height"], "fps": fps,
                    "minutes": truth["n_frames"] / fps / 60, "generated_s": generated_s},
           "max_fps": MAX_FPS, "yolov8n_640_ort_s": v8n, "cost_model": cost_model.name,
           "standin_detector_ort_s": standin_det,
           "loadavg_1m": [load1, os.getloadavg()[0]], "cpus": os.cpu_count(), "variants": figures,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    realistic = data.get("realistic") or {}
    if "runs" not in realistic:  # an earlier single-clip layout: not comparable, dropped
        realistic = {k: v for k, v in realistic.items() if k == "int8"}  # bench/quantize.py's figures are kept
    int8 = cost_model.name.endswith(".int8.onnx")  # the INT8 option's run is kept beside the default's
    realistic.setdefault("runs", {})[f"{truth['height']}p{fps:g}{'+int8' if int8 else ''}"] = out
    realistic.update(summary(realistic["runs"], realistic.get("cameras_sustained")))
    data["realistic"] = realistic
    write_json(RESULTS, data)  # the format bench/run.py writes, so only this key changes
    print(json.dumps(out, indent=2, default=str))
    return 0


def write_timeline(clip: Path, truth: dict[str, Any], instance: Any) -> int:
    """One camera's day through the gated lane, per second: motion seen in the ROI, detector calls and
    why, the visits reported; beside the ground truth's visits and light changes."""
    from bench.common import write_json
    from detector_worker.config.spec import MotionSettings
    from detector_worker.pipeline.engine import Lane
    from detector_worker.synthetic.day import score_visits

    fps = truth["fps"]
    seconds = int(truth["n_frames"] / fps) + 1
    motion, calls = [0] * seconds, [0] * seconds
    why: dict[str, list[int]] = {}
    lane = Lane(instance, tuple(truth["roi"]), motion=MotionSettings(enabled=True))
    reports: list[tuple[int, Any]] = []

    def step(i: int, image: np.ndarray) -> None:
        before = dict(lane.gate_stats.reasons or {}) if lane.gate_stats else {}
        for cycle in lane.process(image, i / fps, now=i / fps):
            reports.append((i, cycle.detections["Car"].box))
        second = int(i / fps)
        motion[second] = max(motion[second], 1 if lane.motion_boxes() else 0)
        after = (lane.gate_stats.reasons or {}) if lane.gate_stats else {}
        for reason, n in after.items():
            if n != before.get(reason, 0):
                calls[second] += 1
                why.setdefault(reason, [0] * seconds)[second] += 1

    decode(clip, fps, step)
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data.setdefault("realistic", {})["timeline"] = {
        "clip": {"path": clip.name, "width": truth["width"], "height": truth["height"], "fps": fps},
        "max_fps": MAX_FPS, "motion_seconds": motion, "detector_calls": calls, "calls_by_reason": why,
        "reported_at_s": [round(i / fps, 2) for i, _ in reports],
        "visits": [[v["stop_from_s"], v["stop_to_s"]] for v in truth["vehicles"] if v["stopped_from"] is not None],
        "passes": [[v["arrive_s"], v["leave_s"]] for v in truth["vehicles"] if v["stopped_from"] is None],
        "light_events": [[e["kind"], e["first_frame"] / fps, e["last_frame"] / fps] for e in truth["light_events"]],
        "detector_calls_total": lane.stats.detected, "frames": lane.stats.frames,
        **score_visits(truth, reports)}
    data["realistic"]["timeline"]["extra_reports"] = len(data["realistic"]["timeline"]["extra_reports"])
    write_json(RESULTS, data)
    t = data["realistic"]["timeline"]
    print(f"timeline: {t['detector_calls_total']} detector calls of {t['frames']} frames, recall {t['recall']}")
    return 0


VARIANT_KEYS = {"bare-ultralytics": "bare_ultralytics", "worker-ungated": "worker_ungated",
                "worker-gated": "worker_gated", "decode-only": "decode_only"}


def summary(runs: dict[str, Any], sustained: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's headline keys, from the highest-resolution run measured (1080p before 720p)."""
    key = max((k for k in runs if "+" not in k), key=lambda k: (runs[k]["clip"]["height"], runs[k]["clip"]["minutes"]))
    variants = runs[key]["variants"]
    cpu = {VARIANT_KEYS[v]: f["core_s_per_camera_hour"] for v, f in variants.items()}
    recall = {VARIANT_KEYS[v]: f["recall"] for v, f in variants.items() if "recall" in f}
    gated_vs_bare = (cpu["worker_gated"] / cpu["bare_ultralytics"]) if "bare_ultralytics" in cpu else None
    int8 = runs.get(f"{key}+int8", {}).get("variants", {}).get("worker-gated")
    return {"summary_of": key, "cpu_core_seconds_per_camera_hour": cpu, "recall": recall,
            "gated_vs_bare_cpu": gated_vs_bare,
            # the INT8 detector option against the same bare loop (which runs Ultralytics' FP32 PyTorch)
            "gated_int8_vs_bare_cpu": int8["core_s_per_camera_hour"] / cpu["bare_ultralytics"]
            if int8 and "bare_ultralytics" in cpu else None,
            "cameras_sustained": sustained or {"1080p25": None, "720p25": None}}  # bench/sustained.py


if __name__ == "__main__":
    raise SystemExit(main())
