"""A real fleet for the bench: tests/fleet.py's `Fleet` (supervisord + gateway + event listener in a
temp dir), the real GStreamer RTSP server, a backend WebSocket client that timestamps what it
receives, the packet probe, and readers for the taps' records.

Two bench-only hooks, both outside the project's code:
- the gateway program runs `python -m bench.gwtap` (the real gateway plus timing records) instead of
  `-m gateway.cli`: the generated `fleet.d/gateway.conf` of the temp fleet is edited before start;
- the gateway's `python` setting is `bench/worker_python`, which runs the real worker with or
  without bench/tap.py, or a heartbeat-only stand-in, per $BENCH_TAP_DIR/mode.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector_worker.naming import camera_slug
from tests.fleet import Fleet
from tests.rtsp import RtspServer

from .common import MODEL_ID, MODEL_URL, PYTHON, SHIM, CpuMeter, wait_until

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def subscription(camera: str, url: str, display: str | None = None) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display or 'display-' + camera};{camera}", "rtspUrl": url,
            "modelUrl": MODEL_URL, "modelId": MODEL_ID, "modelName": "stand-in"}


def program_name(camera: str) -> str:
    return f"camera-{camera_slug(camera)}"


# -- the backend -------------------------------------------------------------------------------------
class BackendClient:
    """One WebSocket connection to the gateway; a thread receives and timestamps every message."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._raw: list[tuple[float, str]] = []
        self._parsed: list[tuple[float, dict[str, Any]]] = []
        self.state_reports = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-backend", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                raw = self.ws.recv()
            except Exception:
                return
            t = time.time()
            if '"stateReport"' in raw:
                self.state_reports += 1
                continue
            with self._lock:
                self._raw.append((t, raw))

    def send(self, msg: dict[str, Any]) -> float:
        t = time.time()
        self.ws.send(json.dumps(msg))
        return t

    def set_subscriptions(self, subs: list[dict[str, Any]]) -> float:
        return self.send({"type": "setSubscriptionList", "payload": subs})

    def messages(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            raw, self._raw = self._raw, []
        self._parsed.extend((t, json.loads(r)) for t, r in raw)
        return self._parsed

    def detections(self, camera: str | None = None, after: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages() if m.get("type") == "imageDetection" and t >= after
                and (camera is None or m["subscriptionIdentifier"].split(";", 1)[1] == camera)]

    def errors(self) -> list[dict[str, Any]]:
        return [m for _, m in self.messages() if m.get("type") == "error"]

    def wait_detection(self, camera: str, after: float, timeout: float) -> tuple[float, dict[str, Any]] | None:
        found = wait_until(lambda: self.detections(camera, after), timeout, 0.02)
        return found[0] if found else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


# -- the taps' records -------------------------------------------------------------------------------
@dataclass
class WorkerRun:
    slug: str
    pid: int
    start: float | None = None
    ready: float | None = None
    frames: list[tuple[int | None, int, float, float, float]] = field(default_factory=list)  # stamp, seq, cap, t0, t1
    by_captured: dict[float, tuple[int | None, int, float, float, float]] = field(default_factory=dict)


class Taps:
    """Incremental reader of $BENCH_TAP_DIR/*.jsonl (worker runs and the gateway's records)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._offsets: dict[Path, int] = {}
        self.runs: dict[int, WorkerRun] = {}  # pid -> run
        self.gateway: list[list[Any]] = []

    def refresh(self) -> Taps:
        for path in sorted(self.dir.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n")
            if end < 0:
                continue
            self._offsets[path] = offset + end + 1
            records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
            if path.name == "gateway.jsonl":
                self.gateway.extend(records)
                continue
            slug, _, pid_text = path.stem.removeprefix("worker-").rpartition("-")
            run = self.runs.setdefault(int(pid_text), WorkerRun(slug, int(pid_text)))
            for r in records:
                if r[0] == "start":
                    run.start = r[2]
                elif r[0] == "ready":
                    run.ready = r[1]
                elif r[0] == "f":
                    rec = (r[1], r[2], r[3], r[4], r[5])
                    run.frames.append(rec)
                    run.by_captured[r[3]] = rec
        return self

    def runs_of(self, camera: str) -> list[WorkerRun]:
        slug = camera_slug(camera)
        return sorted((r for r in self.runs.values() if r.slug == slug), key=lambda r: r.start or 0)

    def frames(self, camera: str) -> list[tuple[int | None, int, float, float, float]]:
        return [f for run in self.runs_of(camera) for f in run.frames]

    def frame_at(self, camera: str, captured_at: float) -> tuple[int | None, int, float, float, float] | None:
        for run in self.runs_of(camera):
            rec = run.by_captured.get(captured_at)
            if rec is not None:
                return rec
        return None

    def gw(self, kind: str, after: float = 0.0) -> list[list[Any]]:
        """Gateway records of one kind whose main time is >= after."""
        index = {"det": 6, "relay": 3, "ps": 5, "hello": 3, "cmd": 3, "apply": 1, "bridge": 1}[kind]
        return [r for r in self.gateway if r[0] == kind and r[index] >= after]


class ProbeProcess:
    """bench/probe.py in a child process; `push_time` answers from its records."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.probe", str(out)], stdin=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)
        self._offset = 0
        self.arrivals: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.watching: set[str] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def add(self, name: str, url: str) -> None:
        if name in self.watching:
            return
        self.watching.add(name)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"add {name} {url}\n")
        self.proc.stdin.flush()

    def refresh(self) -> None:
        if not self.out.exists():
            return
        with self.out.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in data[:end].decode().splitlines():
            name, index, t = line.split()
            self.arrivals[name][int(index)].append(float(t))

    def push_time(self, name: str, index: int | None, read_at: float) -> float | None:
        """When the camera sent frame `index` for the read at `read_at` (the latest send before it)."""
        if index is None:
            return None
        times = self.arrivals.get(name, {}).get(index)
        if not times:
            return None
        i = bisect.bisect_right(times, read_at + 0.05)
        if i == 0:
            return None
        t = times[i - 1]
        return t if read_at - t < 10.0 else None

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


