"""The same interface through `ultralytics.YOLO(.pt)`: the reference the ONNX backend is checked against.

Importing this module imports torch and Ultralytics (~0.5 GB per process), so `models` imports it
only when the ultralytics backend is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..imaging import Image
from ..synthetic.offline import prepare_ultralytics
from .models import Classification, DetectedObject, ModelLoadError, classification_from_probabilities

prepare_ultralytics()  # offline, project-local settings: before the first `import ultralytics`

from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import torch_utils  # noqa: E402

# Through importlib so that mypy does not analyse all of torch (+15 s on a cold cache) for one call.
torch: Any = importlib.import_module("torch")


def _set_threads(threads: int) -> None:
    """Ultralytics calls torch.set_num_threads(NUM_THREADS = cpu_count - 1) on a model's first predict."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def _load(path: Path, task: str, threads: int) -> tuple[Any, tuple[str, ...], int | list[int]]:
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing")
    _set_threads(threads)
    try:
        model = YOLO(str(path))
    except Exception as e:  # torch.load / Ultralytics raise many kinds for a bad checkpoint
        raise ModelLoadError(f"cannot load {path}: {e}") from e
    if model.task != task:
        raise ModelLoadError(f"{path} is a {model.task} model, expected {task}")
    names = model.names
    labels = tuple(str(names[i]) for i in range(len(names)))
    # Predict at the size the model was trained at, as the ONNX export does.
    imgsz = (getattr(model, "ckpt", None) or {}).get("train_args", {}).get("imgsz") or model.overrides.get("imgsz")
    if imgsz is None:
        raise ModelLoadError(f"{path} does not say which imgsz it was trained at")
    return model, labels, imgsz


class UltralyticsDetector:
    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self._model, self.labels, self._imgsz = _load(path, "detect", threads)

    def detect(self, image: Image, min_confidence: float) -> list[DetectedObject]:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {min_confidence}")
        # rect=False: YOLO.predict defaults to a minimum-rectangle letterbox (320x256 for 4:3) on .pt models;
        # the fixed-size ONNX export needs the full square, and the two must see the same input. Padding
        # differs by 32 px there, which moved edge-cut vehicles' confidence by up to 0.08.
        result = self._model.predict(image, imgsz=self._imgsz, conf=min_confidence, rect=False, verbose=False)[0]
        boxes = result.boxes
        return [DetectedObject((float(b[0]), float(b[1]), float(b[2]), float(b[3])), self.labels[int(c)], float(p))
                for b, c, p in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True)]


class UltralyticsClassifier:
    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self._model, self.labels, self._imgsz = _load(path, "classify", threads)

    def classify(self, image: Image) -> Classification:
        if image.size == 0:
            raise ValueError("cannot classify an empty image")
        probs = self._model.predict(image, imgsz=self._imgsz, verbose=False)[0].probs
        return classification_from_probabilities(self.labels, probs.data.tolist())
