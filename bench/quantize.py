"""INT8 static quantization of the real-size detector: latency and mAP50 against FP32 (not in CI).

`python -m bench.quantize [--model build/models-real/car_frontal_detection_v8n.onnx] [--runs 60]`

Needs `make models-real` first. Quantizes the FP32 ONNX export with ONNX Runtime's
`quantize_static` (QDQ; per-channel INT8 weights, UINT8 activations: the u8s8 kernels x86 runs;
MinMax ranges from `--calib` synthetic 1280×720 frames of their own seed, letterboxed as the worker
does). The detect head's decoding (DFL, box arithmetic, the final Concat of 640-pixel boxes with
0–1 scores: one uint8 scale cannot hold both) stays in float: only its convolutions are quantized.

Then, in this one process with ONNX Runtime on `--threads` (1) intra-op threads:
- latency per 640 frame: the models alternate run by run (which goes first too), `--runs` rounds
  on the same letterboxed held-out frames; the medians of `session.run` (wall clock, and the CPU
  time of the calling thread, where ORT computes with one thread: the cost on a busy machine) and
  of the worker's whole `OnnxDetector.detect` (letterbox + run + decode at confidence 0.6);
- mAP50 of both on the same held-out frames (seed 2000, 1280×720, the set `make models-real`
  scores with Ultralytics), through the project's own `OnnxDetector` at confidence 0.001, NMS IoU
  0.7, AP as Ultralytics computes it (101-point interpolated).

Verdict: INT8 is worth offering (`make models-real REAL_ARGS=--int8`) only if it is faster here
(wall and CPU medians) and its mAP50 is within 0.01 of FP32. `--frame 640x480 --model
models/car_frontal_detection_v1.onnx --int8 /tmp/x.onnx --no-write` runs the same on the stand-in.
Figures go to bench/results/results.json under `realistic.int8` (only that key is rewritten).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.json"
MODEL = ROOT / "build" / "models-real" / "car_frontal_detection_v8n.onnx"
HELDOUT_SEED, CALIB_SEED = 2000, 3000  # held-out: as scripts/train_real_models.py; calibration: never trained on
FRAME = (1280, 720)
MAX_DROP = 0.01  # mAP50 points (as a fraction) INT8 may lose and still be offered

Truth = list[tuple[tuple[float, float, float, float], int]]


def _render(args: tuple[int, int, tuple[int, int]]) -> tuple[np.ndarray, Truth]:
    from detector_worker.synthetic.datasets import render_sample

    sample = render_sample(args[0], args[1], *args[2])
    truth: Truth = []
    for o in sample.objects:
        truth.append((tuple(float(v) for v in o.car_box), 0))  # type: ignore[arg-type]
        if o.frontal_box is not None:
            truth.append((tuple(float(v) for v in o.frontal_box), 1))  # type: ignore[arg-type]
    return sample.image, truth


def render_frames(seed: int, n: int, workers: int = 2, size: tuple[int, int] = FRAME) -> list[tuple[np.ndarray, Truth]]:
    """The frames (and their boxes) that `write_detection_set(seed, 0, n, size=size)` puts in its val split."""
    from detector_worker.synthetic.datasets import VAL_OFFSET

    jobs = [(seed, VAL_OFFSET + i, size) for i in range(n)]
    if workers <= 1:
        return [_render(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_render, jobs, chunksize=8))


def calibration_frames(n: int = 100, workers: int = 2, size: tuple[int, int] = FRAME) -> list[np.ndarray]:
    return [image for image, _ in render_frames(CALIB_SEED, n, workers, size)]


def _input_size(model: Path) -> tuple[int, int]:
    import onnx

    dims = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def head_decoding_nodes(model: Path) -> list[str]:
    """The nodes of the Detect head (`/model.<last>/`) after its conv stacks (cv2: boxes, cv3: classes):
    DFL, box decoding, sigmoid of the scores, the final Concat."""
    import onnx

    nodes = onnx.load(str(model)).graph.node
    heads = sorted({n.name.split("/")[1] for n in nodes if n.name.startswith("/model.")},
                   key=lambda s: int(s.split(".")[1]))
    last = f"/{heads[-1]}/"
    return [n.name for n in nodes if n.name.startswith(last) and not n.name.startswith((f"{last}cv2.", f"{last}cv3."))]


def quantize_detector(fp32: Path, out: Path, frames: Sequence[np.ndarray], *, per_channel: bool = True,
                      activations: str = "u8", method: str = "minmax") -> Path:
    """`fp32` quantized statically (QDQ) to `out`, its Ultralytics metadata kept (the worker reads it)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from detector_worker.pipeline import preprocess

    size = _input_size(fp32)
    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._it, None)
            return None if image is None else {name: preprocess.letterbox(image, size)[0]}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        exclude = head_decoding_nodes(pre)
        part = out.with_name(out.name + ".part")
        quantize_static(str(pre), str(part), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        extra_options={"CalibMaxIntermediateOutputs": 8, "CalibPercentile": 99.999})
    model = onnx.load(str(part))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(fp32), load_external_data=False).metadata_props)
    onnx.save(model, str(part))
    part.replace(out)
    print(f"quantized {fp32.name} -> {out} ({out.stat().st_size / 1e6:.1f} MB; {len(exclude)} head nodes in float)",
          flush=True)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl, br = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a, area_b = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9))