# -- the fleet ----------------------------------------------------------------------------------------
class FleetHarness:
    def __init__(self, work: Path, *, model_cache: Path, mode: str = "tap", streams: dict[str, Path] | None = None,
                 cameras: dict[str, Any] | None = None, max_sessions: int = 200, probe: bool = False,
                 starts: dict[str, float] | None = None) -> None:
        self.work = work
        self.tapdir = work / "taps"
        self.tapdir.mkdir(parents=True, exist_ok=True)
        self.set_mode(mode)
        # supervisord passes its environment on to the gateway and every worker
        os.environ["BENCH_TAP_DIR"] = str(self.tapdir)
        os.environ["BENCH_PYTHON"] = PYTHON
        self.fleet = Fleet(work / "fleet", cameras=cameras, model_cache=model_cache, redis_url=REDIS_URL,
                           database_url=DATABASE_URL, cleanup_timeout=30.0, extra={
                               "python": str(SHIM),
                               "session_processes": {"process_cleanup_timeout": 30, "health_check_interval": 10,
                                                     "heartbeat_timeout": 15,
                                                     "max_concurrent_sessions": max_sessions}})
        conf = work / "fleet" / "conf" / "fleet.d" / "gateway.conf"
        conf.write_text(conf.read_text().replace(" -m gateway.cli ", " -m bench.gwtap "))
        self.rtsp = RtspServer(streams, starts=starts) if streams else None
        self.taps = Taps(self.tapdir)
        self.probe: ProbeProcess | None = ProbeProcess(work / "probe.txt") if probe else None
        self.client: BackendClient | None = None

    def set_mode(self, mode: str) -> None:
        (self.tapdir / "mode").write_text(mode)

    def __enter__(self) -> FleetHarness:
        try:
            if self.rtsp is not None:
                self.rtsp.start()
            self.fleet.start()
            self.client = BackendClient(self.fleet.connect())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        # Fleet.stop's last-resort pkill is quiet now (tests/fleet.py had a `pkill -f "--spec ..."` that pkill
        # read as an option and answered with its usage); keep its output off the bench's anyway, and end any
        # leftover of this fleet ourselves, by pid.
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        try:
            os.dup2(devnull, 2)
            self.fleet.stop()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        self._end_leftovers()
        if self.probe is not None:
            self.probe.close()
        if self.rtsp is not None:
            self.rtsp.close()

    def _end_leftovers(self) -> None:
        import psutil

        marker = str(self.work / "fleet" / "run" / "specs")
        left = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or []):
                    proc.kill()
                    left.append(proc)
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=5)

    @property
    def backend(self) -> BackendClient:
        assert self.client is not None
        return self.client

    def url(self, name: str) -> str:
        assert self.rtsp is not None
        return self.rtsp.url(name)

    def worker_pids(self) -> dict[str, int]:
        """program name -> pid of running camera programs."""
        return {name: pid for name, (state, pid) in self.fleet.programs().items() if pid}

    def cpu_meter(self, pids: dict[str, int], fixed: dict[str, int] | None = None) -> CpuMeter:
        """A started CpuMeter over the camera workers `pids` and every other process of the fleet and bench
        (`fixed`: fixed_pids(), when the caller has them already)."""
        fixed = fixed if fixed is not None else self.fixed_pids()
        assert self.rtsp is not None and self.rtsp.proc is not None and self.probe is not None
        return CpuMeter({"workers": list(pids.values()), "gateway": [fixed.get("gateway", 0)],
                         "supervisord+listener": [fixed["supervisord"], fixed.get("camera-events", 0)],
                         "rtsp_server": [self.rtsp.proc.pid], "probe": [self.probe.pid],
                         "bench_client": [os.getpid()]}).start()

    def fixed_pids(self) -> dict[str, int]:
        rpc = self.fleet.rpc().supervisor
        out = {"supervisord": int(rpc.getPID())}
        for name in ("gateway", "camera-events"):
            pid = int(rpc.getProcessInfo(name)["pid"])
            if pid:
                out[name] = pid
        return out
