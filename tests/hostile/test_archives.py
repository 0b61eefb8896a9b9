"""Model archives cannot take over the host: real worker processes get hostile archives.

Each worker here is the real daemon (`python -m detector_worker.cli`) with a real bus (tests'
BusGateway); its stream is a dead RTSP URL (hostile/conftest), so it only builds its pipelines.
A `.pt` is a pickle: the hostile archives' models create a canary file when unpickled the unsafe
way (a positive control below shows they do). Workers run ONNX only, so the canary never appears.
"""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detector_worker.comms.messages import Heartbeat, Status
from detector_worker.synthetic.standin import ARCHIVE_NAME, BODY, BRAND, DETECTOR, pack_archive, standin_pipeline
from tests.busgateway import BusGateway
from tests.conftest import MODELS
from tests.hostile.conftest import MODEL_ID

pytestmark = pytest.mark.slow
WORKER = [sys.executable, "-m", "detector_worker.cli"]
EXIT_CANNOT_START = 1


class SystemCanary:
    """Unpickled the unsafe way, runs `touch <path>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.path}",)


class OpenCanary:
    """Unpickled the unsafe way, opens `<path>` for writing (creates it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.path), "w")


def hostile_archive(tmp_path: Path, canary: Path, name: str = "hostile.mpta") -> Path:
    """The stand-in pipeline.json whose three .pt files are pickles that create `canary`."""
    import torch

    out = tmp_path / "hostile-models"
    out.mkdir(exist_ok=True)
    files = {}
    for i, model in enumerate((DETECTOR, BRAND, BODY)):
        bomb = SystemCanary(canary) if i % 2 == 0 else OpenCanary(canary)
        torch.save({"model": bomb, "train_args": {"imgsz": 64}}, out / f"{model}.pt")
        files[f"{model}.pt"] = out / f"{model}.pt"
    return pack_archive(tmp_path / name, standin_pipeline(96, 64), files)


def pt_only_archive(tmp_path: Path) -> Path:
    """The stand-in archive as it was before ONNX packing: real models, .pt files only."""
    files = {f"{m}.pt": MODELS / f"{m}.pt" for m in (DETECTOR, BRAND, BODY)}
    return pack_archive(tmp_path / "pt-only.mpta", standin_pipeline(96, 64), files)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def gateway() -> Iterator[BusGateway]:
    with BusGateway() as gw:
        yield gw


class Server:
    """A local HTTP server for archives; `rate` bytes/s throttles it (None: full speed)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.rate: float | None = None
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = state.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = 64 * 1024
                for i in range(0, len(body), step):
                    try:
                        self.wfile.write(body[i:i + step])
                    except OSError:
                        return
                    if state.rate:
                        time.sleep(step / state.rate)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log_dir: Path, camera: str) -> None:
        self.proc, self.log_dir, self.camera = proc, log_dir, camera

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log*")))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def start_worker(tmp_path: Path, gateway: BusGateway, dead_rtsp_url: str, module_redis_url: str,
                 module_database_url: str) -> Iterator[Callable[..., Worker]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(camera: str, models: dict[str, str], *, cache: Path, policy: dict[str, Any] | None = None,
              source: str | None = None) -> Worker:
        url = source or dead_rtsp_url
        spec: dict[str, Any] = {
            "camera_id": camera,
            "source": {"kind": "rtsp", "url": url, "open_timeout_s": 3, "read_timeout_s": 3},
            "subscriptions": [{"subscription_identifier": f"{display};{camera}", "source": {"kind": "rtsp", "url": url},
                               "model": {"url": model_url, "id": MODEL_ID}} for display, model_url in models.items()],
            "max_fps": 5,
            "bus": {"push_endpoint": gateway.push_endpoint, "control_endpoint": gateway.control_endpoint,
                    "heartbeat_interval_s": 0.5, "status_interval_s": 1},
            "log": {"directory": str(tmp_path / f"logs-{camera}")},
            "model_cache_dir": str(cache),
            "model_policy": policy or {},
            "stores": {"redis_url": module_redis_url, "database_url": module_database_url},
        }
        path = tmp_path / f"{camera}.json"
        path.write_text(json.dumps(spec))
        path.chmod(0o600)
        proc = subprocess.Popen([*WORKER, "--spec", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return Worker(proc, tmp_path / f"logs-{camera}", camera)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cannot_start_line(worker: Worker) -> str:
    lines = [line for line in worker.log().splitlines() if "cannot start" in line]
    assert len(lines) == 1, worker.log()[-3000:]
    return lines[0]


def test_the_canary_works_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Positive control: what the old export did (torch.load with weights_only=False) runs the pickle."""
    canary = tmp_path / "canary-control"
    archive_dir = tmp_path / "control"
    hostile_archive(archive_dir.parent, canary, "control.mpta")
    pt = tmp_path / "hostile-models" / f"{DETECTOR}.pt"
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(pt)!r}, weights_only=False)"],
                   check=False, capture_output=True, timeout=120)
    assert canary.exists()


@pytest.mark.parametrize("delivery", ["file", "http"])
def test_pickle_archive_is_refused_and_never_executed(tmp_path: Path, server: Server, start_worker: Any,
                                                      delivery: str) -> None:
    canary = tmp_path / f"canary-{delivery}"
    archive = hostile_archive(tmp_path, canary)
    server.files["hostile.mpta"] = archive.read_bytes()
    url = archive.as_uri() if delivery == "file" else f"{server.base}/hostile.mpta"
    worker = start_worker(f"cam-{delivery}", {"display-1": url}, cache=tmp_path / "cache")
    assert worker.wait(60) == EXIT_CANNOT_START
    line = cannot_start_line(worker)
    assert "workers run ONNX only" in line
    assert f"add {sha256(archive)} to models.convert_pt_sha256" in line and "models.convert_pt_from" in line
    assert not canary.exists()
    # nothing of it was converted: the cached archive holds no .onnx
    assert not list((tmp_path / "cache").glob("sha256-*/*.onnx"))


