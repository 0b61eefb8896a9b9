"""Section 9c: bus throughput, ipc:// (this host) vs tcp:// with CURVE (other hosts), in processes.

One receiver process and N sender processes per run. Receivers:
- `gateway`: the gateway's own `GatewayBus` (gateway/bus.py), bound as with `hosts:` configured
  (ipc:// PULL/ROUTER, then tcp:// with CURVE and the ZAP allow-list), counting what it hands to its
  message callback: receive + pydantic decode, the gateway's whole intake path minus the handlers;
- `raw`: a bare ZeroMQ PULL on the same endpoints (CURVE server on tcp://), counting bytes: the
  transport's own limit without our decode.
Senders open the real worker bus (`WorkerBus`: PUSH with the worker's options, CURVE client keys on
tcp://) and send one message encoded once by the message module, M times, blocking on the
high-water mark (back-pressure, no drops): a detection with its dashboard thumbnail (~1.5 KB) or a
snapshot (~60 KB). tcp:// runs over 127.0.0.1 (loopback, no network in between).

    python -m bench.curvebus --receiver KIND KEYS IPC_DIR TCP_PUSH TCP_CONTROL EXPECTED TIMEOUT_S
    python -m bench.curvebus --sender SIZE PUSH CONTROL KEYS COUNT
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from .common import PYTHON, ROOT, CpuMeter, md_table, say

SIZES = ("detection", "snapshot")
TRANSPORTS = ("ipc", "curve")
RECEIVERS = ("gateway", "raw")


def _template(size: str, camera: str) -> bytes:
    from detector_worker.comms.messages import DisplayDetection, Snapshot, SnapshotTrack, VehicleResult, encode

    rnd = random.Random(1)
    if size == "snapshot":  # a 640x480 JPEG at the dashboard's quality is ~45 KB: 60 KB of base64
        jpeg = base64.b64encode(rnd.randbytes(45_000)).decode()
        tracks = [SnapshotTrack(box=(100.0 + i, 120.0, 420.0, 400.0), track_id=i, still=0.5) for i in range(3)]
        return encode(Snapshot(camera=camera, sent_at=time.time(), jpeg_b64=jpeg, width=640, height=480,
                               captured_at=time.time(), tracks=tracks))
    vehicle = VehicleResult(car_box=(100.0, 120.0, 420.0, 400.0), frontal_box=(130.0, 260.0, 400.0, 380.0),
                            confidence=0.93, brand="Aurex", brand_confidence=0.99, body_type="Sedan",
                            body_type_confidence=0.98, fields={"car_brand_cls_v1.brand": "Aurex"})
    return encode(DisplayDetection(camera=camera, sent_at=time.time(), subscription_identifier=f"d-{camera};{camera}",
                                   display_id=f"d-{camera}", session_id=None, track_id=7, model_id="standin-bench",
                                   model_name="stand-in", captured_at=time.time(), inference_ms=10.0, vehicle=vehicle,
                                   thumb_b64=base64.b64encode(rnd.randbytes(600)).decode()))


def sender(size: str, push: str, control: str, keys: Path, count: int) -> None:
    import zmq.auth

    from detector_worker.comms.bus import WorkerBus
    from detector_worker.config.spec import CurveClient

    curve = None
    if push.startswith("tcp://"):
        server = zmq.auth.load_certificate(keys / "gateway.key")[0].decode()
        curve = CurveClient(server_public_key=server, secret_key_file=keys / "host.key_secret")
    camera = f"bus{os.getpid()}"
    bus = WorkerBus(camera, camera, push, control, curve=curve)
    data = _template(size, camera)
    print(f"READY {len(data)}", flush=True)
    sys.stdin.readline()  # the common start
    sock = bus._push  # WorkerBus.send minus the per-message encode (the senders must not be the limit)
    for _ in range(count):
        sock.send(data)  # blocking at the high-water mark: back-pressure instead of drops
    print("SENT", flush=True)
    sys.stdin.readline()  # close only once the receiver has everything (LINGER 0 drops the queue)
    bus.close()


class _Count:
    def __init__(self, expected: int) -> None:
        self.expected, self.n, self.nbytes = expected, 0, 0
        self.first = self.last = (0.0, 0.0)  # (perf_counter, process_time) at the first and last message

    def add(self, nbytes: int) -> bool:
        self.n += 1
        self.nbytes += nbytes
        self.last = (time.perf_counter(), time.process_time())
        if self.n == 1:
            self.first = self.last
        return self.n >= self.expected

    def result(self) -> dict[str, Any]:
        wall = self.last[0] - self.first[0]
        return {"received": self.n, "bytes": self.nbytes, "wall_s": wall, "cpu_s": self.last[1] - self.first[1]}


def _bus_keys(keys: Path) -> tuple[bytes, bytes]:
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys / "gateway.key_secret")
    assert secret is not None
    return public, secret


async def _gateway_receiver(keys: Path, ipc: Path, tcp: tuple[str, str], count: _Count, timeout: float) -> None:
    import zmq.auth

    from gateway.bus import GatewayBus, RemoteBus

    host_key = zmq.auth.load_certificate(keys / "host.key")[0].decode()
    bus = GatewayBus(f"ipc://{ipc}/push", f"ipc://{ipc}/control",
                     RemoteBus(tcp[0], tcp[1], keys / "gateway.key_secret", {host_key: "bench"}))
    done = asyncio.Event()

    def on_message(msg: object) -> None:
        if count.add(0):
            done.set()

    async def on_hello(hello: object, identity: bytes) -> None:
        return None

    bus.start(on_message, on_hello, lambda: None)
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):  # what arrived by then is counted
        await asyncio.wait_for(done.wait(), timeout)
    await bus.close()


def _raw_receiver(keys: Path, ipc: Path, tcp_push: str, count: _Count, timeout: float) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"ipc://{ipc}/push")
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = _bus_keys(keys)
    sock.bind(tcp_push)  # security options apply to the binds that follow them, as in GatewayBus
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    print("READY", flush=True)
    try:
        while not count.add(len(sock.recv(copy=False))):
            pass
    except zmq.Again:
        pass
    sock.close(0)
    ctx.term()


def receiver(kind: str, keys: Path, ipc: Path, tcp: tuple[str, str], expected: int, timeout: float) -> None:
    count = _Count(expected)
    if kind == "gateway":
        asyncio.run(_gateway_receiver(keys, ipc, tcp, count, timeout))
    else:
        _raw_receiver(keys, ipc, tcp[0], count, timeout)
    print(json.dumps(count.result()), flush=True)


def _one(work: Path, size: str, transport: str, kind: str, senders: int, per_sender: int) -> dict[str, Any]:
    from tests.rtsp import free_port

    keys, ipc = work / "keys", Path(tempfile.mkdtemp(prefix="ipc-", dir=work))
    tcp = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    push, control = (f"ipc://{ipc}/push", f"ipc://{ipc}/control") if transport == "ipc" else tcp
    expected = senders * per_sender
    args = [kind, str(keys), str(ipc), *tcp, str(expected), "120"]
    rx = subprocess.Popen([PYTHON, "-m", "bench.curvebus", "--receiver", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
    txs: list[subprocess.Popen[str]] = []
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "READY", "receiver failed"
        txs = [subprocess.Popen([PYTHON, "-m", "bench.curvebus", "--sender", size, push, control, str(keys),
                                 str(per_sender)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(senders)]
        ready = [p.stdout.readline().split() for p in txs if p.stdout is not None]
        assert all(r and r[0] == "READY" for r in ready) and len(ready) == senders, "a sender failed"
        meter = CpuMeter({"receiver": [rx.pid], "senders": [p.pid for p in txs]}).start()
        for p in txs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        got = json.loads(rx.stdout.readline())
        cpu = meter.stop()
        rx.wait(30)
    finally:
        for p in txs:
            if p.poll() is None and p.stdin is not None:
                p.stdin.write("quit\n")
                p.stdin.close()
        for p in [*txs, rx]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    nbytes = int(ready[0][1])
    rate = (got["received"] - 1) / got["wall_s"] if got["wall_s"] > 0 else float("nan")
    row = {"size": size, "message_bytes": nbytes, "transport": transport, "receiver": kind, "senders": senders,
           "sent": expected, "received": got["received"], "msgs_per_s": rate, "mb_per_s": rate * nbytes / 1e6,
           "receiver_cores": got["cpu_s"] / got["wall_s"] if got["wall_s"] > 0 else float("nan"),
           "receiver_cpu_us_per_msg": got["cpu_s"] / max(1, got["received"] - 1) * 1e6,
           "senders_cores": cpu["senders"], "others_cores": cpu["others"], "loadavg": os.getloadavg()}
    say(f"  {size:9} ({nbytes} B) {transport:5} → {kind:7}: {rate:8.0f} msg/s, {row['mb_per_s']:7.1f} MB/s, "
        f"receiver {row['receiver_cores']:.2f} core ({row['receiver_cpu_us_per_msg']:.0f} µs/msg), senders "
        f"{cpu['senders']:.2f}, others {cpu['others']:.2f}; {got['received']}/{expected} received")
    return row


def bus_throughput(work: Path, quick: bool) -> dict[str, Any]:
    import zmq.auth

    (work / "keys").mkdir(parents=True, exist_ok=True)
    for name in ("gateway", "host"):
        zmq.auth.create_certificates(work / "keys", name)
    senders = 2 if quick else 4
    counts = {"detection": 2_000 if quick else 25_000, "snapshot": 200 if quick else 1_500}
    rows = [_one(work, size, transport, kind, senders, counts[size])
            for size in SIZES for transport in TRANSPORTS for kind in RECEIVERS]
    return {"senders": senders, "per_sender": counts, "tcp": "127.0.0.1 (loopback)", "rows": rows}


def bus_table(res: dict[str, Any]) -> str:
    rows = [[f"{r['size']} ({r['message_bytes'] / 1000:.1f} KB)", "ipc://" if r["transport"] == "ipc" else
             "tcp:// + CURVE", "GatewayBus (recv + decode)" if r["receiver"] == "gateway" else "raw zmq PULL",
             f"{r['msgs_per_s']:.0f}", f"{r['mb_per_s']:.1f}", f"{r['receiver_cores']:.2f}",
             f"{r['receiver_cpu_us_per_msg']:.1f}", f"{r['senders_cores']:.2f}", f"{r['others_cores']:.2f}",
             f"{r['received']}/{r['sent']}"] for r in res["rows"]]
    return md_table(["message", "transport", "receiver", "messages/s", "MB/s", "receiver CPU (cores)",
                     "receiver CPU µs/message", "senders CPU", "others CPU", "received"], rows)


if __name__ == "__main__":
    if sys.argv[1] == "--sender":
        sender(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]), int(sys.argv[6]))
    elif sys.argv[1] == "--receiver":
        kind, keys_dir, ipc_dir, tcp_push, tcp_control, expected, timeout = sys.argv[2:9]
        receiver(kind, Path(keys_dir), Path(ipc_dir), (tcp_push, tcp_control), int(expected), float(timeout))
