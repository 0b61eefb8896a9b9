"""The model interface the pipeline engine uses: detectors and classifiers, whatever runs them.

Deliberately torch-free: a worker loads ONNX Runtime models (we measured 140 MB PSS per worker
against 789 MB on the torch path, bench/results/README.md). The Ultralytics backend is there for comparison and
debugging and imports torch only when chosen. Both backends take BGR uint8 images (OpenCV's
convention) and give the same results (tests/pipeline/test_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..imaging import Image

Backend = Literal["onnx", "ultralytics"]
BACKENDS: tuple[Backend, ...] = ("onnx", "ultralytics")
# The command that makes the .onnx files of an extracted archive (run it as a subprocess: it imports torch).
EXPORT_MODULE = "detector_worker.pipeline.export"


class ModelLoadError(Exception):
    """A model file is missing, stale, corrupt or not the kind of model that was asked for."""


@dataclass(frozen=True, slots=True)
class DetectedObject:
    """One box the detector found (not a message: the bus sends `DisplayDetection`)."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in input-image pixels, clipped to the image
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Classification:
    label: str  # the top-1 class
    confidence: float  # its probability
    scores: dict[str, float]  # every class's probability (they sum to 1)


class Detector(Protocol):
    labels: tuple[str, ...]

    def detect(self, image: Image, min_confidence: float) -> list[DetectedObject]:
        """Detections with confidence > min_confidence, best first, after class-aware NMS."""
        ...


class Classifier(Protocol):
    labels: tuple[str, ...]

    def classify(self, image: Image) -> Classification: ...


def onnx_path(pt: Path) -> Path:
    """Where the ONNX export of a `.pt` model lives: beside it, same stem."""
    return pt.with_suffix(".onnx")


def _checked_onnx(path: Path) -> Path:
    onnx = onnx_path(path)
    if not onnx.is_file():
        raise ModelLoadError(
            f"{onnx} is missing: the onnx backend runs the ONNX export of {path.name}; make it with "
            f"`python -m {EXPORT_MODULE} {path.parent}` (it imports torch, so run it as a separate process)")
    # A .pt replaced after its export would silently run the old model.
    if path.is_file() and onnx.stat().st_mtime < path.stat().st_mtime:
        raise ModelLoadError(f"{onnx} is older than {path.name}: re-export with `python -m {EXPORT_MODULE} "
                             f"{path.parent}`")
    return onnx


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def load_detector(path: Path, *, backend: Backend = "onnx", threads: int = 1,
                  providers: Sequence[str] | None = None, gpu_memory_limit_bytes: int | None = None) -> Detector:
    """Load the detector whose `.pt` is `path` (the pipeline's modelFile).

    onnx: runs `path`'s sibling `.onnx` with ONNX Runtime on `threads` intra-op threads; `providers`
    asks for e.g. ["CUDAExecutionProvider"] (used when available, with `gpu_memory_limit_bytes`),
    CPU otherwise. ultralytics: runs the `.pt` through `ultralytics.YOLO` (imports torch).
    Raises ModelLoadError for a missing, stale, corrupt or non-detection model.
    """
    _check_backend(backend)
    if backend == "ultralytics":
        from .ultralytics_backend import UltralyticsDetector

        return UltralyticsDetector(path, threads=threads)
    from .onnx_backend import OnnxDetector

    return OnnxDetector(_checked_onnx(path), threads=threads, providers=providers,
                        gpu_memory_limit_bytes=gpu_memory_limit_bytes)


def load_classifier(path: Path, *, backend: Backend = "onnx", threads: int = 1,
                    providers: Sequence[str] | None = None, gpu_memory_limit_bytes: int | None = None) -> Classifier:
    """Load the classifier whose `.pt` is `path`; same backends and errors as `load_detector`."""
    _check_backend(backend)
    if backend == "ultralytics":
        from .ultralytics_backend import UltralyticsClassifier

        return UltralyticsClassifier(path, threads=threads)
    from .onnx_backend import OnnxClassifier

    return OnnxClassifier(_checked_onnx(path), threads=threads, providers=providers,
                          gpu_memory_limit_bytes=gpu_memory_limit_bytes)


def classification_from_probabilities(labels: Sequence[str], probabilities: Sequence[float]) -> Classification:
    """Shared by both backends so that ties and rounding resolve the same way."""
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    best = max(range(len(labels)), key=lambda i: probabilities[i])
    return Classification(labels[best], float(probabilities[best]),
                          {label: float(p) for label, p in zip(labels, probabilities, strict=True)})
