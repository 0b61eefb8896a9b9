"""The desired state: one owner, one plan per change, per-item refusals (in-process, no supervisord)."""

from __future__ import annotations

from pathlib import Path

from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import Crop, ModelRef, SourceSettings, Subscription
from detector_worker.limits import MAX_DISPLAYS_PER_CAMERA
from detector_worker.naming import camera_slug
from gateway.desired import DesiredState, plan
from tests.gateway.fakes import settings_for


def sub(display: str, camera: str, url: str = "rtsp://10.0.0.1/x", model_id: int | str = 1,
        crop: Crop | None = None) -> Subscription:
    return Subscription(subscription_identifier=f"{display};{camera}", source=SourceSettings(kind="rtsp", url=url),
                        model=ModelRef(url="http://models/m.mpta", id=model_id), crop=crop)


def static_cameras() -> CamerasFile:
    return CamerasFile.model_validate({
        "defaults": {"pipeline": "/m.mpta"},
        "cameras": {"cam": {"source": {"kind": "rtsp", "url": "rtsp://10.0.0.1/x"}, "displays": ["static"]}}})


def test_displays_of_one_camera_share_one_worker_spec(tmp_path: Path) -> None:
    plans, refusals = plan(settings_for(tmp_path), None, [sub("d1", "cam"), sub("d2", "cam"), sub("d3", "other")])
    assert not refusals
    assert sorted(plans) == ["cam", "other"]
    assert plans["cam"].displays == ["d1", "d2"]
    assert plans["cam"].spec.source.url == "rtsp://10.0.0.1/x"
    assert plans["cam"].backend_ids == {"d1;cam", "d2;cam"}


def test_a_second_url_for_the_same_camera_is_a_conflict(tmp_path: Path) -> None:
    plans, refusals = plan(settings_for(tmp_path), None, [sub("d1", "cam"), sub("d2", "cam", "rtsp://10.0.0.2/y")])
    assert plans["cam"].displays == ["d1"]
    assert [(r.code, r.subscription_identifier) for r in refusals] == [("conflict", "d2;cam")]


def test_max_concurrent_sessions_refuses_new_cameras_with_a_clear_error(tmp_path: Path) -> None:
    subs = [sub(f"d{i}", f"cam-{i}") for i in range(5)] + [sub("extra", "cam-0")]
    plans, refusals = plan(settings_for(tmp_path, session_processes={"max_concurrent_sessions": 3}), None, subs)
    assert sorted(plans) == ["cam-0", "cam-1", "cam-2"]
    assert len(plans["cam-0"].spec.subscriptions) == 2, "a display on a running camera is not a new session"
    assert {r.code for r in refusals} == {"limit_exceeded"}
    assert sorted(r.subscription_identifier for r in refusals) == ["d3;cam-3", "d4;cam-4"]
    assert all("max_concurrent_sessions (3)" in str(r) for r in refusals)


def test_too_many_displays_on_one_camera_are_refused_one_by_one(tmp_path: Path) -> None:
    subs = [sub(f"d{i:02d}", "cam") for i in range(MAX_DISPLAYS_PER_CAMERA + 2)]
    plans, refusals = plan(settings_for(tmp_path), None, subs)
    assert len(plans["cam"].displays) == MAX_DISPLAYS_PER_CAMERA
    assert [r.code for r in refusals] == ["limit_exceeded"] * 2


def test_static_cameras_come_first_and_backend_displays_join_them(tmp_path: Path) -> None:
    plans, refusals = plan(settings_for(tmp_path), static_cameras(), [sub("d1", "cam")])
    assert not refusals and plans["cam"].origin == "static"
    assert plans["cam"].displays == ["static", "d1"]
    assert plans["cam"].backend_ids == {"d1;cam"}, "only the backend's own display is relayed to it"


def test_two_camera_ids_with_one_program_name_are_a_conflict(tmp_path: Path) -> None:
    # Found by brute force (a birthday search over ids that clean to the same head, ~1 s): the slug's
    # 40-bit hash collides, so the two would share `camera-cam-281652de3a`.
    a, twin = "cam ??!!??!!!!!?!?!!!!!", "cam ??!??!!!!????!?!?!!"
    assert a != twin and camera_slug(a) == camera_slug(twin)
    plans, refusals = plan(settings_for(tmp_path), None, [sub("d1", a), sub("d2", twin)])
    assert list(plans) == [a]
    assert [(r.code, r.subscription_identifier) for r in refusals] == [("conflict", f"d2;{twin}")]


