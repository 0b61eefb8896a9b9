"""/metrics follows Prometheus' conventions and forgets removed cameras."""

from __future__ import annotations

import math
import time

from prometheus_client.parser import text_string_to_metric_families

from detector_worker.comms.messages import Status
from gateway.metrics import CAPTURE_TO_BACKEND_BUCKETS, GatewayMetrics
from gateway.state import CameraState

CAMERA_COUNTERS = {"fleet_camera_frames_processed", "fleet_camera_reconnects", "fleet_camera_stalls",
                   "fleet_camera_bus_dropped", "fleet_camera_store_writes_failed", "fleet_camera_restarts"}
CAMERA_GAUGES = {"fleet_camera_online", "fleet_camera_fps", "fleet_camera_inference_seconds",
                 "fleet_camera_heartbeat_age_seconds", "fleet_camera_store_writes_pending", "fleet_camera_rss_bytes"}


def scrape(metrics: GatewayMetrics) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """family name → (type, {(sample name, labels): value})."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def value(metrics: GatewayMetrics, sample: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


def camera(camera_id: str = "cam-a") -> CameraState:
    cam = CameraState(camera_id, f"camera-{camera_id}")
    cam.on_process_state("RUNNING", 100)
    cam.on_status(Status(camera=camera_id, sent_at=time.time(), online=True, fps=9.5, inference_ms=25.0,
                         reconnects=2, stalls=1, dropped=4, rss_mb=100.0, frames_processed=5000, store_pending=3,
                         store_failed=6))
    return cam


def test_per_camera_values_with_types_and_base_units() -> None:
    cam = camera()
    metrics = GatewayMetrics(lambda: [cam])
    families = scrape(metrics)
    for name in CAMERA_COUNTERS:
        assert families[name][0] == "counter", name
    for name in CAMERA_GAUGES:
        assert families[name][0] == "gauge", name
    expected = {
        "fleet_camera_frames_processed_total": 5000, "fleet_camera_reconnects_total": 2,
        "fleet_camera_stalls_total": 1, "fleet_camera_bus_dropped_total": 4,
        "fleet_camera_store_writes_failed_total": 6, "fleet_camera_restarts_total": 0, "fleet_camera_online": 1,
        "fleet_camera_fps": 9.5, "fleet_camera_inference_seconds": 0.025, "fleet_camera_store_writes_pending": 3,
        "fleet_camera_rss_bytes": 100 * 1024 * 1024,
    }
    for sample, want in expected.items():
        assert value(metrics, sample, camera="cam-a") == want, sample
    age = value(metrics, "fleet_camera_heartbeat_age_seconds", camera="cam-a")
    assert age is not None and 0 <= age < 5


def test_names_follow_the_conventions() -> None:
    cam = camera()
    metrics = GatewayMetrics(lambda: [cam])
    metrics.detection("cam-a")
    metrics.hung_restart("cam-a")
    metrics.bus_message("status")
    metrics.backend_error("invalid")
    metrics.observe_capture_to_backend(0.1)
    families = scrape(metrics)
    for name, (kind, samples) in families.items():
        for sample, _labels in samples:
            assert not sample.endswith(("_ms", "_mb")), sample  # base units only
            if kind == "counter":
                assert sample.endswith(("_total", "_created")), sample
            elif kind == "gauge":
                assert not sample.endswith("_total"), sample
        if name.startswith("fleet_"):
            assert kind in {"counter", "gauge", "histogram"}, name
    for name in ("fleet_detections", "fleet_hung_worker_restarts", "fleet_bus_messages", "fleet_bus_invalid_messages",
                 "fleet_backend_dropped_messages", "fleet_backend_errors", "fleet_supervisor_applies"):
        assert families[name][0] == "counter", name
    assert value(metrics, "fleet_detections_total", camera="cam-a") == 1
    assert value(metrics, "fleet_hung_worker_restarts_total", camera="cam-a") == 1
    assert value(metrics, "fleet_bus_messages_total", type="status") == 1
    assert value(metrics, "fleet_backend_errors_total", code="invalid") == 1


def test_frames_processed_is_a_counter_whose_rate_is_fps() -> None:
    cam = camera()
    metrics = GatewayMetrics(lambda: [cam])
    before = value(metrics, "fleet_camera_frames_processed_total", camera="cam-a")
    cam.on_status(Status(camera="cam-a", sent_at=time.time(), online=True, fps=10, inference_ms=1, reconnects=0,
                         stalls=0, dropped=0, rss_mb=1, frames_processed=5100))
    after = value(metrics, "fleet_camera_frames_processed_total", camera="cam-a")
    assert before is not None and after is not None and after - before == 100


def test_removed_cameras_leave_no_series() -> None:
    cams = {"cam-a": camera("cam-a"), "cam-b": camera("cam-b")}
    metrics = GatewayMetrics(lambda: list(cams.values()))
    for cam_id in cams:
        metrics.detection(cam_id)
        metrics.hung_restart(cam_id)
    text = metrics.render().decode()
    assert 'camera="cam-b"' in text
    del cams["cam-b"]  # the camera left the plan: its state goes, and the gateway calls remove_camera
    metrics.remove_camera("cam-b")
    text = metrics.render().decode()
    assert 'camera="cam-b"' not in text
    assert value(metrics, "fleet_detections_total", camera="cam-a") == 1
    assert value(metrics, "fleet_camera_online", camera="cam-a") == 1
    metrics.remove_camera("cam-b")  # twice, or a camera never counted: no error
    metrics.remove_camera("never-seen")


def test_capture_to_backend_histogram() -> None:
    metrics = GatewayMetrics(list)
    assert CAPTURE_TO_BACKEND_BUCKETS[0] == 0.005 and CAPTURE_TO_BACKEND_BUCKETS[-1] == 10.0
    assert list(CAPTURE_TO_BACKEND_BUCKETS) == sorted(CAPTURE_TO_BACKEND_BUCKETS)
    for seconds in (0.004, 0.03, 0.03, 2.0, 30.0, -0.001, math.nan, math.inf):
        metrics.observe_capture_to_backend(seconds)
    families = scrape(metrics)
    assert families["fleet_capture_to_backend_seconds"][0] == "histogram"
    bucket = "fleet_capture_to_backend_seconds_bucket"
    assert value(metrics, bucket, le="0.005") == 2  # 4 ms and the clamped -1 ms
    assert value(metrics, bucket, le="0.05") == 4
    assert value(metrics, bucket, le="10.0") == 5
    assert value(metrics, bucket, le="+Inf") == 6  # NaN and inf are not observed
    assert value(metrics, "fleet_capture_to_backend_seconds_count") == 6
    total = value(metrics, "fleet_capture_to_backend_seconds_sum")
    assert total is not None and abs(total - 32.064) < 1e-9


def test_process_collector_and_one_registry_per_gateway() -> None:
    first, second = GatewayMetrics(list), GatewayMetrics(list)  # no global registry: no duplicate-name error
    first.detection("cam-a")
    assert value(second, "fleet_detections_total", camera="cam-a") is None
    families = scrape(first)
    assert families["process_cpu_seconds"][0] == "counter"
    assert families["process_resident_memory_bytes"][0] == "gauge"
    assert "python_info" in families
    assert not any(name.startswith("fleet_camera_") and samples for name, (_k, samples) in families.items())


def test_backend_ignored_keys() -> None:
    metrics = GatewayMetrics(list)
    metrics.backend_ignored(3)
    metrics.backend_ignored_keys.inc()
    assert value(metrics, "fleet_backend_ignored_keys_total") == 4
