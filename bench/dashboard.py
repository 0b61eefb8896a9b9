"""The dashboard's cost: the real gateway's CPU with 20 cameras, without and with the page open.

The gateway is the real one (`python -m gateway.cli`, no supervisord behind it, as in `fanin.py`); a
backend subscribes 20 cameras. One process plays the 20 workers over the real bus (`WorkerBus`: PUSH
+ DEALER with the camera's slug): status every 2 s, a heartbeat every second, a 640×480 JPEG snapshot
(~the demo's size) with two tracks every 5 s, and every 0.4 s while a `Live` lease holds (what a real
worker at 5 fps sends: every second frame). The page is a client of `/ui/live` that asks for what the
fleet page asks for (all 20 cameras) and reads everything; its frames/s are counted.

    python -m bench.dashboard [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import DEAD_RTSP, PYTHON, ROOT, CpuMeter, say, wait_until
from .harness import subscription

CAMERAS = 20
LEASE_WAIT_S = 8.0


def fake_workers(push: str, control: str, n: int) -> None:
    """The sender process: `n` fake workers until stdin closes."""
    import cv2
    import numpy as np

    from detector_worker.comms.bus import WorkerBus
    from detector_worker.comms.messages import Heartbeat, Live, Snapshot, SnapshotTrack, Status
    from detector_worker.naming import camera_slug

    rng = np.random.default_rng(1)
    jpegs = []
    for _ in range(4):
        frame = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (7, 7), 0)
        jpegs.append(base64.b64encode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 70])[1]).decode())
    tracks = [SnapshotTrack(box=(100, 120, 300, 300), track_id=7, still=0.6),
              SnapshotTrack(box=(350, 200, 600, 420), track_id=8, still=1.0, fired=True, labels=["Aurex", "Sedan"])]
    cams = [f"sim{i:03d}" for i in range(n)]
    buses = {c: WorkerBus(c, camera_slug(c), push, control) for c in cams}
    live_until = dict.fromkeys(cams, 0.0)
    next_snap = dict.fromkeys(cams, 0.0)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    for bus in buses.values():  # once: unanswered here (no supervisord runs these), the gateway addresses
        bus.hello()             # a worker by its slug all the same
    print("READY", flush=True)
    next_beat = next_status = 0.0
    k = 0
    while not stop.is_set():
        now = time.monotonic()
        for c, bus in buses.items():
            for msg in bus.poll_control(0):
                if isinstance(msg, Live):
                    live_until[c] = now + msg.lease_s
            if now >= next_snap[c]:
                k += 1
                bus.send(Snapshot(camera=c, sent_at=time.time(), captured_at=time.time(), width=640, height=480,
                                  jpeg_b64=jpegs[k % len(jpegs)], tracks=tracks))
                next_snap[c] = now + (0.4 if now < live_until[c] else 5.0)
        if now >= next_beat:
            for c, bus in buses.items():
                bus.send(Heartbeat(camera=c, sent_at=time.time(), pid=os.getpid(), uptime_s=now))
            next_beat = now + 1.0
        if now >= next_status:
            for c, bus in buses.items():
                bus.send(Status(camera=c, sent_at=time.time(), online=True, fps=5.0, inference_ms=20.0, reconnects=0,
                                stalls=0, dropped=0, rss_mb=200.0))
            next_status = now + 2.0
        time.sleep(0.02)
    for bus in buses.values():
        bus.close()


class Page:
    """The fleet page's WebSocket: watches every camera, reads and counts everything."""

    def __init__(self, url: str, cameras: list[str]) -> None:
        from websockets.sync.client import connect

        origin = url.replace("ws://", "http://").split("/ui/")[0]
        self.ws = connect(url, origin=origin, max_size=None)  # type: ignore[arg-type]
        self.ws.send(json.dumps({"op": "watch", "cameras": cameras}))
        self.frames = self.states = self.bytes = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.bytes += len(raw)
                kind = json.loads(raw).get("type")
                self.frames += kind == "frame"
                self.states += kind == "state"
        except Exception:
            pass

    def close(self) -> None:
        self.ws.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_cost(work_root: Path, seconds: float = 20.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dashboard-", dir=work_root))
    port, pull, control = _free_port(), _free_port(), _free_port()
    settings = {
        "host": "127.0.0.1", "port": port, "project_dir": str(ROOT), "python": PYTHON,
        "supervisor_socket": str(work / "no-supervisord.sock"), "programs_dir": str(work / "programs"),
        "specs_dir": str(work / "specs"), "log_dir": str(work / "logs"), "model_cache_dir": str(work / "models"),
        "cameras_file": None,
        "bus": {"push_endpoint": f"tcp://127.0.0.1:{pull}", "control_endpoint": f"tcp://127.0.0.1:{control}"},
        "session_processes": {"max_concurrent_sessions": 1000, "health_check_interval": 10},
    }
    (work / "gateway.yaml").write_text(yaml.safe_dump(settings))
    log = (work / "gateway.log").open("w")
    gw = subprocess.Popen([PYTHON, "-m", "gateway.cli", "--config", str(work / "gateway.yaml")], cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT)
    sender: subprocess.Popen[str] | None = None
    page: Page | None = None
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    return True
            except OSError:
                return False

        if not wait_until(up, 20, 0.1):
            raise RuntimeError(f"gateway did not start; see {work / 'gateway.log'}")
        from websockets.sync.client import connect

        cameras = [f"sim{i:03d}" for i in range(CAMERAS)]
        backend = connect(f"ws://127.0.0.1:{port}/")  # closed below
        backend.send(json.dumps({"type": "setSubscriptionList",
                                 "payload": [subscription(c, DEAD_RTSP) for c in cameras]}))
        threading.Thread(target=lambda: [None for _ in backend], daemon=True).start()  # keep reading
        sender = subprocess.Popen([PYTHON, "-m", "bench.dashboard", "--workers", f"tcp://127.0.0.1:{pull}",
                                   f"tcp://127.0.0.1:{control}", str(CAMERAS)], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert sender.stdout is not None
        if sender.stdout.readline().strip() != "READY":
            raise RuntimeError("the fake workers did not start")
        time.sleep(3.0)

        def measure() -> float:
            meter = CpuMeter({"gateway": [gw.pid]}).start()
            time.sleep(seconds)
            return meter.stop()["gateway"]

        without = measure()
        page = Page(f"ws://127.0.0.1:{port}/ui/live", cameras)
        time.sleep(3.0)  # leases out, snapshots up to the live rate
        frames0, bytes0 = page.frames, page.bytes
        with_page = measure()
        fps = (page.frames - frames0) / seconds
        mbps = (page.bytes - bytes0) / seconds / 2**20
        page.close()
        page = None
        time.sleep(LEASE_WAIT_S)  # the leases run out: back to the slow snapshots
        without = (without + measure()) / 2  # before and after: drift of the machine cancels
        backend.close()
        result = {"cameras": CAMERAS, "seconds": seconds, "gateway_cpu_without_page": round(without, 4),
                  "gateway_cpu_with_page": round(with_page, 4), "page_cost_cores": round(with_page - without, 4),
                  "page_frames_per_s": round(fps, 1), "page_frames_per_camera_s": round(fps / CAMERAS, 2),
                  "page_mib_per_s": round(mbps, 2)}
        say(f"dashboard: gateway CPU {without * 100:.1f} % of a core without the page, {with_page * 100:.1f} % with "
            f"it open ({(with_page - without) * 100:+.1f} %); the page got {fps:.0f} frames/s "
            f"({fps / CAMERAS:.1f} per camera), {mbps:.2f} MiB/s")
        return result
    finally:
        if page is not None:
            page.close()
        if sender is not None and sender.stdin is not None:
            sender.stdin.close()
            sender.wait(10)
        gw.terminate()
        gw.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", nargs=3, metavar=("PUSH", "CONTROL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers:
        fake_workers(args.workers[0], args.workers[1], int(args.workers[2]))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        print(json.dumps(dashboard_cost(Path(tmp), args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