def ap50(predictions: list[list[tuple[Any, int, float]]], truths: list[Truth], nc: int) -> list[float]:
    """Per-class AP at IoU 0.5: greedy matching by confidence, Ultralytics' 101-point interpolated AP."""
    aps = []
    for c in range(nc):
        scores: list[float] = []
        hits: list[bool] = []
        n_true = 0
        for pred, truth in zip(predictions, truths, strict=True):
            gt = np.array([b for b, k in truth if k == c], dtype=float).reshape(-1, 4)
            n_true += len(gt)
            mine = sorted((p for p in pred if p[1] == c), key=lambda p: -p[2])
            used = np.zeros(len(gt), bool)
            ious = _iou(np.array([p[0] for p in mine], dtype=float).reshape(-1, 4), gt) if mine and len(gt) else None
            for i, p in enumerate(mine):
                scores.append(p[2])
                j = -1
                if ious is not None:
                    row = np.where(used, -1.0, ious[i])
                    j = int(row.argmax()) if row.max() >= 0.5 else -1
                if j >= 0:
                    used[j] = True
                hits.append(j >= 0)
        if not scores or not n_true:  # as Ultralytics: no predictions or no labels of the class → 0
            aps.append(0.0)
            continue
        order = np.argsort(-np.array(scores), kind="stable")
        tp = np.cumsum(np.array(hits, dtype=float)[order])
        recall = tp / max(n_true, 1)
        precision = tp / np.arange(1, len(tp) + 1)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate([[1.0], precision, [0.0]]))))
        x = np.linspace(0, 1, 101)
        aps.append(float(np.trapezoid(np.interp(x, mrec, mpre), x)))
    return aps


def evaluate(model: Path, frames: list[tuple[np.ndarray, Truth]], threads: int) -> dict[str, Any]:
    from detector_worker.pipeline.onnx_backend import OnnxDetector

    detector = OnnxDetector(model, threads=threads)
    preds = [[(d.box, detector.labels.index(d.label), d.confidence) for d in detector.detect(image, 0.001)]
             for image, _ in frames]
    per_class = ap50(preds, [t for _, t in frames], len(detector.labels))
    return {"map50": float(np.mean(per_class)), "ap50": dict(zip(detector.labels, per_class, strict=True))}


