"""ONNX Runtime and Ultralytics give the same detections and classifications on the same images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector_worker.imaging import Image
from detector_worker.pipeline.models import DetectedObject, load_classifier, load_detector
from detector_worker.synthetic.datasets import classification_crops, render_sample
from detector_worker.synthetic.standin import BODY, BRAND, DETECTOR
from tests.pipeline.conftest import crop_sizes

FRAME_SEED, CROP_SEED = 4242, 4343  # never trained on (training 1000, held-out 2000)
CONF_TOLERANCE = 0.02


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def unmatched(ours: list[DetectedObject], theirs: list[DetectedObject], threshold: float) -> list[str]:
    """Detections in `ours` with no same-label twin in `theirs` (IoU >= 0.9, confidence within 0.02).

    A detection within 0.02 of the threshold may be missing on the other side: float differences
    can put it on either side of the threshold.
    """
    problems = []
    for d in ours:
        twins = [t for t in theirs if t.label == d.label]
        best = max(twins, key=lambda t: iou(d.box, t.box), default=None)
        if best is not None and iou(d.box, best.box) >= 0.9:
            if abs(best.confidence - d.confidence) > CONF_TOLERANCE:
                problems.append(f"{d} vs {best}: confidence differs")
        elif d.confidence > threshold + CONF_TOLERANCE:
            problems.append(f"{d}: no match in {theirs}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [0.25, 0.6])  # Ultralytics' default; the stand-in pipeline's minConfidence
def test_detector_backends_agree(exported_models: Path, threshold: float) -> None:
    onnx = load_detector(exported_models / f"{DETECTOR}.pt")
    ref = load_detector(exported_models / f"{DETECTOR}.pt", backend="ultralytics")
    assert onnx.labels == ref.labels == ("Car", "Frontal")
    compared, worst_iou, worst_conf = 0, 1.0, 0.0
    for i in range(30):
        frame = render_sample(FRAME_SEED, i).image
        a, b = ref.detect(frame, threshold), onnx.detect(frame, threshold)
        problems = unmatched(a, b, threshold) + unmatched(b, a, threshold)
        assert not problems, f"frame {i}: " + "; ".join(problems)
        for d in a:
            twin = max((t for t in b if t.label == d.label), key=lambda t: iou(d.box, t.box), default=None)
            if twin is not None:
                compared += 1
                worst_iou = min(worst_iou, iou(d.box, twin.box))
                worst_conf = max(worst_conf, abs(d.confidence - twin.confidence))
    print(f"threshold {threshold}: {compared} detections compared, min IoU {worst_iou:.6f}, "
          f"max confidence diff {worst_conf:.2e}")
    assert compared >= 20, f"only {compared} detections in 30 frames: are the models in models/ trained?"


def classifier_inputs(brand: bool) -> list[Image]:
    """~50 crops as the pipeline feeds them (resized to resizeTarget), plus odd sizes for the resize path."""
    brand_size, body_size = crop_sizes()
    out: list[Image] = []
    for i in range(60):
        crops = classification_crops(CROP_SEED, i, brand_size, body_size)
        if crops is None:
            continue
        patch = crops[0] if brand else crops[2]
        out.append(patch)
        if i % 4 == 0:  # shrink, enlarge and make non-square: exercises the antialiased resize
            out.append(np.asarray(cv2.resize(patch, (patch.shape[1] * 2 + 7, patch.shape[0] + 5)), np.uint8))
            out.append(np.ascontiguousarray(patch[3:-9, 5:]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [BRAND, BODY])
def test_classifier_backends_agree(exported_models: Path, model_id: str) -> None:
    onnx = load_classifier(exported_models / f"{model_id}.pt")
    ref = load_classifier(exported_models / f"{model_id}.pt", backend="ultralytics")
    assert onnx.labels == ref.labels
    inputs = classifier_inputs(brand=model_id == BRAND)
    assert len(inputs) >= 50
    worst = 0.0
    for k, image in enumerate(inputs):
        a, b = ref.classify(image), onnx.classify(image)
        assert a.label == b.label, f"input {k}: {a} vs {b}"
        assert abs(sum(b.scores.values()) - 1.0) < 1e-4  # the export ends in Softmax
        worst = max(worst, max(abs(a.scores[c] - b.scores[c]) for c in a.scores))
    print(f"{model_id}: {len(inputs)} inputs, max probability diff {worst:.2e}")
    assert worst <= 0.02
