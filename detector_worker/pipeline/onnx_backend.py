"""ONNX Runtime detectors and classifiers for models exported by Ultralytics (no torch in the process).

The exports are fixed-size (dynamic=False) and carry Ultralytics' metadata: `task`, `names`
(class index → label) and `imgsz` ([h, w]), so the ONNX file alone says how to run it.
Pre/post-processing is in `preprocess` and matches Ultralytics' own.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..imaging import Image
from . import preprocess
from .models import Classification, DetectedObject, ModelLoadError, classification_from_probabilities

log = logging.getLogger(__name__)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def session_options(threads: int) -> ort.SessionOptions:
    """One worker = one camera = `threads` cores at most: no inter-op pool, no spinning threads.

    Spinning intra-op threads busy-wait between calls; with many workers on few cores that steals
    the CPU other workers need, so it is switched off.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers etc. on every load
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No pre-planned block for all of a run's intermediate tensors: they come from the session's
    # arena one by one, reusing what earlier nodes freed. −3 MB RSS for the stand-in's three sessions
    # (issue #14), CPU time per inference unchanged (±1 %). The arena itself stays: turning it off
    # too kept 4 MB more (freed blocks stay in malloc's heap) and ran 3 % slower.
    options.enable_mem_pattern = False
    return options


def provider_list(providers: Sequence[str] | None, gpu_memory_limit_bytes: int | None) -> list[Any]:
    """The requested providers that this onnxruntime build has (CUDA with its memory cap), then CPU."""
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    for name in providers or ():
        if name == CPU:
            continue
        if name not in available:
            log.warning("%s requested but not available in this onnxruntime build; using the CPU", name)
            continue
        if name == CUDA and gpu_memory_limit_bytes is not None:
            chosen.append((CUDA, {"gpu_mem_limit": str(int(gpu_memory_limit_bytes))}))
        else:
            chosen.append(name)
    chosen.append(CPU)
    return chosen


def _parse(value: str | None, what: str, path: Path) -> Any:
    if value is None:
        raise ModelLoadError(f"{path} has no '{what}' metadata: not an Ultralytics ONNX export")
    try:
        return ast.literal_eval(value)  # Ultralytics writes Python reprs (dicts, lists), not JSON
    except (ValueError, SyntaxError) as e:
        raise ModelLoadError(f"{path}: unreadable '{what}' metadata {value!r}") from e


class _OnnxModel:
    """An InferenceSession plus what its metadata says: task, labels and the (h, w) input size."""

    def __init__(self, path: Path, task: str, threads: int, providers: Sequence[str] | None,
                 gpu_memory_limit_bytes: int | None) -> None:
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                                providers=provider_list(providers, gpu_memory_limit_bytes))
        except Exception as e:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ModelLoadError(f"cannot load {path}: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        found = meta.get("task")
        if found != task:
            raise ModelLoadError(f"{path} is a {found or 'non-Ultralytics'} model, expected {task}")
        names = _parse(meta.get("names"), "names", path)
        imgsz = _parse(meta.get("imgsz"), "imgsz", path)
        if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
            raise ModelLoadError(f"{path}: 'names' metadata is not {{0: label, 1: label, ...}}: {names!r}")
        self.labels: tuple[str, ...] = tuple(str(names[i]) for i in range(len(names)))
        self.imgsz: tuple[int, int] = (int(imgsz[0]), int(imgsz[1]))
        inputs = self.session.get_inputs()
        self.input_name: str = inputs[0].name
        if list(inputs[0].shape[2:]) != list(self.imgsz):
            raise ModelLoadError(f"{path}: input shape {inputs[0].shape} does not match imgsz {self.imgsz}; "
                                 "export with dynamic=False")
        self.path = path

    def run(self, tensor: preprocess.Tensor) -> preprocess.Tensor:
        (output,) = self.session.run(None, {self.input_name: tensor})[:1]
        return np.asarray(output, dtype=np.float32)


class OnnxDetector:
    def __init__(self, path: Path, *, threads: int = 1, providers: Sequence[str] | None = None,
                 gpu_memory_limit_bytes: int | None = None) -> None:
        self._model = _OnnxModel(path, "detect", threads, providers, gpu_memory_limit_bytes)
        self.labels = self._model.labels
        out = self._model.session.get_outputs()[0].shape
        if len(out) != 3 or out[1] != 4 + len(self.labels):
            raise ModelLoadError(f"{path}: output shape {out} is not (1, 4+{len(self.labels)}, N): export without nms")

    def detect(self, image: Image, min_confidence: float) -> list[DetectedObject]:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {min_confidence}")
        tensor, box = preprocess.letterbox(image, self._model.imgsz)
        found = preprocess.decode(self._model.run(tensor), min_confidence, box, image.shape[:2])
        return [DetectedObject(xyxy, self.labels[cls], conf) for xyxy, cls, conf in found]


class OnnxClassifier:
    def __init__(self, path: Path, *, threads: int = 1, providers: Sequence[str] | None = None,
                 gpu_memory_limit_bytes: int | None = None) -> None:
        self._model = _OnnxModel(path, "classify", threads, providers, gpu_memory_limit_bytes)
        self.labels = self._model.labels

    def classify(self, image: Image) -> Classification:
        if image.size == 0:
            raise ValueError("cannot classify an empty image")
        # The export ends in Softmax (Ultralytics' Classify head in export mode): these are probabilities.
        probabilities = self._model.run(preprocess.classify_input(image, self._model.imgsz))[0]
        return classification_from_probabilities(self.labels, probabilities.tolist())
