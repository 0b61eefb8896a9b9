#!/usr/bin/env python3
"""`make bench`: figures for the committed stand-in models.

1. Accuracy on the full held-out set (seed 2000, never trained on): detector mAP50 per class,
   classifier top-1, per class.
2. Speed of each model through Ultralytics on one CPU thread (what one worker gets), on
   640x480 frames and on the crops the pipeline feeds the classifiers.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector_worker.synthetic.offline import prepare_ultralytics  # noqa: E402

prepare_ultralytics()

import torch  # noqa: E402

from detector_worker.synthetic import evaluate  # noqa: E402
from detector_worker.synthetic.datasets import classification_crops, render_sample  # noqa: E402
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR  # noqa: E402

MODELS = ROOT / "models"
HELDOUT_SEED, DET_IMAGES, CLS_CROPS = 2000, 400, 800
DET_IMGSZ, BRAND_SIZE, BODY_SIZE = 320, 96, 64


def timed(fn: object, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> int:
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    with tempfile.TemporaryDirectory() as work:
        report = evaluate.evaluate_models(MODELS, Path(work), HELDOUT_SEED, DET_IMAGES, CLS_CROPS,
                                          det_imgsz=DET_IMGSZ, brand_size=BRAND_SIZE, body_size=BODY_SIZE,
                                          workers=2)
    print(evaluate.format_report(report))

    torch.set_num_threads(1)
    torch_utils.NUM_THREADS = 1  # else Ultralytics sets cpu_count-1 threads on first predict
    frame = render_sample(77, 0).image
    crops = classification_crops(77, 1, BRAND_SIZE, BODY_SIZE)
    assert crops is not None
    rows = []
    for name, image, imgsz in ((DETECTOR, frame, DET_IMGSZ), (BRAND, crops[0], BRAND_SIZE),
                               (BODY, crops[2], BODY_SIZE)):
        model = YOLO(str(MODELS / f"{name}.pt"))
        params = sum(p.numel() for p in model.model.parameters())
        for _ in range(5):
            model.predict(image, imgsz=imgsz, verbose=False)
        p50, p99 = timed(lambda m=model, i=image, s=imgsz: m.predict(i, imgsz=s, verbose=False), 100)
        rows.append(f"| {name} | {params / 1e6:.2f} M | {imgsz} | {p50:.1f} ms | {p99:.1f} ms |")
    print("\n# Stand-in model speed (Ultralytics .pt, 1 CPU thread, predict incl. pre/post-processing)\n")
    print("| model | parameters | imgsz | p50 | p99 |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
