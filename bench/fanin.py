"""Section 3: gateway fan-in. Many simulated workers -> the real gateway -> one backend.

The gateway is the real one (`python -m gateway.cli`, no tap), started directly with no supervisord
behind it: its supervisord calls fail and are retried, which does not touch the bus path, and no
camera worker competes for the CPU. The backend subscribes N cameras (so the gateway relays their
detections); N sender processes each open the real worker-side bus (`WorkerBus`: a ZeroMQ PUSH
socket with the worker's options) and send `DisplayDetection` messages encoded by the shared message
module (encoded once; per message only the times and track id are substituted, so the senders stay
cheap) at a paced rate, all following one schedule of offered rates. `captured_at` = `sent_at` = the send
time, so the backend's `imageDetection.timestamp` gives each message's latency through bus and
gateway. Each step: offered vs delivered messages/s, drops, latency, and the gateway's CPU.

Senders: `python -m bench.fanin --sender CAMERA PUSH_ENDPOINT CONTROL_ENDPOINT SCHEDULE_JSON OUT`; each
prints READY once connected and then reads the common start time on stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .common import DEAD_RTSP, PYTHON, ROOT, CpuMeter, md_table, p50p99, say, summary, wait_until
from .harness import subscription

RATE_MAX = 0  # a step offered "as fast as the senders can"


# -- the sender ------------------------------------------------------------------------------------
def sender(camera: str, push: str, control: str, schedule: list[list[float]], out: Path) -> None:
    import zmq

    from detector_worker.comms.bus import WorkerBus
    from detector_worker.comms.messages import DisplayDetection, VehicleResult, decode_from_worker, encode

    bus = WorkerBus(camera, camera, push, control)
    vehicle = VehicleResult(car_box=(100.0, 120.0, 420.0, 400.0), frontal_box=(130.0, 260.0, 400.0, 380.0),
                            confidence=0.93, brand="Aurex", brand_confidence=0.99, body_type="Sedan",
                            body_type_confidence=0.98, fields={"car_brand_cls_v1.brand": "Aurex"})
    # Encoded once by the message module; per message only the times and the track id change (building
    # and validating a pydantic model per message would make the senders, not the gateway, the limit).
    marks = (1111111111.5, 2222222222.5, 333333333)
    template = encode(DisplayDetection(camera=camera, sent_at=marks[0],
                                       subscription_identifier=f"display-{camera};{camera}",
                                       display_id=f"display-{camera}", session_id=None, track_id=marks[2],
                                       model_id="standin-bench", model_name="stand-in", captured_at=marks[1],
                                       inference_ms=10.0, vehicle=vehicle))
    head, rest = template.split(repr(marks[0]).encode())
    mid, rest = rest.split(str(marks[2]).encode())
    mid2, tail = rest.split(repr(marks[1]).encode())
    decode_from_worker(head + b"1.0" + mid + b"1" + mid2 + b"1.0" + tail)  # still a valid message
    sock = bus._push  # WorkerBus.send, minus the per-message encode

    def send(data: bytes) -> bool:
        try:
            sock.send(data, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    sent, dropped = [], []
    track = 0
    bus.hello()
    time.sleep(0.2)  # connected
    print("READY", flush=True)
    t0 = float(sys.stdin.readline())  # the common start, once every sender is ready
    start = t0
    while time.time() < t0:
        time.sleep(0.005)
    for rate, duration in schedule:
        end = start + duration
        n_sent = n_drop = 0
        interval = 1.0 / rate if rate > 0 else 0.0
        due = start
        while True:
            now = time.time()
            if now >= end:
                break
            if interval and now < due:
                time.sleep(min(due - now, end - now))
                continue
            track += 1
            t = repr(now).encode()
            if send(head + t + mid + str(track).encode() + mid2 + t + tail):
                n_sent += 1
            else:
                n_drop += 1
            due += interval
        sent.append(n_sent)
        dropped.append(n_drop)
        start = end
    bus.close()
    out.write_text(json.dumps({"sent": sent, "dropped": dropped}))


# -- the backend (client) -----------------------------------------------------------------------------
class CountingClient:
    """Receives on its own event loop thread; keeps (receive time, message timestamp) per imageDetection,
    parsed with string slicing (not JSON) so the client costs little next to the gateway."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.recv: list[tuple[float, float]] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ws: Any = None
        asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result(10)
        self.task = asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, max_size=2**22)

    async def _run(self) -> None:
        marker = '"timestamp":"'
        async for raw in self.ws:
            t = time.time()
            if isinstance(raw, bytes):
                raw = raw.decode()
            if raw.startswith('{"type":"imageDetection"') or '"imageDetection"' in raw[:40]:
                i = raw.find(marker)
                if i >= 0:
                    ts = datetime.fromisoformat(raw[i + len(marker):i + len(marker) + 24].replace("Z", "+00:00"))
                    self.recv.append((t, ts.timestamp()))

    def send(self, msg: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.ws.send(json.dumps(msg)), self.loop).result(10)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.ws.close(), self.loop).result(5)
            self.task.result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the section ------------------------------------------------------------------------------------