def test_a_refused_item_is_not_kept_and_later_changes_still_apply(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path, session_processes={"max_concurrent_sessions": 1}))
    assert desired.replace_backend([sub("d1", "cam-1"), sub("d2", "cam-2")])[0].subscription_identifier == "d2;cam-2"
    assert [s.subscription_identifier for s in desired.backend_subscriptions()] == ["d1;cam-1"]
    assert not desired.replace_backend([sub("d2", "cam-2")]), "cam-1 left: cam-2 now fits"
    assert list(desired.plans) == ["cam-2"]


def test_running_cameras_keep_their_slot_when_a_new_one_comes_first_in_the_list(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path, session_processes={"max_concurrent_sessions": 1}))
    desired.replace_backend([sub("d9", "cam-9")])
    refusals = desired.replace_backend([sub("d1", "cam-1"), sub("d9", "cam-9")])
    assert list(desired.plans) == ["cam-9"]
    assert [r.subscription_identifier for r in refusals] == ["d1;cam-1"]


def test_an_invalid_new_definition_keeps_the_previous_one(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path))
    desired.replace_backend([sub("d1", "cam"), sub("d2", "cam")])
    # d1 moves to another URL while d2 stays: a conflict for d1, which keeps running on the old URL
    refusals = desired.replace_backend([sub("d1", "cam", "rtsp://10.0.0.9/new"), sub("d2", "cam")])
    assert [(r.code, r.subscription_identifier) for r in refusals] == [("conflict", "d1;cam")]
    assert desired.plans["cam"].displays == ["d1", "d2"]
    assert desired.plans["cam"].spec.source.url == "rtsp://10.0.0.1/x"
    # an item the parser refused: kept as it was
    desired.replace_backend([sub("d2", "cam")], keep=["d1;cam"])
    assert desired.plans["cam"].displays == ["d1", "d2"]


def test_a_changed_source_of_every_display_moves_the_camera(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path))
    desired.replace_backend([sub("d1", "cam")])
    assert not desired.replace_backend([sub("d1", "cam", "rtsp://10.0.0.9/new", crop=Crop(x1=1, y1=2, x2=3, y2=4))])
    spec = desired.plans["cam"].spec
    assert spec.source.url == "rtsp://10.0.0.9/new" and spec.subscriptions[0].crop == Crop(x1=1, y1=2, x2=3, y2=4)


def test_a_display_on_two_cameras_is_routed_to_both(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path))
    desired.replace_backend([sub("d1", "cam-1"), sub("d1", "cam-2", "rtsp://10.0.0.2/y"), sub("d2", "cam-2",
                                                                                              "rtsp://10.0.0.2/y")])
    assert sorted(desired.set_display("d1", session_id=42)) == ["cam-1", "cam-2"]
    assert desired.controls_for("cam-1")["d1"].session_id == 42
    assert desired.controls_for("cam-2") == {"d1": desired.controls_for("cam-1")["d1"]}


def test_display_state_of_displays_no_camera_serves_is_pruned(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path))
    desired.replace_backend([sub("d1", "cam")])
    desired.set_display("d1", session_id="s")
    desired.replace_backend([])
    desired.replace_backend([sub("d1", "cam")])
    assert desired.controls_for("cam") == {}, "a display that went away comes back with no session"


def test_inherited_subscriptions_run_until_the_backend_speaks(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path), inherited=[sub("d1", "cam"), sub("d2", "old")])
    assert sorted(desired.plans) == ["cam", "old"]
    desired.add_backend(sub("d1", "cam"))
    assert sorted(desired.plans) == ["cam", "old"], "subscribe adds; the rest stays inherited"
    desired.replace_backend([sub("d1", "cam")])
    assert sorted(desired.plans) == ["cam"] and not desired.inherited
    assert desired.drop_backend() == 1 and not desired.plans


def test_cameras_file_change_replans_and_keeps_the_backend(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path))
    desired.replace_backend([sub("d1", "cam")])
    desired.set_cameras_file(static_cameras())
    assert desired.plans["cam"].origin == "static" and desired.plans["cam"].displays == ["static", "d1"]
    desired.set_cameras_file(None)
    assert desired.plans["cam"].origin == "backend" and desired.plans["cam"].displays == ["d1"]


