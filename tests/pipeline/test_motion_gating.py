"""Motion-gated detection on generated "day" footage (detector_worker/synthetic/day.py) with the
stand-in archive: no vehicle visit lost, the detector on a small share of frames, and a light
change costing a bounded number of detector runs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from detector_worker.config.spec import MotionSettings
from detector_worker.pipeline.engine import Lane, PipelineInstance
from detector_worker.pipeline.schema import PipelineConfig
from detector_worker.synthetic.day import DayScene, score_visits, write_day
from tests.pipeline.test_engine import standin  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow  # renders ~3 min of footage and runs the pipeline on it


@pytest.fixture(scope="module")
def day_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 minutes of a lane at 5 fps (the workers' max_fps), 640x360, stops compressed to 30-60 s."""
    scene = DayScene.build(20, 3.0, 640, 360, 5.0, stop_s=(30.0, 60.0), gap_s=(5.0, 15.0),
                           walkers_per_min=1.0, passers_per_min=2.0)
    path = tmp_path_factory.mktemp("day") / "day.mp4"
    write_day(path, scene)
    return path


def run(lane: Lane, clip: Path) -> tuple[list[tuple[int, tuple[float, float, float, float]]], list[int]]:
    truth = json.loads(clip.with_suffix(".json").read_text())
    cap = cv2.VideoCapture(str(clip))
    reports, detected, i = [], [], 0
    while (read := cap.read())[0]:
        before = lane.stats.detected
        for cycle in lane.process(read[1], i / truth["fps"], now=i / truth["fps"]):
            reports.append((i, cycle.detections["Car"].box))
        if lane.stats.detected > before:
            detected.append(i)
        i += 1
    cap.release()
    return reports, detected


def test_gating_loses_no_visit_and_runs_the_detector_on_few_frames(
        standin: tuple[Path, PipelineConfig], day_clip: Path) -> None:  # noqa: F811
    model_dir, config = standin
    truth = json.loads(day_clip.with_suffix(".json").read_text())
    instance = PipelineInstance(config, model_dir)
    assert sum(v["kind"] == "stop" for v in truth["vehicles"]) >= 3 and truth["passers_by"] and truth["people"]
    roi = tuple(truth["roi"])
    for gated in (False, True):
        lane = Lane(instance, roi, motion=MotionSettings(enabled=gated))  # type: ignore[arg-type]
        reports, detected = run(lane, day_clip)
        score = score_visits(truth, reports)
        share = len(detected) / lane.stats.frames
        print(f"gated={gated}: detector on {len(detected)}/{lane.stats.frames} frames ({share:.1%}), {score}")
        assert score["recall"] == 1.0 and score["exactly_once"], score
        assert score["extra_reports"] == [], score  # lane passes, passers-by and people never reported
        if gated:
            assert share < 0.40, f"detector ran on {share:.1%} of frames"


def test_a_light_change_does_not_keep_the_detector_on(
        standin: tuple[Path, PipelineConfig], tmp_path: Path) -> None:  # noqa: F811
    """An empty lane with a cloud (30 s) and an IR switch (20 s): only the idle re-checks and a few
    frames around each change run the detector."""
    model_dir, config = standin
    scene = DayScene.build(12, 2.0, 640, 360, 5.0, gap_s=(1e6, 1e6), walkers_per_min=0, passers_per_min=0)
    assert scene.visits == [] and len(scene.lights) == 2
    path = tmp_path / "light.mp4"
    write_day(path, scene)
    lane = Lane(PipelineInstance(config, model_dir), scene.roi, motion=MotionSettings())
    reports, detected = run(lane, path)
    assert reports == []
    idle = scene.n_frames / scene.fps / 10.0 + 1  # idle_recheck_s = 10 s
    per_change = 12  # frames: the change itself, the stretch and background adapting (~2 s at 5 fps)
    print(f"light changes: detector on {len(detected)}/{scene.n_frames} frames, reasons {lane.gate_stats}")
    assert len(detected) <= idle + per_change * 4, detected  # cloud down/up, IR on/off
