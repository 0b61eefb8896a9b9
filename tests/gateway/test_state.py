"""CameraState: what workers and supervisord say about a camera, and how /cameras shows it."""

from __future__ import annotations

import time

from detector_worker.comms.messages import Heartbeat, Status
from gateway.state import CameraState


def status(**overrides: object) -> Status:
    values: dict[str, object] = {"camera": "cam-a", "sent_at": time.time(), "online": True, "fps": 9.87,
                                 "inference_ms": 31.234, "reconnects": 2, "stalls": 1, "dropped": 3, "rss_mb": 412.34,
                                 "last_error": None, "frames_processed": 1234, "store_pending": 5, "store_failed": 7}
    values.update(overrides)
    return Status.model_validate(values)


def running(state: CameraState, pid: int = 100) -> CameraState:
    state.on_process_state("RUNNING", pid)
    return state


def test_status_fields_are_kept_and_shown() -> None:
    cam = running(CameraState("cam-a", "camera-cam-a"))
    cam.on_status(status())
    assert (cam.frames_processed, cam.store_pending, cam.store_failed) == (1234, 5, 7)
    assert cam.rss_bytes == 412.34 * 1024 * 1024 and abs(cam.inference_seconds - 0.031234) < 1e-12
    shown = cam.as_json()
    assert shown["frames_processed"] == 1234 and shown["store_pending"] == 5 and shown["store_failed"] == 7
    # the keys /cameras has always had keep their names and units
    assert {k: shown[k] for k in ("camera", "program", "process_state", "pid", "online", "stream_online", "fps",
                                  "inference_ms", "reconnects", "stalls", "dropped", "rss_mb", "restarts",
                                  "hung_restarts", "detections", "last_error")} == {
        "camera": "cam-a", "program": "camera-cam-a", "process_state": "RUNNING", "pid": 100, "online": True,
        "stream_online": True, "fps": 9.87, "inference_ms": 31.23, "reconnects": 2, "stalls": 1, "dropped": 3,
        "rss_mb": 412.3, "restarts": 0, "hung_restarts": 0, "detections": 0, "last_error": None}
    assert shown["operator_stopped"] is False and isinstance(shown["heartbeat_age_s"], float)


def test_a_status_from_an_older_worker_has_zero_counts() -> None:
    old = {k: v for k, v in status().model_dump().items()
           if k not in {"frames_processed", "store_pending", "store_failed"}}
    cam = CameraState("cam-a", "camera-cam-a")
    cam.on_status(Status.model_validate(old))
    assert (cam.frames_processed, cam.store_pending, cam.store_failed) == (0, 0, 0)


def test_online_needs_a_running_process_and_a_live_stream() -> None:
    cam = CameraState("cam-a", "camera-cam-a")
    cam.on_status(status(online=True))
    assert not cam.online  # supervisord has not said RUNNING yet
    running(cam)
    cam.on_status(status(online=True))
    assert cam.online
    cam.on_process_state("EXITED", None)
    assert not cam.online and not cam.stream_online and cam.pid is None


def test_restarts_count_new_pids_after_the_first_start() -> None:
    cam = running(CameraState("cam-a", "camera-cam-a"), 100)
    running(cam, 100)  # the same process reported again (reconcile): not a restart
    assert cam.restarts == 0
    cam.on_process_state("EXITED", None)
    cam.on_process_state("STARTING", None)
    running(cam, 101)
    assert cam.restarts == 1


def test_operator_stopped_is_shown_as_the_gateway_sets_it() -> None:
    cam = running(CameraState("cam-a", "camera-cam-a"))
    assert cam.as_json()["operator_stopped"] is False
    cam.operator_stopped = True  # the gateway's desired state owns this; the state only carries it
    cam.on_process_state("STOPPED", None)
    assert cam.as_json()["operator_stopped"] is True and not cam.online


def test_heartbeats_and_silence() -> None:
    cam = CameraState("cam-a", "camera-cam-a")
    assert cam.silent_for() == 0.0  # never heard of: not "silent forever"
    cam.on_heartbeat(Heartbeat(camera="cam-a", sent_at=time.time(), pid=4242, uptime_s=1.0))
    assert cam.worker_pid == 4242 and 0 <= cam.silent_for() < 1
    cam.last_heartbeat = time.monotonic() - 30
    assert 29 < cam.silent_for() < 31
    cam.on_hung_restart()
    assert cam.silent_for() < 1 and cam.hung_restarts == 1  # one restart per heartbeat timeout


def test_detections_are_counted_and_the_last_ones_kept() -> None:
    from detector_worker.comms.messages import DisplayDetection, VehicleResult
    from gateway.state import RECENT_DETECTIONS

    cam = CameraState("cam-a", "camera-cam-a")
    for track in range(RECENT_DETECTIONS + 5):
        cam.on_detection(DisplayDetection(
            camera="cam-a", sent_at=time.time(), subscription_identifier="d;cam-a", display_id="d", session_id=None,
            track_id=track, model_id=1, model_name=None, captured_at=time.time(), inference_ms=1.0,
            vehicle=VehicleResult(confidence=0.9)))
    assert cam.as_json()["detections"] == RECENT_DETECTIONS + 5
    assert [d.track_id for d in cam.recent] == list(range(5, RECENT_DETECTIONS + 5)), "bounded, newest last"


def test_a_camera_placed_anew_forgets_its_old_copys_process_and_stream() -> None:
    cam = running(CameraState("cam-a", "camera-cam-a"), pid=100)
    cam.on_status(status())
    cam.on_heartbeat(Heartbeat(camera="cam-a", sent_at=time.time(), pid=100, uptime_s=3.0))
    assert cam.online and cam.heard
    cam.on_placed(1_700_000_000_000)  # moved to another host: a new copy, not yet started
    assert (cam.process_state, cam.pid, cam.worker_pid, cam.online, cam.heard, cam.phase) == (
        "UNKNOWN", None, None, False, False, "starting")
    assert cam.epoch == 1_700_000_000_000
    running(cam, pid=100)  # the new host's pid may equal the old one's: a first start, not a restart
    assert cam.restarts == 0 and cam.process_state == "RUNNING"
