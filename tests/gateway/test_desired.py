"""The gateway's plan: static cameras + the backend's subscriptions, one worker per camera."""

from __future__ import annotations

from pathlib import Path

from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import ModelRef, SourceSettings
from gateway.desired import BackendSubscription, plan
from gateway.settings import GatewaySettings


def sub(display: str, camera: str, url: str = "rtsp://10.0.0.1/x") -> BackendSubscription:
    return BackendSubscription(f"{display};{camera}", display, camera, SourceSettings(kind="rtsp", url=url),
                               ModelRef(url="file:///m.mpta", id=1))


def settings(tmp_path: Path, limit: int = 20) -> GatewaySettings:
    return GatewaySettings.model_validate({"cameras_file": None, "log_dir": str(tmp_path),
                                           "session_processes": {"max_concurrent_sessions": limit}})


def test_displays_of_one_camera_share_one_worker_spec(tmp_path: Path) -> None:
    plans, errors = plan(settings(tmp_path), None, [sub("d1", "cam"), sub("d2", "cam"), sub("d3", "other")])
    assert not errors
    assert sorted(plans) == ["cam", "other"]
    assert [s.display_id for s in plans["cam"].spec.subscriptions] == ["d1", "d2"]
    assert plans["cam"].spec.source.url == "rtsp://10.0.0.1/x"


def test_a_second_url_for_the_same_camera_is_a_conflict(tmp_path: Path) -> None:
    plans, errors = plan(settings(tmp_path), None, [sub("d1", "cam"), sub("d2", "cam", "rtsp://10.0.0.2/y")])
    assert [s.display_id for s in plans["cam"].spec.subscriptions] == ["d1"]
    assert [(e.code, e.subscription_identifier) for e in errors] == [("conflict", "d2;cam")]


def test_max_concurrent_sessions_refuses_new_cameras_with_a_clear_error(tmp_path: Path) -> None:
    subs = [sub(f"d{i}", f"cam-{i}") for i in range(5)] + [sub("extra", "cam-0")]
    plans, errors = plan(settings(tmp_path, limit=3), None, subs)
    assert sorted(plans) == ["cam-0", "cam-1", "cam-2"]
    assert len(plans["cam-0"].spec.subscriptions) == 2, "a display on a running camera is not a new session"
    assert {e.code for e in errors} == {"limit_exceeded"}
    assert sorted(e.subscription_identifier or "" for e in errors) == ["d3;cam-3", "d4;cam-4"]
    assert all("max_concurrent_sessions (3)" in str(e) for e in errors)


def test_static_cameras_come_first_and_backend_displays_join_them(tmp_path: Path) -> None:
    cameras = CamerasFile.model_validate({
        "defaults": {"pipeline": "/m.mpta"},
        "cameras": {"cam": {"source": {"kind": "rtsp", "url": "rtsp://10.0.0.1/x"}, "displays": ["static"]}}})
    plans, errors = plan(settings(tmp_path), cameras, [sub("d1", "cam")])
    assert not errors and plans["cam"].origin == "static"
    assert [s.display_id for s in plans["cam"].spec.subscriptions] == ["static", "d1"]
