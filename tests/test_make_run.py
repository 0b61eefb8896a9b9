"""The fleet exactly as `make run` starts it: demo cameras, gateway, operator commands, make stop."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from websockets.sync.client import connect

from tests.fleet import Backend, Fleet

ROOT = Path(__file__).resolve().parents[1]
CTL = [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(ROOT / "conf/supervisord.conf")]


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def fleet_processes() -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if (f"{ROOT}/conf/supervisord.conf" in cmd or "gateway.cli --config conf/gateway.yaml" in cmd
                or f"--spec {ROOT}/run/specs/" in cmd or "scripts/rtsp_server.py --host 127.0.0.1 --port 8554" in cmd
                or f"gateway.supervisor.events --push ipc://{ROOT}/conf/fleet.d/../../run/" in cmd):
            out.append(proc)
    return out


def cameras() -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:8001/cameras", timeout=5) as r:
        return {c["camera"]: c for c in json.loads(r.read())["cameras"]}


@pytest.mark.slow
def test_make_run_demo_operator_workflow_and_make_stop(tmp_path: Path) -> None:
    if port_busy(8001) or port_busy(8554) or fleet_processes():
        pytest.fail("a fleet is already running here (make stop first): this test starts its own with make run")
    cameras_file = tmp_path / "cameras.yaml"
    config = yaml.safe_load((ROOT / "cameras.yaml").read_text())
    config["defaults"]["pipeline"] = str(ROOT / config["defaults"]["pipeline"])
    cameras_file.write_text(yaml.safe_dump(config))
    env = {**__import__("os").environ, "GATEWAY_CAMERAS_FILE": str(cameras_file)}
    try:
        subprocess.run(["make", "run"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
        Fleet.wait_for(lambda: port_busy(8001), 30, "the gateway")
        with connect("ws://127.0.0.1:8001/", open_timeout=5) as ws:
            # as `make demo` does: the backend adds its own display to each demo camera (sharing its worker)
            backend = Backend(ws)
            for cam in ("cam-001", "cam-002"):
                backend.send({"type": "subscribe", "payload": {
                    "subscriptionIdentifier": f"display-demo;{cam}", "rtspUrl": f"rtsp://127.0.0.1:8554/{cam}",
                    "modelUrl": (ROOT / config["defaults"]["pipeline"]).as_uri(), "modelId": "demo"}})
            backend.wait_for(lambda: {m["subscriptionIdentifier"] for m in backend.of_type("imageDetection")} >=
                             {"display-demo;cam-001", "display-demo;cam-002"}, 120, "detections from both demo cameras")
            relayed = {m["subscriptionIdentifier"] for m in backend.of_type("imageDetection")}
            assert not relayed & {"display-001;cam-001", "display-002;cam-002"}, "cameras.yaml's displays stay ours"
        # an operator stops one camera: it goes offline, the other keeps producing
        subprocess.run([*CTL, "stop", "camera-cam-001"], check=True, capture_output=True, timeout=30)
        Fleet.wait_for(lambda: not cameras()["cam-001"]["online"], 5, "cam-001 offline")
        before = cameras()["cam-002"]["detections"]
        assert cameras()["cam-002"]["online"]
        Fleet.wait_for(lambda: cameras()["cam-002"]["detections"] > before, 60, "cam-002 still detecting")
        subprocess.run([*CTL, "start", "camera-cam-001"], check=True, capture_output=True, timeout=30)
        Fleet.wait_for(lambda: cameras()["cam-001"]["online"], 30, "cam-001 back online")
        # add a camera to cameras.yaml: only its worker starts
        pids = {name: c["pid"] for name, c in cameras().items()}
        config["cameras"]["cam-003"] = {"source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:8554/cam-002"},
                                        "displays": ["display-003"]}
        cameras_file.write_text(yaml.safe_dump(config))
        subprocess.run(["make", "reload"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
        Fleet.wait_for(lambda: cameras().get("cam-003", {}).get("online"), 40, "cam-003 online")
        assert {name: c["pid"] for name, c in cameras().items() if name != "cam-003"} == pids
    finally:
        subprocess.run(["make", "stop"], cwd=ROOT, env=env, check=False, capture_output=True, timeout=120)
    time.sleep(0.5)
    left = fleet_processes()
    assert not left, [p.info["cmdline"] for p in left]
    shutil.rmtree(ROOT / "run" / "specs", ignore_errors=True)