def _free_port() -> int:
    from tests.rtsp import free_port

    return free_port()


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fanin(work_root: Path, quick: bool) -> dict[str, Any]:
    n_senders = 20
    rates = ([1000, 4000, 8000, RATE_MAX] if quick else
             [250, 500, 1000, 2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000, RATE_MAX])
    step_s = 2.5 if quick else 5.0
    work = Path(tempfile.mkdtemp(prefix="fanin-", dir=work_root))
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
    senders: list[subprocess.Popen[bytes]] = []
    client: CountingClient | None = None
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    return True
            except OSError:
                return False

        if not wait_until(up, 20, 0.1):
            raise RuntimeError(f"gateway did not start; see {work / 'gateway.log'}")
        client = CountingClient(f"ws://127.0.0.1:{port}/")
        cameras = [f"sim{i:03d}" for i in range(n_senders)]
        client.send({"type": "setSubscriptionList", "payload": [subscription(c, DEAD_RTSP) for c in cameras]})
        time.sleep(1.0)
        schedule = [[float(r), step_s] for r in rates]
        for i, cam in enumerate(cameras):
            per = [[r / n_senders if r else 0.0, d] for r, d in schedule]
            senders.append(subprocess.Popen(
                [PYTHON, "-m", "bench.fanin", "--sender", cam, f"tcp://127.0.0.1:{pull}",
                 f"tcp://127.0.0.1:{control}", json.dumps(per), str(work / f"sender-{i}.json")], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in senders:  # imports and connect first, then a common start
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError("a fan-in sender failed to start")
        t0 = time.time() + 0.5
        for p in senders:
            assert p.stdin is not None
            p.stdin.write(f"{t0!r}\n")
            p.stdin.flush()
        steps = []
        for k, (rate, dur) in enumerate(schedule):
            start = t0 + k * step_s
            while time.time() < start:
                time.sleep(0.01)
            meter = CpuMeter({"gateway": [gw.pid], "senders": [p.pid for p in senders],
                              "client": [os.getpid()]}).start()
            time.sleep(max(0.0, start + dur - time.time()))
            cpu = meter.stop()
            steps.append({"offered": rate, "t0": start, "t1": start + dur, "cpu": cpu})
        for p in senders:
            p.wait(30)
        t_end = t0 + len(schedule) * step_s
        # After the flood: how long until the gateway answers HTTP again (its backlog drained)?
        wait_until(up, 120, 0.2)
        recovery_s = time.time() - t_end
        backend_dropped = _metric(port, "fleet_backend_dropped_messages_total")
        time.sleep(1.0)
        results = [json.loads((work / f"sender-{i}.json").read_text()) for i in range(n_senders)]
        recv = np.asarray(client.recv) if client.recv else np.zeros((0, 2))
        out_steps = []
        for k, s in enumerate(steps):
            sent = sum(r["sent"][k] for r in results)
            dropped = sum(r["dropped"][k] for r in results)
            in_step = recv[(recv[:, 1] >= s["t0"]) & (recv[:, 1] < s["t1"])] if len(recv) else recv
            arrived_in_window = recv[(recv[:, 0] >= s["t0"]) & (recv[:, 0] < s["t1"])] if len(recv) else recv
            lat = summary((in_step[:, 0] - in_step[:, 1]) * 1000) if len(in_step) else summary([])
            dur = s["t1"] - s["t0"]
            out_steps.append({
                "offered": s["offered"], "sent_per_s": sent / dur, "sender_drops_per_s": dropped / dur,
                "delivered_per_s": len(arrived_in_window) / dur, "delivered_of_sent": len(in_step) / max(1, sent),
                "latency_ms": lat, "cpu": s["cpu"]})
            o = out_steps[-1]
            say(f"  offered {'max' if not s['offered'] else int(s['offered']):>5}/s: sent {o['sent_per_s']:7.0f}/s, "
                f"delivered {o['delivered_per_s']:7.0f}/s ({o['delivered_of_sent'] * 100:5.1f}% of sent), "
                f"latency p50/p99 {p50p99(lat, 1)} ms, gateway CPU {s['cpu']['gateway']:.2f} core, "
                f"senders {s['cpu']['senders']:.2f}, others {s['cpu']['others']:.2f}, drops at senders "
                f"{dropped / dur:.0f}/s")
        total_sent = sum(sum(r["sent"]) for r in results)
        say(f"  after the last step the gateway answered HTTP again after {recovery_s:.1f} s; the backend got "
            f"{len(recv)} of {total_sent} messages sent; {backend_dropped:.0f} dropped from the gateway's "
            f"backend outbox (limit 1000, oldest dropped)")
        return {"senders": n_senders, "step_s": step_s, "steps": out_steps, "recovery_s": recovery_s,
                "gateway_yield_every": gateway_yield_every(),
                "backend_dropped": backend_dropped, "total_sent": total_sent, "total_delivered": int(len(recv))}
    finally:
        for p in senders:
            if p.poll() is None:
                p.kill()
                p.wait()
        if client is not None:
            client.close()
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()
        log.close()


def gateway_yield_every() -> int | None:
    """Whether (every how many messages) the gateway's bus intake loop yields to the event loop."""
    import gateway.bus

    value = getattr(gateway.bus, "YIELD_EVERY", None)
    return int(value) if isinstance(value, int) else None


def fanin_table(res: dict[str, Any]) -> str:
    rows = []
    for s in res["steps"]:
        rows.append(["max" if not s["offered"] else f"{s['offered']:.0f}", f"{s['sent_per_s']:.0f}",
                     f"{s['delivered_per_s']:.0f}", f"{s['delivered_of_sent'] * 100:.1f}%",
                     p50p99(s["latency_ms"], 1), f"{s['cpu']['gateway']:.2f}", f"{s['cpu']['senders']:.2f}",
                     f"{s['cpu']['client']:.2f}", f"{s['cpu']['others']:.2f}", f"{s['sender_drops_per_s']:.0f}"])
    return md_table(["offered msg/s", "sent msg/s", "delivered msg/s (arrivals in the step)",
                     "delivered of sent (by send time)", "latency p50 / p99 ms", "CPU gateway", "CPU senders",
                     "CPU client", "CPU others", "sender drops/s (HWM)"], rows)


def saturation(res: dict[str, Any]) -> dict[str, Any]:
    """The highest step delivered in full and in time (>= 99% of sent, p99 < 100 ms), and the peak."""
    good = [s for s in res["steps"] if s["offered"] and s["delivered_of_sent"] >= 0.99
            and s["latency_ms"]["p99"] < 100]
    peak = max(res["steps"], key=lambda s: s["delivered_per_s"])
    return {"sustained_per_s": max((s["delivered_per_s"] for s in good), default=0.0),
            "peak_per_s": peak["delivered_per_s"], "peak_gateway_cpu": peak["cpu"]["gateway"]}


if __name__ == "__main__":
    if sys.argv[1] == "--sender":
        camera, push, control, sched, out = sys.argv[2:7]
        sender(camera, push, control, json.loads(sched), Path(out))
