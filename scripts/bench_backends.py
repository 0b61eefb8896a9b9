#!/usr/bin/env python3
"""Ultralytics `.pt` vs ONNX Runtime for the stand-in models: latency on one thread, and process memory.

    .venv/bin/python scripts/bench_backends.py [--models models] [--runs 200]

Copies the `.pt` files to a temp dir and exports them there (models/ is never written), then runs
each backend in its own fresh process: RSS after start-up, after loading each model and after the
benchmark; per-call latency p50/p99 of the detector on a 640x480 frame and of both classifiers on
the crops the pipeline feeds them (their resizeTarget). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector_worker.pipeline.export import export_in_subprocess  # noqa: E402
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR  # noqa: E402

BRAND_SIZE, BODY_SIZE = 96, 64  # the stand-in archive's resizeTarget sides
LABELS = {"onnx": "ONNX Runtime", "ultralytics": "Ultralytics .pt"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latency(fn: Callable[[], object], runs: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50": statistics.median(samples), "p99": samples[max(0, round(len(samples) * 0.99) - 1)]}


def child(backend: str, directory: Path, runs: int) -> dict[str, Any]:
    """Runs in a fresh process: everything it measures is this backend's alone."""
    start = time.perf_counter()
    import cv2

    from detector_worker.pipeline.models import Backend, load_classifier, load_detector
    from detector_worker.synthetic.datasets import classification_crops, render_sample

    cv2.setNumThreads(1)  # letterbox resizes with OpenCV: keep the whole call on one thread
    kind: Backend = "onnx" if backend == "onnx" else "ultralytics"
    frame = render_sample(77, 0).image
    crops = classification_crops(77, 1, BRAND_SIZE, BODY_SIZE)
    assert crops is not None
    rss = {"start": rss_mb()}
    detector = load_detector(directory / f"{DETECTOR}.pt", backend=kind, threads=1)
    rss["detector"] = rss_mb()
    brand = load_classifier(directory / f"{BRAND}.pt", backend=kind, threads=1)
    rss["brand"] = rss_mb()
    body = load_classifier(directory / f"{BODY}.pt", backend=kind, threads=1)
    rss["body"] = rss_mb()
    detector.detect(frame, 0.25)
    first = time.perf_counter() - start
    timings = {
        DETECTOR: latency(lambda: detector.detect(frame, 0.25), runs),
        BRAND: latency(lambda: brand.classify(crops[0]), runs * 2),
        BODY: latency(lambda: body.classify(crops[2]), runs * 2),
    }
    rss["end"] = rss_mb()
    return {"rss": rss, "latency": timings, "first_result_s": first, "torch": "torch" in sys.modules}


def table(results: dict[str, dict[str, Any]]) -> str:
    onnx, ref = results["onnx"], results["ultralytics"]
    inputs = {DETECTOR: "640x480 frame", BRAND: f"{BRAND_SIZE}x{BRAND_SIZE} crop",
              BODY: f"{BODY_SIZE}x{BODY_SIZE} crop"}
    lines = ["| model | input | Ultralytics .pt p50 / p99 | ONNX Runtime p50 / p99 | p50 speed-up |",
             "|---|---|---|---|---|"]
    for model, what in inputs.items():
        u, o = ref["latency"][model], onnx["latency"][model]
        lines.append(f"| {model} | {what} | {u['p50']:.2f} / {u['p99']:.2f} ms | {o['p50']:.2f} / {o['p99']:.2f} ms "
                     f"| {u['p50'] / o['p50']:.1f}x |")
    lines += ["", "| process (fresh, 1 thread) | RSS at start | + detector | + brand | + body type | after benchmark "
              "| time to first result | torch imported |", "|---|---|---|---|---|---|---|---|"]
    for backend, r in (("ultralytics", ref), ("onnx", onnx)):
        m = r["rss"]
        lines.append(f"| {LABELS[backend]} | {m['start']:.0f} MB | {m['detector']:.0f} MB | {m['brand']:.0f} MB "
                     f"| {m['body']:.0f} MB | {m['end']:.0f} MB | {r['first_result_s']:.2f} s | {r['torch']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=int, default=200, help="timed detector calls (classifiers: twice as many)")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.runs)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        work = Path(tmp)
        for model in (DETECTOR, BRAND, BODY):
            shutil.copyfile(args.models / f"{model}.pt", work / f"{model}.pt")
        start = time.perf_counter()
        export_in_subprocess(work)
        export_s = time.perf_counter() - start
        results = {}
        for backend in ("ultralytics", "onnx"):
            done = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--child", backend, str(work)],
                                  capture_output=True, text=True, check=True)
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"# Inference backends (stand-in models, 1 CPU thread, {args.runs} runs)\n")
    print(table(results))
    print(f"\nExport of all three models to ONNX (`python -m detector_worker.pipeline.export`, fresh process "
          f"incl. torch import): {export_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
