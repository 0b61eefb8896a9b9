"""The camera worker daemon as a real process: real RTSP server, real ZeroMQ, real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker.comms.messages import DisplayDetection, Status
from detector_worker.pipeline.archive import open_archive
from detector_worker.pipeline.export import prepare_archive_dir
from detector_worker.synthetic.standin import ARCHIVE_NAME
from tests.busgateway import BusGateway
from tests.conftest import CAMERA_BRANDS, MODELS
from tests.rtsp import RtspServer

pytestmark = pytest.mark.slow  # make check skips it: real worker processes against a real RTSP server

WORKER = [sys.executable, "-m", "detector_worker.cli"]
MODEL_ID = "standin-test"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in archive extracted and exported once, as a worker's cache would hold it."""
    cache = tmp_path_factory.mktemp("model-cache")
    model_dir, _ = open_archive(str(MODELS / ARCHIVE_NAME), cache, MODEL_ID)
    prepare_archive_dir(model_dir)
    return cache


@pytest.fixture
def gateway() -> Iterator[BusGateway]:
    with BusGateway() as gw:
        yield gw


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], spec_path: Path, log_dir: Path) -> None:
        self.proc, self.spec_path, self.log_dir = proc, spec_path, log_dir

    def stop(self, timeout: float = 5.0) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - start


@pytest.fixture
def start_worker(tmp_path: Path, gateway: BusGateway, model_cache: Path, redis_url: str,
                 database_url: str) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(camera: str, url: str, **overrides: Any) -> WorkerProcess:
        spec: dict[str, Any] = {
            "camera_id": camera,
            "source": {"kind": "rtsp", "url": url, "open_timeout_s": 3, "read_timeout_s": 3},
            "subscriptions": [{"subscription_identifier": f"display-{camera};{camera}",
                               "source": {"kind": "rtsp", "url": url},
                               "model": {"url": str(MODELS / ARCHIVE_NAME), "id": MODEL_ID, "name": "stand-in"}}],
            "max_fps": 5,
            "bus": {"push_endpoint": gateway.push_endpoint, "control_endpoint": gateway.control_endpoint,
                    "heartbeat_interval_s": 0.5, "status_interval_s": 1},
            "log": {"directory": str(tmp_path / "logs")},
            "model_cache_dir": str(model_cache),
            "stores": {"redis_url": redis_url, "database_url": database_url},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(spec.get(key), dict):
                spec[key] = {**spec[key], **value}
            else:
                spec[key] = value
        path = tmp_path / f"{camera}.json"
        path.write_text(json.dumps(spec))
        path.chmod(0o600)
        proc = subprocess.Popen([*WORKER, "--spec", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        return WorkerProcess(proc, path, tmp_path / "logs")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ground_truth(clip: Path) -> dict[str, Any]:
    return dict(json.loads(clip.with_suffix(".json").read_text()))


def latest_status(gateway: BusGateway, camera: str) -> Status | None:
    statuses = gateway.statuses(camera)
    return statuses[-1] if statuses else None


@pytest.mark.slow
def test_two_workers_detect_their_own_vehicles_only(rtsp_server: RtspServer, camera_clips: dict[str, Path],
                                                     gateway: BusGateway, start_worker: Any) -> None:
    for name in camera_clips:
        start_worker(name, rtsp_server.url(name))
    expected = {name: [v for v in ground_truth(clip)["vehicles"] if v["kind"] == "stop"]
                for name, clip in camera_clips.items()}
    gateway.wait_for(lambda: all(len(gateway.detections(n)) >= len(v) for n, v in expected.items()), 90,
                     "every stopped vehicle of both clips")
    for name, vehicles in expected.items():
        got = gateway.detections(name)[: len(vehicles)]
        assert [(d.vehicle.brand, d.vehicle.body_type) for d in got] == [(v["brand"], v["body_type"]) for v in vehicles]
        assert {d.vehicle.brand for d in gateway.detections(name)} <= set(CAMERA_BRANDS[name]), "no cross-talk"
        assert all(d.subscription_identifier == f"display-{name};{name}" for d in gateway.detections(name))
    passers = sum(1 for clip in camera_clips.values() for v in ground_truth(clip)["vehicles"] if v["kind"] == "pass")
    assert passers > 0


def test_killed_camera_goes_offline_at_once_and_comes_back(rtsp_server: RtspServer, gateway: BusGateway,
                                                           start_worker: Any) -> None:
    start_worker("cam-a", rtsp_server.url("cam-a"), backoff={"initial_s": 0.2, "max_s": 0.8})
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online, 30, "online")
    rtsp_server.kill()
    killed = time.monotonic()
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and not s.online, 5, "offline")
    assert time.monotonic() - killed < 2.5
    time.sleep(3)  # several reconnect attempts against the dead server
    rtsp_server.restart()
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online, 10, "online again")
    status = latest_status(gateway, "cam-a")
    assert status is not None and status.reconnects >= 2


