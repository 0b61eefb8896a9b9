"""The engine on generated footage with the committed stand-in archive (ONNX Runtime path)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import cv2
import numpy as np
import psycopg2
import pytest

from detector_worker.pipeline.actions import ActionRunner
from detector_worker.pipeline.archive import open_archive
from detector_worker.pipeline.engine import Lane, PipelineInstance, VehicleCycle
from detector_worker.pipeline.export import prepare_archive_dir
from detector_worker.pipeline.schema import PipelineConfig
from detector_worker.pipeline.sessions import DisplaySession
from detector_worker.pipeline.sinks import postgres_writer, redis_writer
from detector_worker.pipeline.tracking import iou
from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.conftest import MODELS

pytestmark = pytest.mark.slow  # make check skips it: renders footage and runs the whole pipeline on it

LOG = logging.getLogger("test")


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PipelineConfig]:
    model_dir, config = open_archive(str(MODELS / ARCHIVE_NAME), tmp_path_factory.mktemp("cache"), "standin")
    prepare_archive_dir(model_dir)  # in-process here; workers do it in a child process
    return model_dir, config


def frames_of(video: Path, step: int = 1) -> list[tuple[int, np.ndarray]]:
    cap = cv2.VideoCapture(str(video))
    out = []
    i = 0
    while (read := cap.read())[0]:
        if i % step == 0:
            out.append((i, read[1]))
        i += 1
    return out


def run_lane(lane: Lane, video: Path, step: int) -> list[tuple[int, VehicleCycle]]:
    cycles = []
    for i, frame in frames_of(video, step):
        for c in lane.process(frame, float(i)):
            cycles.append((i, c))
    return cycles


def matched_vehicle(truth: dict, frame: int, cycle: VehicleCycle) -> dict:  # type: ignore[type-arg]
    best = max(truth["frames"][frame], key=lambda o: iou(tuple(o["car_box"]), cycle.detections["Car"].box))
    assert iou(tuple(best["car_box"]), cycle.detections["Car"].box) > 0.5
    return next(v for v in truth["vehicles"] if v["vehicle_id"] == best["vehicle_id"])


@pytest.mark.parametrize("step", [1, 2])  # 10 fps and 5 fps (a max_fps cap)
def test_one_cycle_per_stopped_vehicle_none_for_passers(standin: tuple[Path, PipelineConfig],
                                                         camera_clips: dict[str, Path], step: int) -> None:
    model_dir, config = standin
    lane = Lane(PipelineInstance(config, model_dir))
    for name, video in camera_clips.items():
        lane = Lane(lane.pipeline)  # a fresh lane per camera, same models
        truth = json.loads(video.with_suffix(".json").read_text())
        cycles = run_lane(lane, video, step)
        vehicles = [matched_vehicle(truth, frame, c) for frame, c in cycles]
        stopped = [v for v in truth["vehicles"] if v["kind"] == "stop"]
        assert sorted(v["vehicle_id"] for v in vehicles) == sorted(v["vehicle_id"] for v in stopped), name
        for (frame, cycle), vehicle in zip(cycles, vehicles, strict=True):
            assert vehicle["stopped_from"] - 5 <= frame <= vehicle["stopped_to"], "fires while the vehicle stands"
            brand = cycle.branches["car_brand_cls_v1"].label
            body = cycle.branches["car_bodytype_cls_v1"].label
            assert (brand, body) == (vehicle["brand"], vehicle["body_type"]), (name, vehicle)
            assert set(cycle.crops) == {"Car", "Frontal"}
    lane.pipeline.close()


def test_two_cameras_concurrently_with_interleaved_sessions_never_cross(
        standin: tuple[Path, PipelineConfig], camera_clips: dict[str, Path], redis_url: str,
        database_url: str) -> None:
    """Two pipeline instances (as two workers would have), fed different clips at once; the
    backend binds session ids to their displays as results arrive, alternating between cameras."""
    model_dir, config = standin
    run = uuid.uuid4().hex[:6]
    sessions_of: dict[str, list[tuple[str, str, str]]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def camera(name: str, video: Path) -> None:
        try:
            instance = PipelineInstance(config, model_dir)
            runner = ActionRunner(config.pipeline, redis_writer(redis_url, LOG), postgres_writer(database_url, LOG),
                                  LOG)
            display = DisplaySession(name, f"display-{name}-{run}", f"display-{name};{name}", "m", "m", runner, LOG)
            lane = Lane(instance)
            truth = json.loads(video.with_suffix(".json").read_text())
            for i, frame in frames_of(video, 2):
                for cycle in lane.process(frame, float(i)):
                    vehicle = matched_vehicle(truth, i, cycle)
                    display.on_cycle(cycle)
                    session_id = f"{name}-{run}-{vehicle['vehicle_id']}"
                    display.set_session(session_id)
                    with lock:
                        sessions_of.setdefault(name, []).append((session_id, vehicle["brand"], vehicle["body_type"]))
                    display.set_session(None)
            assert runner.redis is not None and runner.postgres is not None
            assert runner.redis.flush(10) and runner.postgres.flush(10)
            runner.redis.close()
            runner.postgres.close()
            instance.close()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=camera, args=item) for item in camera_clips.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT session_id, display_id, car_brand, car_body_type FROM car_frontal_info")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    expected = {sid: (f"display-{name}-{run}", brand, body)
                for name, items in sessions_of.items() for sid, brand, body in items}
    assert len(expected) == sum(1 for v in json.loads(next(iter(camera_clips.values())).with_suffix(".json")
                                                      .read_text())["vehicles"] if v["kind"] == "stop") * 2
    assert rows == expected