def latency(models: dict[str, Path], frames: list[np.ndarray], runs: int, threads: int) -> dict[str, Any]:
    """Median seconds per frame, the models interleaved: wall clock and this thread's CPU time (with one
    intra-op thread ONNX Runtime computes on the calling thread: CPU time is the cost, whatever else
    runs on the machine) of `session.run`, and wall clock of the whole detect()."""
    from detector_worker.pipeline import preprocess
    from detector_worker.pipeline.onnx_backend import OnnxDetector

    detectors = {k: OnnxDetector(p, threads=threads) for k, p in models.items()}
    size = detectors[next(iter(models))]._model.imgsz
    tensors = [preprocess.letterbox(f, size)[0] for f in frames]
    times: dict[str, dict[str, list[float]]] = {k: {"run": [], "run_cpu": [], "detect": []} for k in models}
    for d in detectors.values():  # warm up
        d.detect(frames[0], 0.6)
    for r in range(runs):
        for k in list(detectors) if r % 2 == 0 else list(reversed(detectors)):
            t0, c0 = time.perf_counter(), time.thread_time()
            detectors[k]._model.run(tensors[r % len(tensors)])
            times[k]["run_cpu"].append(time.thread_time() - c0)
            times[k]["run"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            detectors[k].detect(frames[r % len(frames)], 0.6)
            times[k]["detect"].append(time.perf_counter() - t0)
    return {k: {"run_s_p50": statistics.median(t["run"]), "run_cpu_s_p50": statistics.median(t["run_cpu"]),
                "detect_s_p50": statistics.median(t["detect"]), "run_s_min": min(t["run"]), "runs": runs}
            for k, t in times.items()}


def write_results(figures: dict[str, Any]) -> None:
    """Read-modify-write of results.json's realistic.int8 only (other keys belong to other benches)."""
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data.setdefault("realistic", {})["int8"] = figures
    part = RESULTS.with_name(RESULTS.name + f".part-{os.getpid()}")
    part.write_text(json.dumps(data, indent=1, default=str))
    part.replace(RESULTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL, help="the FP32 detector ONNX (make models-real)")
    parser.add_argument("--int8", type=Path, help="where the INT8 model goes (default: beside, .int8.onnx)")
    parser.add_argument("--frames", type=int, default=300, help="held-out frames for mAP50")
    parser.add_argument("--calib", type=int, default=100, help="calibration frames (seed 3000)")
    parser.add_argument("--runs", type=int, default=60, help="latency rounds (each model once per round)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the latency")
    parser.add_argument("--activations", choices=("u8", "s8"), default="u8")
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights instead of per-channel")
    parser.add_argument("--frame", default=f"{FRAME[0]}x{FRAME[1]}", help="frame size WxH (the stand-in's: 640x480)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering frames")
    parser.add_argument("--no-write", action="store_true", help="print only; results.json untouched")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} is missing: run `make models-real` first")
    int8 = args.int8 or args.model.with_suffix(".int8.onnx")
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    width, height = (int(v) for v in args.frame.split("x"))
    size = (width, height)
    quantize_detector(args.model, int8, calibration_frames(args.calib, args.workers, size),
                      per_channel=not args.per_tensor, activations=args.activations, method=args.method)
    quantize_s = time.monotonic() - t0
    frames = render_frames(HELDOUT_SEED, args.frames, args.workers, size)
    speed = latency({"fp32": args.model, "int8": int8}, [f for f, _ in frames[:20]], args.runs, args.threads)
    accuracy = {k: evaluate(p, frames, 2) for k, p in (("fp32", args.model), ("int8", int8))}
    faster = all(speed["int8"][k] < speed["fp32"][k] for k in ("run_s_p50", "run_cpu_s_p50"))
    drop = accuracy["fp32"]["map50"] - accuracy["int8"]["map50"]
    figures = {
        "model": args.model.name, "imgsz": list(_input_size(args.model)), "threads": args.threads,
        "quantization": {"format": "QDQ", "weights": "int8 per-tensor" if args.per_tensor else "int8 per-channel",
                         "activations": "uint8" if args.activations == "u8" else "int8", "calibration": args.method,
                         "calibration_frames": args.calib, "head_decoding": "float", "seconds": quantize_s},
        "latency": speed, "speedup_run": speed["fp32"]["run_s_p50"] / speed["int8"]["run_s_p50"],
        "speedup_run_cpu": speed["fp32"]["run_cpu_s_p50"] / speed["int8"]["run_cpu_s_p50"],
        "heldout": {"seed": HELDOUT_SEED, "frames": args.frames, "size": list(size)}, "accuracy": accuracy,
        "map50_drop": drop, "size_bytes": {"fp32": args.model.stat().st_size, "int8": int8.stat().st_size},
        "verdict": "offer INT8" if faster and drop <= MAX_DROP else "keep FP32",
        "why": f"INT8 {'faster' if faster else 'not faster'} ({speed['int8']['run_s_p50'] * 1e3:.1f} vs "
               f"{speed['fp32']['run_s_p50'] * 1e3:.1f} ms per run, CPU {speed['int8']['run_cpu_s_p50'] * 1e3:.1f} vs "
               f"{speed['fp32']['run_cpu_s_p50'] * 1e3:.1f} ms), mAP50 {accuracy['int8']['map50']:.3f} vs "
               f"{accuracy['fp32']['map50']:.3f} (drop {drop * 100:.1f} points, allowed {MAX_DROP * 100:.0f})",
        "loadavg_1m": [load0, os.getloadavg()[0]], "cpus": os.cpu_count(),
        "onnxruntime": __import__("onnxruntime").__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(figures, indent=1), flush=True)
    if not args.no_write:
        write_results(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