def test_frozen_camera_is_reported_offline_within_the_watchdog_timeout(rtsp_server: RtspServer,
                                                                        gateway: BusGateway,
                                                                        start_worker: Any) -> None:
    start_worker("cam-a", rtsp_server.url("cam-a"), stall_timeout_s=2,
                 backoff={"initial_s": 0.2, "max_s": 0.8})
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online, 30, "online")
    rtsp_server.freeze()
    frozen = time.monotonic()
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and not s.online, 6, "offline")
    assert time.monotonic() - frozen < 2 + 1.5
    rtsp_server.thaw()
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online, 15, "online after thaw")
    status = latest_status(gateway, "cam-a")
    assert status is not None and status.stalls >= 1


def test_sigterm_exits_cleanly_within_two_seconds_and_logs_rotate(rtsp_server: RtspServer, gateway: BusGateway,
                                                                  start_worker: Any) -> None:
    worker = start_worker("cam-a", rtsp_server.url("cam-a"),
                          log={"max_mb": 0.0005, "backups": 2, "level": "DEBUG"})
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online, 30, "online")
    time.sleep(2)
    code, took = worker.stop()
    assert code == 0 and took < 2.0, (code, took)
    logs = sorted(worker.log_dir.glob("detector_worker_camera_cam-a.log*"))
    assert [p.name for p in logs] == ["detector_worker_camera_cam-a.log", "detector_worker_camera_cam-a.log.1",
                                      "detector_worker_camera_cam-a.log.2"], "rotated, 2 backups kept"
    lines = [line for p in logs for line in p.read_text().splitlines() if line]
    assert lines and all("[camera=cam-a sessions=display-cam-a=" in line for line in lines)
    assert all(p.stat().st_size <= 0.0005 * 2**20 + 400 for p in logs)


def test_worker_never_maps_torch(rtsp_server: RtspServer, gateway: BusGateway, start_worker: Any) -> None:
    worker = start_worker("cam-a", rtsp_server.url("cam-a"))
    gateway.wait_for(lambda: (s := latest_status(gateway, "cam-a")) and s.online and s.inference_ms > 0, 30,
                     "a frame through the detector")
    maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps and "/torch/" not in maps


def test_memory_ceiling_makes_the_worker_exit_cleanly(rtsp_server: RtspServer, start_worker: Any) -> None:
    worker = start_worker("cam-a", rtsp_server.url("cam-a"), resource_limits={"memory_per_process_mb": 64})
    assert worker.proc.wait(30) == 3
    log = (worker.log_dir / "detector_worker_camera_cam-a.log").read_text()
    assert "over the 64 MB ceiling" in log


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    (json.dumps({"camera_id": "c", "source": {"kind": "rtsp", "url": "rtsp://x"}, "bogus": 1}), "bogus"),
    (json.dumps({"camera_id": "c", "source": {"kind": "rtsp", "url": "rtsp://x\n[program:evil]"}}), "source.url"),
    (json.dumps({"camera_id": "c", "source": {"kind": "carrier-pigeon", "url": "x"}}), "source.kind"),
])
def test_bad_spec_exits_78_with_one_clear_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "spec.json"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([*WORKER, "--spec", str(path)], capture_output=True, text=True, timeout=30,
                          env={**os.environ})
    assert done.returncode == 78, (done.returncode, done.stderr)  # EX_CONFIG
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], done.stderr


