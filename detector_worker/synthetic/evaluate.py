"""Accuracy of the stand-in models on a held-out synthetic set (a seed never trained on).

Uses Ultralytics (and so torch): for `make models`, `make bench` and tests only, never a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import BODY_TYPE_NAMES, BRAND_NAMES, DETECTOR_CLASSES
from .datasets import VAL_OFFSET, classification_crops, write_detection_set
from .render import Image
from .standin import BODY, BRAND, DETECTOR

TARGET = 0.95  # what the committed models must reach on every figure


@dataclass
class Report:
    seed: int
    detector_images: int
    detector_ap50: dict[str, float]
    detector_map50_95: float
    classifier_crops: int
    brand_top1: float
    body_top1: float
    brand_per_class: dict[str, float] = field(default_factory=dict)
    body_per_class: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        figures = [*self.detector_ap50.values(), self.brand_top1, self.body_top1]
        return len(self.detector_ap50) == len(DETECTOR_CLASSES) and all(f >= TARGET for f in figures)


def detector_ap50(weights: Path, work: Path, seed: int, n_images: int, imgsz: int,
                  workers: int = 1) -> tuple[dict[str, float], float]:
    """Per-class mAP50 and overall mAP50-95 of the detector on `n_images` fresh frames."""
    from ultralytics import YOLO

    data = write_detection_set(work / "det", seed, 0, n_images, workers)
    text = data.read_text().replace("train: images/train", "train: images/val")  # val needs no train split
    data.write_text(text)
    metrics = YOLO(str(weights)).val(data=str(data), imgsz=imgsz, batch=16, device="cpu", plots=False,
                                     verbose=False, project=str(work / "val"), name="det", exist_ok=True,
                                     workers=0)
    ap50 = {DETECTOR_CLASSES[int(c)]: float(metrics.box.ap50[i]) for i, c in enumerate(metrics.ap_class_index)}
    return ap50, float(metrics.box.map)


def classify(weights: Path, crops: list[Image], imgsz: int) -> list[str]:
    """Top-1 class names for already resized crops, as the pipeline would classify them."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    names: list[str] = []
    for start in range(0, len(crops), 64):
        for result in model.predict(crops[start:start + 64], imgsz=imgsz, device="cpu", verbose=False):
            names.append(result.names[int(result.probs.top1)])
    return names


def _top1(predicted: list[str], truth: list[str], classes: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    p, t = np.array(predicted), np.array(truth)
    per_class = {c: float(np.mean(p[t == c] == c)) for c in classes if np.any(t == c)}
    return float(np.mean(p == t)), per_class


def evaluate_models(models_dir: Path, work: Path, seed: int, n_det: int, n_cls: int, *, det_imgsz: int,
                    brand_size: int, body_size: int, workers: int = 1) -> Report:
    ap50, map50_95 = detector_ap50(models_dir / f"{DETECTOR}.pt", work, seed, n_det, det_imgsz, workers)
    fronts: list[Image] = []
    cars: list[Image] = []
    brands: list[str] = []
    bodies: list[str] = []
    for i in range(n_cls):
        crops = classification_crops(seed, VAL_OFFSET + i, brand_size, body_size)
        if crops is not None:
            fronts.append(crops[0])
            brands.append(crops[1])
            cars.append(crops[2])
            bodies.append(crops[3])
    brand_top1, brand_pc = _top1(classify(models_dir / f"{BRAND}.pt", fronts, brand_size), brands, BRAND_NAMES)
    body_top1, body_pc = _top1(classify(models_dir / f"{BODY}.pt", cars, body_size), bodies, BODY_TYPE_NAMES)
    return Report(seed, n_det, ap50, map50_95, len(fronts), brand_top1, body_top1, brand_pc, body_pc)


def format_report(report: Report, train_seconds: dict[str, float] | None = None) -> str:
    ok = "yes" if report.passed else "NO"
    lines = [
        f"# Stand-in model accuracy (held-out seed {report.seed}, target >= {TARGET})",
        "",
        "| model | figure | value |",
        "|---|---|---|",
    ]
    for cls, ap in report.detector_ap50.items():
        lines.append(f"| {DETECTOR} | mAP50 `{cls}` ({report.detector_images} frames) | {ap:.3f} |")
    lines.append(f"| {DETECTOR} | mAP50-95 (all) | {report.detector_map50_95:.3f} |")
    lines.append(f"| {BRAND} | top-1 ({report.classifier_crops} crops) | {report.brand_top1:.3f} |")
    lines.append(f"| {BODY} | top-1 ({report.classifier_crops} crops) | {report.body_top1:.3f} |")
    lines += ["", "Per class top-1:", ""]
    lines.append("- brand: " + ", ".join(f"{k} {v:.2f}" for k, v in report.brand_per_class.items()))
    lines.append("- body type: " + ", ".join(f"{k} {v:.2f}" for k, v in report.body_per_class.items()))
    if train_seconds:
        lines += ["", "Training time on this machine (CPU): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in train_seconds.items())]
    lines += ["", f"All targets met: {ok}", ""]
    return "\n".join(lines)
