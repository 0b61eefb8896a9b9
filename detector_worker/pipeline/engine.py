"""Running a pipeline tree on frames: detector → stable vehicles → classifier branches.

`PipelineInstance` holds the models of one archive and the thread pool for its parallel
branches; it belongs to one worker (one camera) and nothing in it is shared further.
`Lane` is one (pipeline, crop) view of the camera: its own tracker and its own memory of which
vehicles already had their detection cycle. Several displays with the same pipeline and crop
share a lane, so one vehicle visit is one cycle however many displays watch it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config.spec import MotionSettings
from ..imaging import Image, crop, resize_to
from ..video.motion import GateStats, MotionGate, MotionParams
from .models import Classifier, DetectedObject, Detector, load_classifier, load_detector
from .schema import Node, PipelineConfig, ResultRole, Tracking
from .tracking import Box, IouTracker, Track, iou

Backend = Literal["onnx", "ultralytics"]
REACQUIRE_S = 10.0  # a track re-born in place of a vehicle lost this recently is that vehicle


@dataclass(frozen=True)
class BranchResult:
    model_id: str
    label: str | None  # None when below the branch's minConfidence
    confidence: float
    role: ResultRole | None = None  # the node's result role (`PipelineConfig.result_roles`)

    @property
    def fields(self) -> dict[str, object]:
        """What templates can read as `{<modelId>.<field>}`; `brand`/`body_type` alias `class`
        for the branch with that result role."""
        out: dict[str, object] = {"class": self.label, "label": self.label, "confidence": round(self.confidence, 4)}
        if self.role is not None:
            out[self.role] = self.label
        return out


@dataclass
class VehicleCycle:
    """One detection cycle: a stable vehicle, its detections, crops and branch results."""

    track_id: int
    captured_at: float
    vehicle_class: str
    detections: dict[str, DetectedObject]  # best detection of each class belonging to this vehicle
    branches: dict[str, BranchResult]
    crops: dict[str, Image]  # region class → pixels, kept for the image actions until written
    inference_ms: float

    def field_values(self) -> dict[str, dict[str, object]]:
        return {model_id: result.fields for model_id, result in self.branches.items()}

    def with_role(self, role: ResultRole) -> BranchResult | None:
        """The branch result with that result role (the first, for older archives guessing two)."""
        return next((b for b in self.branches.values() if b.role == role), None)


@dataclass
class _Fired:
    box: Box
    last_seen: float


@dataclass
class LaneStats:
    inference_ms: float = 0.0  # last frame's detector + branches time
    frames: int = 0  # frames the lane saw
    detected: int = 0  # frames the detector ran on (all of them without motion gating)


class PipelineInstance:
    def __init__(self, config: PipelineConfig, model_dir: Path, *, backend: Backend = "onnx", threads: int = 1,
                 providers: list[str] | None = None, gpu_memory_limit_bytes: int | None = None,
                 log: logging.Logger | None = None) -> None:
        self.config = config
        self.root = config.pipeline
        self.log = log or logging.getLogger(__name__)
        options = {"backend": backend, "threads": threads, "providers": providers,
                   "gpu_memory_limit_bytes": gpu_memory_limit_bytes}
        self.detector: Detector = load_detector(model_dir / self.root.model_file, **options)  # type: ignore[arg-type]
        self.classifiers: dict[str, Classifier] = {}
        for node in self.root.walk()[1:]:
            self.classifiers[node.model_id] = load_classifier(model_dir / node.model_file,
                                                              **options)  # type: ignore[arg-type]
        self.roles = {model_id: role for model_id, (role, _) in config.result_roles().items()}
        guessed = [f"{model_id} (as {role!r})" for model_id, (role, was_guessed) in config.result_roles().items()
                   if was_guessed]
        if guessed:
            self.log.warning("pipeline %s: result role guessed from the modelId of %s; add \"resultRole\": "
                             "\"brand\" or \"body_type\" to that node in pipeline.json, so a renamed model keeps "
                             "its role", self.root.model_id, ", ".join(guessed))
        parallel = sum(1 for n in self.root.walk() if n.parallel)
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="branch")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def detect(self, image: Image) -> list[DetectedObject]:
        floor = self.root.confidence_floor
        triggers = set(self.root.trigger_classes)
        return [d for d in self.detector.detect(image, floor) if d.label in triggers and d.confidence >= floor]

    def run_branches(self, frame: Image, detections: dict[str, DetectedObject]) -> dict[str, BranchResult]:
        """Run every branch whose trigger classes fired, on its crop; parallel ones concurrently."""
        results: dict[str, BranchResult] = {}
        self._run_children(self.root, frame, detections, results)
        return results

    def _run_children(self, node: Node, frame: Image, detections: dict[str, DetectedObject],
                      results: dict[str, BranchResult]) -> None:
        pending: list[tuple[Node, Future[BranchResult | None]]] = []
        for branch in node.branches:
            if not any(c in detections for c in branch.trigger_classes):
                continue
            if branch.parallel:
                pending.append((branch, self._pool.submit(self._classify, branch, frame, detections)))
            else:
                self._record(branch, self._classify(branch, frame, detections), frame, detections, results)
        for branch, future in pending:
            self._record(branch, future.result(), frame, detections, results)

    def _record(self, branch: Node, result: BranchResult | None, frame: Image, detections: dict[str, DetectedObject],
                results: dict[str, BranchResult]) -> None:
        if result is None:
            return
        results[branch.model_id] = result
        if result.label is not None:
            self._run_children(branch, frame, detections, results)

    def _classify(self, branch: Node, frame: Image, detections: dict[str, DetectedObject]) -> BranchResult | None:
        region_class = branch.crop_class if branch.crop else None
        if region_class is not None and region_class not in detections:
            return None
        patch = crop(frame, detections[region_class].box) if region_class else frame
        if patch.size == 0:
            return None
        if branch.resize_target is not None:
            patch = resize_to(patch, branch.resize_target)
        result = self.classifiers[branch.model_id].classify(np.ascontiguousarray(patch))
        label = result.label if result.confidence >= branch.confidence_floor else None
        return BranchResult(branch.model_id, label, result.confidence, self.roles.get(branch.model_id))


def _contains(outer: Box, inner: Box) -> float:
    """Share of `inner` inside `outer`."""
    ix = max(0.0, min(outer[2], inner[2]) - max(outer[0], inner[0]))
    iy = max(0.0, min(outer[3], inner[3]) - max(outer[1], inner[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return ix * iy / area if area > 0 else 0.0


@dataclass
class Lane:
    pipeline: PipelineInstance
    crop_box: tuple[int, int, int, int] | None = None
    stats: LaneStats = field(default_factory=LaneStats)
    motion: MotionSettings | None = None  # None or enabled=False: the detector runs on every frame

    def __post_init__(self) -> None:
        root = self.pipeline.root
        stability = root.stability_threshold or 5
        tracking = root.tracking or Tracking()
        self.tracker = IouTracker(match_iou=tracking.iou_threshold, max_missed=tracking.max_age,
                                  stability_frames=stability)
        self.vehicle_class = "Car" if "Car" in root.trigger_classes else root.trigger_classes[0]
        self._fired: dict[int, _Fired] = {}
        self.gate: MotionGate | None = None
        self.set_motion(self.motion)

    def set_motion(self, motion: MotionSettings | None) -> None:
        """(Re)configure motion gating; a changed setting starts a fresh motion background."""
        self.motion = motion
        if motion is None or not motion.enabled:
            self.gate = None
            return
        params = MotionParams(threshold=motion.threshold, contour_area=motion.contour_area,
                              frame_height=motion.frame_height, frame_alpha=motion.frame_alpha,
                              lightning_threshold=motion.lightning_threshold)
        self.gate = MotionGate(params, self.crop_box, recheck_s=motion.recheck_s,
                               idle_recheck_s=motion.idle_recheck_s)

    @property
    def gate_stats(self) -> GateStats | None:
        return self.gate.stats if self.gate is not None else None

    def motion_boxes(self) -> list[tuple[int, int, int, int]]:
        """The last frame's motion boxes (full-frame pixels), for the dashboard's debug view."""
        return list(self.gate.boxes) if self.gate is not None else []

    def process(self, frame: Image, captured_at: float, now: float | None = None) -> list[VehicleCycle]:
        """Detect, track, and run a cycle for each vehicle that just became stable.

        `now`: the lane's clock in seconds (re-checks, re-acquisition); time.monotonic() if None,
        a frame's timestamp when replaying footage offline."""
        start = time.perf_counter()
        now = time.monotonic() if now is None else now
        self.stats.frames += 1
        if self.gate is not None:
            alive = self.tracker.tracks
            pending = any(t.track_id not in self._fired for t in alive)
            stationary = [t.box for t in alive if t.track_id in self._fired]
            if not self.gate.decide(frame, now, pending=pending, stationary=stationary, tracked=bool(alive)):
                self.stats.inference_ms = (time.perf_counter() - start) * 1000
                return []
        self.stats.detected += 1
        ox, oy = 0, 0
        view = frame
        if self.crop_box is not None:
            ox, oy = self.crop_box[0], self.crop_box[1]
            view = crop(frame, self.crop_box)
        detections = [
            DetectedObject((d.box[0] + ox, d.box[1] + oy, d.box[2] + ox, d.box[3] + oy), d.label, d.confidence)
            for d in self.pipeline.detect(view)
        ] if view.size else []
        vehicles = [d for d in detections if d.label == self.vehicle_class]
        tracks = self.tracker.update([(d.box, d.confidence) for d in vehicles])
        cycles: list[VehicleCycle] = []
        for track in tracks:
            if track.track_id in self._fired:
                self._fired[track.track_id] = _Fired(track.box, now)
                continue
            if track.hits == 1 and self._reacquired(track, now):
                continue
            if not self.tracker.is_stable(track):
                continue
            own = self._belonging(track, detections)
            root = self.pipeline.root
            if root.multi_class and root.expected_classes and not all(c in own for c in root.expected_classes):
                continue  # e.g. the front is not visible yet: try again on the next frame
            self._fired[track.track_id] = _Fired(track.box, now)
            branches = self.pipeline.run_branches(frame, own)
            crops = {cls: crop(frame, det.box).copy() for cls, det in own.items()}
            cycles.append(VehicleCycle(track.track_id, captured_at, self.vehicle_class, own, branches, crops,
                                       (time.perf_counter() - start) * 1000))
            track.extra["labels"] = [b.label for b in branches.values() if b.label and b.role]
        self._forget(now)
        self.stats.inference_ms = (time.perf_counter() - start) * 1000
        return cycles

    def overlay(self) -> list[tuple[Box, int, float, bool, list[str]]]:
        """The tracks seen in the last frame, for the dashboard: box, id, stillness progress (1.0 =
        stable), whether its cycle ran, and its labels once classified."""
        tracker = self.tracker
        return [(t.box, t.track_id, min(1.0, t.still_frames / max(1, tracker.stability_frames)),
                 t.track_id in self._fired, list(t.extra.get("labels", [])))  # type: ignore[call-overload]
                for t in tracker.tracks if t.missed == 0]

    def _belonging(self, track: Track, detections: list[DetectedObject]) -> dict[str, DetectedObject]:
        """The best detection of each class that lies inside this vehicle (the vehicle itself included)."""
        own = {self.vehicle_class: DetectedObject(track.box, self.vehicle_class, track.confidence)}
        for d in sorted(detections, key=lambda d: -d.confidence):
            if d.label != self.vehicle_class and d.label not in own and _contains(track.box, d.box) >= 0.6:
                own[d.label] = d
        return own

    def _reacquired(self, track: Track, now: float) -> bool:
        """A track born where a fired vehicle was lost moments ago is that vehicle again."""
        for fired in self._fired.values():
            if now - fired.last_seen <= REACQUIRE_S and iou(fired.box, track.box) >= 0.7:
                self._fired[track.track_id] = _Fired(track.box, now)
                return True
        return False

    def _forget(self, now: float) -> None:
        for tid in [t for t, f in self._fired.items() if not self.tracker.alive(t) and now - f.last_seen > REACQUIRE_S]:
            del self._fired[tid]
