"""The gateway's core in-process: the server's dispatch, the owner, the apply loop and the bus.

supervisord is faked (tests/gateway/fakes.py); the bus is real ZeroMQ on ipc:// sockets, with
workers played by real sockets. Each test takes well under a second.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from detector_worker.comms.messages import (
    Control,
    DisplayDetection,
    Heartbeat,
    Hello,
    Reload,
    SessionResult,
    Status,
    VehicleResult,
    encode,
)
from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import load_spec
from detector_worker.naming import camera_slug
from gateway.desired import DesiredState
from tests.gateway.fakes import FakeWorker, Harness, run_async, settings_for


def sub(display: str, camera: str, url: str = "rtsp://10.0.0.1/x", **extra: Any) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": url, "modelUrl": "http://models/m.mpta",
            "modelId": 102, "modelName": "Car Frontal", **extra}


def detection(camera: str, display: str, **changes: Any) -> DisplayDetection:
    values: dict[str, Any] = {
        "camera": camera, "sent_at": time.time(), "subscription_identifier": f"{display};{camera}",
        "display_id": display, "session_id": None, "track_id": 7, "model_id": 102, "model_name": "Car Frontal",
        "captured_at": time.time() - 0.05, "inference_ms": 3.0,
        "vehicle": VehicleResult(confidence=0.9, brand="Aurex", body_type="Sedan")}
    return DisplayDetection(**{**values, **changes})


async def settle() -> None:
    await asyncio.sleep(0.2)  # bus messages cross the ipc sockets


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    return settings_for(tmp_path)


@run_async
async def test_top_level_list_with_one_bad_item_applies_the_rest(settings: Any) -> None:
    async with Harness(settings) as h:
        answers = await h.send({"type": "setSubscriptionList", "requestId": "r-1", "subscriptions": [
            sub("d1", "cam-1", displayName="Pump 1"), sub("d2", "cam-2", rtspUrl="ftp://x"), sub("d3", "cam-3")]})
        await h.applied()
        assert [a["error"]["subscriptionIdentifier"] for a in answers] == ["d2;cam-2"]
        assert answers[0]["error"]["index"] == 1 and "rtspUrl" in answers[0]["error"]["message"]
        assert sorted(h.gateway.programs) == ["cam-1", "cam-3"]
        assert sorted(p.name for p in h.supervisor.programs.values()) == ["camera-cam-1", "camera-cam-3"]
        spec_file = settings.specs_dir / "cam-1.json"
        assert stat.S_IMODE(spec_file.stat().st_mode) == 0o600
        assert load_spec(spec_file).subscriptions[0].model.id == 102
        ignored = h.metrics.backend_ignored_keys._value.get()
        assert ignored == 2, "requestId and subscriptions[].displayName are ignored and counted"


@run_async
async def test_an_id_over_the_limit_is_refused_and_the_next_change_still_applies(settings: Any) -> None:
    async with Harness(settings) as h:
        answers = await h.send({"type": "setSubscriptionList",
                                "subscriptions": [sub("d" * 256, "cam-1"), sub("d1", "c" * 200)]})
        assert [a["error"]["code"] for a in answers] == ["invalid_message", "invalid_message"]
        await h.applied()
        assert h.gateway.programs == {}
        assert await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")}) == []
        await h.applied()
        assert list(h.gateway.programs) == ["cam-1"]


@run_async
async def test_a_source_change_reloads_the_worker_and_a_process_setting_restarts_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        worker = h.worker("cam-1")
        try:
            assert isinstance(await worker.hello(), Control)
            pid = h.supervisor.running["camera-cam-1"]
            await h.send({"type": "subscribe", "payload": sub("d1", "cam-1", url="rtsp://10.0.0.2/new", cropX1=1,
                                                              cropY1=2, cropX2=30, cropY2=40)})
            await h.applied()
            assert isinstance(await worker.receive(), Reload)
            assert h.supervisor.running["camera-cam-1"] == pid, "a display-level change keeps the process"
            spec = load_spec(settings.specs_dir / "cam-1.json")
            assert spec.source.url == "rtsp://10.0.0.2/new" and spec.subscriptions[0].crop is not None
        finally:
            worker.close()
    # the same gateway state with another process-level setting (resource limits): a restart, not a reload
    changed = settings_for(tmp_path, resource_limits={"memory_per_process_mb": 512})
    desired = DesiredState(changed)
    async with Harness(changed, desired) as h2:
        h2.gateway.applied = {"cam-1": load_spec(settings.specs_dir / "cam-1.json")}
        h2.gateway.programs = {"cam-1": h2.gateway._program("cam-1", h2.gateway.applied["cam-1"])}
        h2.supervisor.programs = {"camera-cam-1": h2.gateway.programs["cam-1"]}
        await h2.send({"type": "subscribe", "payload": sub("d1", "cam-1", url="rtsp://10.0.0.2/new", cropX1=1,
                                                           cropY1=2, cropX2=30, cropY2=40)})
        await h2.applied()
        assert ("restart", "camera-cam-1") in h2.supervisor.calls


@run_async
async def test_a_session_reaches_every_camera_of_its_display_with_its_type(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "setSubscriptionList", "subscriptions": [
            sub("d1", "cam-1"), sub("d1", "cam-2", url="rtsp://10.0.0.2/y"), sub("d2", "cam-2",
                                                                                 url="rtsp://10.0.0.2/y")]})
        await h.applied()
        workers = [h.worker(c) for c in ("cam-1", "cam-2")]
        try:
            for w in workers:
                await w.hello()
            await h.send({"type": "setSessionId", "payload": {"displayIdentifier": "d1", "sessionId": 4711}})
            for w in workers:
                control = await w.receive()
                assert isinstance(control, Control) and control.displays["d1"].session_id == 4711
            await h.send({"type": "setProgressionStage", "displayIdentifier": "d1", "progressionStage": "fueling"})
            for w in workers:
                control = await w.receive()
                assert isinstance(control, Control) and control.displays["d1"].progression_stage == "fueling"
        finally:
            for w in workers:
                w.close()


@run_async
async def test_only_the_backends_own_detections_are_relayed_with_its_types(tmp_path: Path) -> None:
    cameras = CamerasFile.model_validate({"defaults": {"pipeline": "/m.mpta"}, "cameras": {
        "yard": {"source": {"kind": "rtsp", "url": "rtsp://10.0.0.5/yard"}, "displays": ["yard-screen"]}}})
    settings = settings_for(tmp_path)
    async with Harness(settings, DesiredState(settings, cameras)) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        worker = h.worker("cam-1")
        yard = h.worker("yard")
        try:
            await worker.send(detection("cam-1", "d1", session_id=4711))
            await yard.send(detection("yard", "yard-screen"))
            await worker.send(detection("cam-1", "d9"))  # a display this camera does not serve
            await worker.send(detection("cam-1", "x", subscription_identifier="x;yard"))  # another camera's id
            await settle()
        finally:
            worker.close()
            yard.close()
        sent = [m for m in h.sent_to_backend() if m["type"] == "imageDetection"]
        assert [m["subscriptionIdentifier"] for m in sent] == ["d1;cam-1"]
        data = sent[0]["data"]
        assert data["modelId"] == 102 and data["detection"]["sessionId"] == 4711
        assert data["detection"]["carBrand"] == "Aurex"
        assert h.states["yard"].detections == 1, "static cameras' detections still count in metrics"
        assert h.metrics.capture_to_backend._sum.get() > 0


@run_async
async def test_patch_session_is_sent_only_when_enabled(tmp_path: Path) -> None:
    result = SessionResult(camera="cam-1", sent_at=time.time(), subscription_identifier="d1;cam-1", display_id="d1",
                           session_id=4711, track_id=7, image_key="k", vehicle=VehicleResult(confidence=0.9))
    for enabled in (False, True):
        settings = settings_for(tmp_path / str(enabled), backend={"patch_session": enabled})
        async with Harness(settings) as h:
            await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
            await h.applied()
            worker = h.worker("cam-1")
            try:
                await worker.send(result)
                await settle()
            finally:
                worker.close()
            patches = [m for m in h.sent_to_backend() if m["type"] == "patchSession"]
            assert len(patches) == int(enabled)
            if enabled:
                assert patches[0]["payload"]["sessionId"] == 4711


@run_async
async def test_state_report_lists_the_backends_subscriptions_with_their_types(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1", modelId="m-7", cropX=5, cropY=6)})
        await h.applied()
        (report,) = await h.send({"type": "requestState", "requestId": 1})
        assert report["type"] == "stateReport"
        (conn,) = report["cameraConnections"]
        assert conn["subscriptionIdentifier"] == "d1;cam-1" and conn["modelId"] == "m-7"
        assert (conn["cropX1"], conn["cropY1"]) == (5, 6) and conn["online"] is False


@run_async
async def test_hung_workers_are_restarted_through_the_bridge_unless_an_operator_stopped_them(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "setSubscriptionList", "subscriptions": [sub("d1", "cam-1"), sub("d2", "cam-2")]})
        await h.applied()
        await h.gateway.reconcile()
        assert await h.gateway.operate("cam-2", "stop") is None
        for state in h.states.values():
            state.process_state = "RUNNING"
            state.heard = True  # it had sent heartbeats, then went silent
            state.last_heartbeat = time.monotonic() - 60
        await h.gateway.restart_hung()
        assert ("restart", "camera-cam-1") in h.supervisor.calls
        assert ("restart", "camera-cam-2") not in h.supervisor.calls
        assert h.states["cam-1"].hung_restarts == 1
        worker = h.worker("cam-1")
        try:
            await worker.send(Heartbeat(camera="cam-1", sent_at=time.time(), pid=5, uptime_s=1))
            await settle()
        finally:
            worker.close()
        assert h.states["cam-1"].silent_for() < 1


@run_async
async def test_a_gone_backends_cameras_are_removed_after_the_cleanup_timeout(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        h.channel.link = None
        h.gateway.backend_disconnected()
        await asyncio.sleep(settings.session_processes.process_cleanup_timeout + 0.3)
        await h.applied()
        assert h.gateway.programs == {} and not (settings.specs_dir / "cam-1.json").exists()


@run_async
async def test_junk_frames_get_errors_and_the_connection_keeps_working(settings: Any) -> None:
    async with Harness(settings) as h:
        for junk in ("", "{", "[]", '{"type": 5}', '{"type": "nope"}', json.dumps({"type": "subscribe"})):
            await h.server.on_message(h.link, junk)
        errors = [m for m in h.sent_to_backend() if m["type"] == "error"]
        assert len(errors) == 6
        assert await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")}) == []
        await h.applied()
        assert list(h.gateway.programs) == ["cam-1"]


@run_async
async def test_a_reload_for_a_worker_not_yet_connected_follows_its_hello(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1", url="rtsp://10.0.0.2/new")})
        await h.applied()  # no worker connected: the reload could not be sent
        worker = h.worker("cam-1")
        try:
            assert isinstance(await worker.hello(), Control)
            assert isinstance(await worker.receive(), Reload), "it may have read the old spec: reload it"
        finally:
            worker.close()


@run_async
async def test_a_hello_from_a_process_supervisord_does_not_run_is_ignored(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        await h.send({"type": "setSessionId", "payload": {"displayIdentifier": "d1", "sessionId": "secret"}})
        stray = FakeWorker(settings, "cam-1", camera_slug("cam-1"), pid=999_999)  # e.g. an orphan, or a forger
        try:
            await stray.dealer.send(encode(Hello(camera="cam-1", sent_at=time.time(), pid=999_999,
                                                 started_at=time.time())))
            with pytest.raises(TimeoutError):
                await stray.receive(timeout=0.5)
        finally:
            stray.close()
        assert "cam-1" not in h.gateway.identities
        worker = h.worker("cam-1")
        try:
            control = await worker.hello()
            assert isinstance(control, Control) and control.displays["d1"].session_id == "secret"
        finally:
            worker.close()


@run_async
async def test_a_starting_worker_is_not_hung_until_its_startup_timeout(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, session_processes={"heartbeat_timeout": 2, "startup_timeout": 5})
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        await h.gateway.reconcile()
        worker = h.worker("cam-1")
        try:  # a slow archive download: heartbeats flow, the phase says what it is busy with
            await worker.send(Heartbeat(camera="cam-1", sent_at=time.time(), pid=worker.pid, uptime_s=30,
                                        phase="fetching", detail="12 of 80 MB"))
            await settle()
        finally:
            worker.close()
        state = h.states["cam-1"]
        assert state.phase == "fetching" and h.gateway.settings.session_processes.heartbeat_timeout < 5
        state.phase_since -= 4  # four seconds into start-up, heartbeats fresh: no restart
        await h.gateway.restart_hung()
        assert ("restart", "camera-cam-1") not in h.supervisor.calls
        state.phase_since -= 2  # past startup_timeout
        await h.gateway.restart_hung()
        assert ("restart", "camera-cam-1") in h.supervisor.calls


@run_async
async def test_a_process_still_importing_is_not_hung_until_its_startup_timeout(tmp_path: Path) -> None:
    # seen in CI: 12 workers starting at once on a loaded machine took > 15 s to their first heartbeat, and the
    # heartbeat timeout restarted them again and again
    settings = settings_for(tmp_path, session_processes={"heartbeat_timeout": 2, "startup_timeout": 30})
    async with Harness(settings) as h:
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        await h.gateway.reconcile()
        state = h.states["cam-1"]
        assert state.process_state == "RUNNING" and not state.heard
        state.last_heartbeat = time.monotonic() - 20  # silent since it started, within startup_timeout
        await h.gateway.restart_hung()
        assert ("restart", "camera-cam-1") not in h.supervisor.calls
        state.last_heartbeat = time.monotonic() - 31
        await h.gateway.restart_hung()
        assert ("restart", "camera-cam-1") in h.supervisor.calls


@run_async
async def test_a_full_outbox_and_a_broken_display_show_in_state_report(settings: Any) -> None:
    async with Harness(settings) as h:
        await h.send({"type": "setSubscriptionList", "subscriptions": [sub("d1", "cam-1"), sub("d2", "cam-1")]})
        await h.applied()
        worker = h.worker("cam-1")
        try:
            await worker.send(Status(camera="cam-1", sent_at=time.time(), online=True, fps=5, inference_ms=3,
                                     reconnects=0, stalls=0, dropped=0, rss_mb=100, store_quota_full=True,
                                     display_errors={"d2": "archive: sha256 mismatch"}))
            await settle()
        finally:
            worker.close()
        (report,) = await h.send({"type": "requestState"})
        connections = {c["subscriptionIdentifier"]: c for c in report["cameraConnections"]}
        assert connections["d2;cam-1"]["error"] == "archive: sha256 mismatch"
        assert "error" not in connections["d1;cam-1"], "the other display of the camera runs"
        assert all(c["storeQuotaFull"] is True for c in connections.values())
        assert b"fleet_camera_store_quota_full{camera=\"cam-1\"} 1.0" in h.metrics.render()


@run_async
async def test_a_camera_on_another_host_shows_running_once_its_startsecs_are_over(settings: Any) -> None:
    # another host's supervisord sends the gateway no events: the gateway asks again after startsecs
    async with Harness(settings) as h:
        h.gateway.supervisor.host_of = lambda camera_id: "host-x"  # type: ignore[method-assign]
        await h.send({"type": "subscribe", "payload": sub("d1", "cam-1")})
        await h.applied()
        name = h.gateway.programs["cam-1"].name
        startsecs = h.gateway.programs["cam-1"].startsecs
        h.supervisor.starting[name] = time.time() - (startsecs - 0.3)  # its startsecs end in 0.3 s
        worker = h.worker("cam-1")
        try:
            assert isinstance(await worker.hello(), Control)
            assert h.gateway.states["cam-1"].process_state == "STARTING"
            del h.supervisor.starting[name]  # supervisord counts it RUNNING now
            await asyncio.sleep(1.0)  # well before the 5 s reconcile poll
            assert h.gateway.states["cam-1"].process_state == "RUNNING"
        finally:
            worker.close()
