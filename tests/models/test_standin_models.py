"""The committed stand-in models and archive: shape of the archive, accuracy on fresh data."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detector_worker.imaging import crop, resize_to
from detector_worker.synthetic.evaluate import evaluate_models, format_report
from detector_worker.synthetic.standin import ARCHIVE_NAME, BODY, BRAND, DETECTOR
from tests.conftest import MODELS

ARCHIVE = MODELS / ARCHIVE_NAME


def read_pipeline(archive: Path) -> dict[str, Any]:
    with zipfile.ZipFile(archive) as zf:
        return dict(json.loads(zf.read("pipeline.json")))


def branch(pipeline: dict[str, Any], model_id: str) -> dict[str, Any]:
    return next(b for b in pipeline["pipeline"]["branches"] if b["modelId"] == model_id)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_archive_follows_the_backend_format() -> None:
    with zipfile.ZipFile(ARCHIVE) as zf:
        names = set(zf.namelist())
        assert zf.testzip() is None
    # each model's .onnx beside its .pt: workers run ONNX only and never unpickle a .pt
    assert names == {"pipeline.json", *(f"{m}{ext}" for m in (DETECTOR, BRAND, BODY) for ext in (".pt", ".onnx"))}
    config = read_pipeline(ARCHIVE)
    assert set(config) == {"redis", "postgresql", "pipeline"}
    root = config["pipeline"]
    assert (root["modelId"], root["modelFile"], root["crop"]) == (DETECTOR, f"{DETECTOR}.pt", False)
    assert root["expectedClasses"] == root["triggerClasses"] == ["Car", "Frontal"]
    assert {a["type"] for a in root["actions"]} == {"redis_save_image", "redis_publish"}
    (combined,) = root["parallelActions"]
    assert combined["type"] == "postgresql_update_combined"
    assert combined["waitForBranches"] == [BRAND, BODY]
    for model_id, crop_class in ((BRAND, "Frontal"), (BODY, "Car")):
        node = branch(config, model_id)
        assert node["crop"] is True and node["cropClass"] == crop_class
        assert node["triggerClasses"] == [crop_class] and node["branches"] == []
        assert len(node["resizeTarget"]) == 2


@pytest.mark.slow
def test_committed_models_reach_the_targets_on_a_fresh_held_out_set(tmp_path: Path) -> None:
    config = read_pipeline(ARCHIVE)
    report = evaluate_models(MODELS, tmp_path, seed=5151, n_det=120, n_cls=400, det_imgsz=320,
                             brand_size=branch(config, BRAND)["resizeTarget"][0],
                             body_size=branch(config, BODY)["resizeTarget"][0])
    print(format_report(report))
    assert report.passed, format_report(report)


@pytest.mark.slow
def test_archive_models_find_the_vehicles_of_a_fresh_clip(tmp_path: Path, camera_clips: dict[str, Path]) -> None:
    """Load the archive's .pt files with Ultralytics and run them like the pipeline does."""
    from ultralytics import YOLO

    with zipfile.ZipFile(ARCHIVE) as zf:
        zf.extractall(tmp_path)
    config = read_pipeline(ARCHIVE)
    detector = YOLO(str(tmp_path / f"{DETECTOR}.pt"))
    classifiers = {m: (YOLO(str(tmp_path / f"{m}.pt")), branch(config, m)) for m in (BRAND, BODY)}
    min_conf = config["pipeline"]["minConfidence"]

    for name, video in camera_clips.items():
        truth = json.loads(video.with_suffix(".json").read_text())
        cap = cv2.VideoCapture(str(video))
        frames = []
        while (read := cap.read())[0]:
            frames.append(read[1])
        assert len(frames) == truth["n_frames"]

        empty = [i for i, objs in enumerate(truth["frames"]) if not objs][::5]
        false_alarms = sum(
            bool(len(detector.predict(frames[i], imgsz=320, conf=min_conf, verbose=False)[0].boxes)) for i in empty
        )
        assert false_alarms <= 0.05 * len(empty), f"{name}: detections in {false_alarms}/{len(empty)} empty frames"

        for vehicle in truth["vehicles"]:
            if vehicle["kind"] != "stop":
                continue
            votes: dict[str, Counter[str]] = {BRAND: Counter(), BODY: Counter()}
            sampled = range(vehicle["stopped_from"], vehicle["stopped_to"] + 1, 6)
            found = 0
            for i in sampled:
                (gt,) = [o for o in truth["frames"][i] if o["vehicle_id"] == vehicle["vehicle_id"]]
                result = detector.predict(frames[i], imgsz=320, conf=min_conf, verbose=False)[0]
                boxes = {"Car": [], "Frontal": []}  # type: dict[str, list[tuple[float, ...]]]
                for xyxy, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), strict=True):
                    boxes[result.names[int(cls)]].append(tuple(xyxy))
                best = {c: max((iou(b, tuple(gt[k])) for b in boxes[c]), default=0.0)
                        for c, k in (("Car", "car_box"), ("Frontal", "frontal_box"))}
                if min(best.values()) < 0.5:
                    continue
                found += 1
                for model_id, (model, node) in classifiers.items():
                    region = max(boxes[node["cropClass"]], key=lambda b: iou(b, tuple(gt[
                        "frontal_box" if node["cropClass"] == "Frontal" else "car_box"])))
                    patch = resize_to(crop(frames[i], region), tuple(node["resizeTarget"]))
                    probs = model.predict(patch, imgsz=node["resizeTarget"][0], verbose=False)[0].probs
                    votes[model_id][model.names[int(probs.top1)]] += 1
            assert found >= 0.9 * len(sampled), f"{name} vehicle {vehicle['vehicle_id']}: {found}/{len(sampled)}"
            assert votes[BRAND].most_common(1)[0][0] == vehicle["brand"], (name, vehicle, votes)
            assert votes[BODY].most_common(1)[0][0] == vehicle["body_type"], (name, vehicle, votes)
            assert np.mean([votes[BRAND][vehicle["brand"]], votes[BODY][vehicle["body_type"]]]) >= 0.9 * found