def test_pickle_archive_allowed_by_digest_is_still_not_executed(tmp_path: Path, start_worker: Any) -> None:
    canary = tmp_path / "canary-allowed"
    archive = hostile_archive(tmp_path, canary)
    worker = start_worker("cam-allowed", {"display-1": archive.as_uri()}, cache=tmp_path / "cache",
                          policy={"convert_pt_sha256": [sha256(archive)]})
    assert worker.wait(120) == EXIT_CANNOT_START
    line = cannot_start_line(worker)
    assert "refused by torch's safe loader (weights_only=True)" in line
    assert "posix.system" in line or "builtins.open" in line or "GLOBAL" in line, line
    assert not canary.exists()


def test_pt_only_archive_is_refused_by_default_and_converted_when_allowed(
        tmp_path: Path, gateway: BusGateway, start_worker: Any) -> None:
    archive = pt_only_archive(tmp_path)
    cache = tmp_path / "cache"
    refused = start_worker("cam-pt-refused", {"display-1": archive.as_uri()}, cache=cache)
    assert refused.wait(60) == EXIT_CANNOT_START
    assert f"add {sha256(archive)} to models.convert_pt_sha256" in cannot_start_line(refused)

    allowed = start_worker("cam-pt-allowed", {"display-1": archive.as_uri()}, cache=cache,
                           policy={"convert_pt_from": [f"file://{tmp_path}/"]})
    gateway.wait_for(lambda: any(s.display_errors == {} for s in gateway.statuses("cam-pt-allowed")), 240,
                     "the converted archive running")
    phases = [m.phase for m in gateway.of_type(Heartbeat, "cam-pt-allowed")]  # type: ignore[attr-defined]
    assert "converting" in phases and phases.index("converting") < phases.index("running"), phases
    onnx = sorted(p.name for p in cache.glob(f"sha256-{sha256(archive)}/*.onnx"))
    assert onnx == sorted(f"{m}.onnx" for m in (DETECTOR, BRAND, BODY))  # live with their content
    assert "converted" in allowed.log() and "confined child" in allowed.log()


def test_fifo_url_is_refused_at_once(tmp_path: Path, start_worker: Any) -> None:
    fifo = tmp_path / "pipe.mpta"
    os.mkfifo(fifo)
    start = time.monotonic()
    worker = start_worker("cam-fifo", {"display-1": fifo.as_uri()}, cache=tmp_path / "cache")
    assert worker.wait(20) == EXIT_CANNOT_START
    assert time.monotonic() - start < 10  # the interpreter's start-up; the refusal itself is at once
    assert "is a FIFO, not a regular file: refused" in cannot_start_line(worker)


def test_one_broken_display_does_not_take_down_the_others(tmp_path: Path, gateway: BusGateway,
                                                           start_worker: Any, hostile_model_cache: Path) -> None:
    canary = tmp_path / "canary-mixed"
    bad = hostile_archive(tmp_path, canary)
    worker = start_worker("cam-mixed", {"display-good": (MODELS / ARCHIVE_NAME).as_uri(),
                                        "display-bad": bad.as_uri()}, cache=hostile_model_cache)

    def errors() -> dict[str, str] | None:
        statuses: list[Status] = gateway.statuses("cam-mixed")
        return statuses[-1].display_errors if statuses else None

    found = gateway.wait_for(errors, 60, "a status naming the broken display")
    assert list(found) == ["display-bad"] and "models.convert_pt_sha256" in found["display-bad"]  # type: ignore[index]
    assert worker.proc.poll() is None  # the worker runs its good display
    heartbeats = gateway.of_type(Heartbeat, "cam-mixed")
    assert heartbeats[-1].phase == "running"  # type: ignore[attr-defined]
    log = worker.log()
    assert "display display-bad cannot start" in log and "pipeline car_frontal_detection_v1 loaded" in log
    assert not canary.exists()


def test_worker_heartbeats_while_it_fetches_a_slow_archive(tmp_path: Path, gateway: BusGateway, server: Server,
                                                          start_worker: Any) -> None:
    data = (MODELS / ARCHIVE_NAME).read_bytes()
    server.files["slow.mpta"] = data
    server.rate = 1_000_000  # 1 MB/s: ~10 s for the stand-in archive
    started = time.monotonic()
    start_worker("cam-slow", {"display-1": f"{server.base}/slow.mpta"}, cache=tmp_path / "cache")
    gateway.wait_for(lambda: any(m.phase == "running" for m in gateway.of_type(Heartbeat, "cam-slow")),  # type: ignore[attr-defined]
                     90, "the worker running")
    took = time.monotonic() - started
    beats: list[Heartbeat] = gateway.of_type(Heartbeat, "cam-slow")  # type: ignore[assignment]
    fetching = [b for b in beats if b.phase == "fetching"]
    assert took > len(data) / server.rate * 0.8
    # heartbeats every 0.5 s through the whole fetch, with progress
    assert len(fetching) >= (len(data) / server.rate) / 0.5 * 0.6, [(b.phase, b.detail) for b in beats]
    got = [int(b.detail.split(": ")[-1].split(" of ")[0]) for b in fetching
           if b.detail and " of " in b.detail and b.detail.split(": ")[-1].split(" of ")[0].isdigit()]
    assert got == sorted(got) and got[-1] > got[0], got
    gaps = [b.sent_at - a.sent_at for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 1.5, gaps
    assert beats[0].phase in ("starting", "fetching")