def test_a_backend_subscription_for_a_display_cameras_yaml_serves_is_a_conflict(tmp_path: Path) -> None:
    plans, refusals = plan(settings_for(tmp_path), static_cameras(), [sub("static", "cam", model_id=7)])
    assert [(r.code, r.subscription_identifier) for r in refusals] == [("conflict", "static;cam")]
    assert plans["cam"].backend_ids == frozenset(), "the backend's definition does not silently become cameras.yaml's"


def test_model_sources_the_backend_may_name_and_pins(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.mpta").write_bytes(b"x")
    (tmp_path / "elsewhere.mpta").write_bytes(b"x")
    (models / "escape.mpta").symlink_to(tmp_path / "elsewhere.mpta")
    pin = "a" * 64
    settings = settings_for(tmp_path, models={"model_dirs": [str(models)], "pinned_sha256": {
        "http://models/m.mpta": pin}})

    def with_url(display: str, url: str) -> Subscription:
        s = sub(display, f"cam-{display}")
        return s.model_copy(update={"model": s.model.model_copy(update={"url": url})})

    subs = [with_url("a", (models / "m.mpta").as_uri()), with_url("b", (tmp_path / "elsewhere.mpta").as_uri()),
            with_url("c", (models / "escape.mpta").as_uri()), with_url("d", "ftp://models/m.mpta"),
            with_url("e", "http://models/m.mpta")]
    plans, refusals = plan(settings, None, subs)
    assert sorted(plans) == ["cam-a", "cam-e"]
    assert [(r.code, r.subscription_identifier) for r in refusals] == [
        ("invalid_message", "b;cam-b"), ("invalid_message", "c;cam-c"), ("invalid_message", "d;cam-d")]
    assert plans["cam-e"].spec.subscriptions[0].model.sha256 == pin, "the operator's pin goes with the URL"
    assert plans["cam-a"].spec.subscriptions[0].model.sha256 is None


def test_an_inherited_subscription_keeps_its_definition_when_the_new_one_is_refused(tmp_path: Path) -> None:
    desired = DesiredState(settings_for(tmp_path), inherited=[sub("d1", "cam"), sub("d2", "cam")])
    refusals = desired.add_backend(sub("d1", "cam", "rtsp://10.0.0.9/new"))  # conflicts with d2's source
    assert [r.subscription_identifier for r in refusals] == ["d1;cam"]
    assert desired.plans["cam"].displays == ["d1", "d2"], "the refused redefinition keeps the running one"
    desired.replace_backend([sub("d2", "cam")], keep=["d1;cam"])  # the parser refused d1's new item
    assert desired.plans["cam"].displays == ["d1", "d2"]


def test_the_backends_cameras_take_the_gateways_motion_and_static_ones_their_own(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, motion={"enabled": False, "recheck_s": 5})
    cameras = CamerasFile.model_validate({
        "defaults": {"pipeline": "/m.mpta"},
        "cameras": {"cam": {"source": {"kind": "rtsp", "url": "rtsp://10.0.0.1/x"}, "displays": ["static"],
                            "host_labels": ["gpu"]}}})
    plans, _ = plan(settings, cameras, [sub("d1", "other")])
    assert not plans["other"].spec.motion.enabled and plans["other"].spec.motion.recheck_s == 5
    assert plans["cam"].spec.motion.enabled  # cameras.yaml's own (default) block
    desired = DesiredState(settings, cameras)
    assert desired.host_labels("cam") == frozenset({"gpu"}) and desired.host_labels("other") == frozenset()


def test_a_snapshot_camera_with_the_longest_interval_is_planned(tmp_path: Path) -> None:
    from detector_worker.limits import MAX_SNAPSHOT_INTERVAL_MS

    source = SourceSettings(kind="snapshot", url="http://10.0.0.1/snap.jpg",
                            snapshot_interval_ms=MAX_SNAPSHOT_INTERVAL_MS)
    slow = Subscription(subscription_identifier="d1;cam", source=source,
                        model=ModelRef(url="http://models/m.mpta", id=1))
    plans, refusals = plan(settings_for(tmp_path), None, [slow])
    assert not refusals
    # it is not a stall to wait the whole interval (and the read timeout) for the next snapshot
    assert plans["cam"].spec.stall_timeout_s > MAX_SNAPSHOT_INTERVAL_MS / 1000
