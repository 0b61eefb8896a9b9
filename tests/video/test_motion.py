"""The motion detector (detector_worker/video/motion.py) on synthetic frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import MotionSettings, WorkerSpec
from detector_worker.video.motion import MotionDetector, MotionGate, MotionParams


def scene(rng: np.random.Generator, gain: float = 1.0, square: tuple[int, int] | None = None,
          h: int = 720, w: int = 1280) -> np.ndarray:
    base = np.full((h, w, 3), 110, np.float32)
    base[: h // 3] = 170  # a wall above the lane
    base[400:460, 100:1200] = 60  # a kerb
    if square is not None:
        x, y = square
        base[y:y + 120, x:x + 160] = (30, 40, 200)
    noisy = base * gain + rng.standard_normal(base.shape, dtype=np.float32) * 3
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_static_noisy_scene_has_no_motion() -> None:
    rng = np.random.default_rng(1)
    md = MotionDetector()
    boxes = [md.detect(scene(rng)) for _ in range(60)]
    assert not any(boxes[5:])


def test_moving_object_gives_boxes_in_full_frame_pixels() -> None:
    rng = np.random.default_rng(2)
    md = MotionDetector()
    for _ in range(10):
        md.detect(scene(rng))
    for x in range(300, 700, 40):
        boxes = md.detect(scene(rng, square=(x, 500)))
        assert boxes, x
        # the square (x..x+160, 500..620) lies inside the union of the boxes, give or take the small frame's pixels
        x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        assert x1 <= x + 10 and x2 >= x + 150 and y1 <= 510 and y2 >= 610, (x, boxes)
        assert x1 >= 0 and x2 <= 1280 and y1 >= 0 and y2 <= 720


def test_motion_outside_the_roi_is_ignored() -> None:
    rng = np.random.default_rng(3)
    md = MotionDetector(roi=(0, 300, 1280, 720))
    for _ in range(10):
        md.detect(scene(rng))
    for x in range(300, 700, 40):
        assert md.detect(scene(rng, square=(x, 60))) == []  # above the ROI
    boxes = md.detect(scene(rng, square=(500, 500)))
    assert boxes and all(b[1] >= 300 for b in boxes)


@pytest.mark.parametrize("contrast", [True, False])
def test_a_global_light_change_costs_a_few_frames_at_most(contrast: bool) -> None:
    rng = np.random.default_rng(4)
    md = MotionDetector(MotionParams(improve_contrast=contrast))
    for _ in range(20):
        md.detect(scene(rng))
    with_motion = [bool(md.detect(scene(rng, gain=1.45))) for _ in range(40)]  # an IR switch: brighter at once
    if not contrast:  # the stretch absorbs most of a pure gain change; without it, the whole ROI changed
        assert md.recalibrations == 1
    # measured: 0-1 frame(s) without the stretch (recalibrated at once), ~7 with it (the stretch and the
    # background adapt over ~1.5 s at alpha 0.1): bounded, never left on
    assert sum(with_motion) <= 10, with_motion
    assert not any(with_motion[12:])
    assert md.detect(scene(rng, gain=1.45, square=(500, 500)))  # and real motion is seen again


def test_gate_runs_on_motion_pending_tracks_and_rechecks_only() -> None:
    rng = np.random.default_rng(5)
    gate = MotionGate(MotionParams(), None, recheck_s=2.0, idle_recheck_s=10.0)
    t = 0.0
    runs = []
    for _ in range(100):  # 20 s of a static lane at 5 fps, one stationary vehicle tracked and done
        runs.append(gate.decide(scene(rng), t, pending=False, stationary=[(500, 500, 660, 620)], tracked=True))
        t += 0.2
    assert 9 <= sum(runs) <= 14, sum(runs)  # the first frame, then every 2 s (+ the end of the first calibration)
    assert gate.decide(scene(rng), t, pending=True, stationary=[], tracked=True)
    assert gate.decide(scene(rng, square=(100, 500)), t + 0.2, pending=False, stationary=[], tracked=False)


def test_motion_settings_come_from_cameras_yaml_defaults_or_the_camera(tmp_path: Path) -> None:
    source = {"kind": "rtsp", "url": "rtsp://127.0.0.1:8554/x"}
    cameras = CamerasFile.model_validate({
        "defaults": {"pipeline": "models/car_frontal_pipeline.mpta", "motion": {"recheck_s": 1.5}},
        "cameras": {"cam-1": {"source": source, "displays": ["d1"], "motion": {"enabled": False}},
                    "cam-2": {"source": source, "displays": ["d2"]}}})
    assert cameras.worker_spec("cam-1", base_dir=tmp_path).motion == MotionSettings(enabled=False)
    assert cameras.worker_spec("cam-2", base_dir=tmp_path).motion == MotionSettings(recheck_s=1.5)
    assert WorkerSpec(camera_id="c", source=source).motion.enabled  # on by default  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"motion\.thresold"):
        CamerasFile.model_validate({"defaults": {"motion": {"thresold": 3}}})