def test_detection_results_are_written_under_the_session_the_gateway_binds(
        rtsp_server: RtspServer, camera_clips: dict[str, Path], gateway: BusGateway, start_worker: Any,
        database_url: str) -> None:
    import psycopg2

    start_worker("cam-b", rtsp_server.url("cam-b"))
    first = gateway.wait_for(lambda: gateway.detections("cam-b"), 60, "a detection")
    detection: DisplayDetection = first[0]  # type: ignore[index]
    gateway.set_session("cam-b", "display-cam-b", "session-b-1")

    def row() -> Any:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('car_frontal_info')")
            if cur.fetchone()[0] is None:  # type: ignore[index]
                return None
            cur.execute("SELECT display_id, car_brand, car_body_type FROM car_frontal_info WHERE session_id = %s",
                        ("session-b-1",))
            return cur.fetchone()

    assert gateway.wait_for(row, 10, "the session's row") == ("display-cam-b", detection.vehicle.brand,
                                                              detection.vehicle.body_type)


def test_reload_with_a_new_source_url_reads_from_the_new_source(rtsp_server: RtspServer, gateway: BusGateway,
                                                                start_worker: Any) -> None:
    worker = start_worker("cam-a", rtsp_server.url("cam-a"))
    gateway.wait_for(lambda: {d.vehicle.brand for d in gateway.detections("cam-a")} & set(CAMERA_BRANDS["cam-a"]),
                     60, "a detection from cam-a's stream")
    spec = json.loads(worker.spec_path.read_text())
    spec["source"]["url"] = rtsp_server.url("cam-b")  # the same camera, now pointed at other footage
    spec["subscriptions"][0]["source"]["url"] = rtsp_server.url("cam-b")  # as the gateway writes it
    worker.spec_path.write_text(json.dumps(spec))
    before = len(gateway.detections("cam-a"))
    worker.proc.send_signal(signal.SIGHUP)
    gateway.wait_for(lambda: {d.vehicle.brand for d in gateway.detections("cam-a")[before:]}
                     & set(CAMERA_BRANDS["cam-b"]), 60, "a detection from the new stream")
    assert worker.proc.poll() is None, "the same process, not a restart"
    status = latest_status(gateway, "cam-a")
    assert status is not None and status.online and status.frames_processed > 0
    log = (worker.log_dir / "detector_worker_camera_cam-a.log").read_text()
    assert "new source settings" in log and "new pipelines" not in log, "same subscriptions: models kept"


@pytest.mark.parametrize("under_supervisord", [True, False])
def test_each_line_is_written_once_stdout_only_under_supervisord(tmp_path: Path, under_supervisord: bool) -> None:
    """supervisord writes the program's stdout to the camera's log file: the worker must not write it too."""
    spec = {"camera_id": "cam-x", "source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:9/none"},
            "subscriptions": [{"subscription_identifier": "display-x;cam-x",
                               "source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:9/none"},
                               "model": {"url": str(tmp_path / "missing.mpta"), "id": 7}}],
            "log": {"directory": str(tmp_path / "logs")}, "model_cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_ENABLED"}
    if under_supervisord:
        env["SUPERVISOR_ENABLED"] = "1"
    done = subprocess.run([*WORKER, "--spec", str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done.stderr  # cannot start: the archive is missing
    stdout = [line for line in done.stdout.splitlines() if "cannot start" in line]
    assert len(stdout) == 1 and "[camera=cam-x sessions=-]" in stdout[0]
    log_file = tmp_path / "logs" / "detector_worker_camera_cam-x.log"
    if under_supervisord:
        assert not log_file.exists()
    else:
        assert [line for line in log_file.read_text().splitlines() if "cannot start" in line] == stdout
