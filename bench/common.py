"""Shared bits of the bench: paths, statistics, tables, CPU and memory accounting, the machine."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
SHIM = BENCH / "worker_python"  # the gateway's `python` in bench fleets (see harness.py)
# Clips and the exported model cache survive between runs here (deterministic, so safe to reuse).
CACHE = Path(os.environ.get("FLEET_BENCH_CACHE", Path(tempfile.gettempdir()) / "fleet-bench-cache"))
MODEL_ID = "standin-bench"
ARCHIVE = ROOT / "models" / "car_frontal_pipeline.mpta"
MODEL_URL = ARCHIVE.as_uri()
DEAD_RTSP = "rtsp://127.0.0.1:9/dead"  # discard port: nothing listens, connect is refused at once


def say(text: str = "") -> None:
    print(text, flush=True)


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def summary(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "max": float("nan"),
                "min": float("nan")}
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "mean": float(arr.mean()), "max": float(arr.max()), "min": float(arr.min())}


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and (np.isnan(x) or np.isinf(x))):
        return "–"
    return f"{x:.{digits}f}"


def p50p99(s: dict[str, float], digits: int = 1) -> str:
    return f"{fmt(s['p50'], digits)} / {fmt(s['p99'], digits)}" if s.get("n") else "–"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- memory ----------------------------------------------------------------------------------------
def smaps_rollup(pid: int) -> dict[str, float]:
    """Rss and Pss of one process in MB, from /proc/PID/smaps_rollup."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:", "Pss_Anon:", "Pss_File:", "Swap:"):
                out[parts[0][:-1].lower()] = int(parts[1]) / 1024
    except OSError:
        pass
    return out


# -- CPU -------------------------------------------------------------------------------------------
def _proc_cpu(pid: int) -> float | None:
    """utime+stime of a process in seconds (its own, not its children's)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _system_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) jiffies-as-seconds of the whole machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(v) for v in fields]
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz, steal / hz


@dataclass
class CpuMeter:
    """CPU used by named groups of processes between start() and stop(), in cores (1.0 = one core busy)."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    _t0: float = 0.0
    _start: dict[int, float] = field(default_factory=dict)
    _sys0: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._sys0 = _system_cpu()
        self._start = {pid: c for pids in self.groups.values() for pid in pids if (c := _proc_cpu(pid)) is not None}
        return self

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self._t0)
        busy1, _, steal1 = _system_cpu()
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            used = 0.0
            for pid in pids:
                c = _proc_cpu(pid)
                if c is not None and pid in self._start:
                    used += c - self._start[pid]
            out[name] = used / wall
        out["machine_busy"] = (busy1 - self._sys0[0]) / wall
        out["steal"] = (steal1 - self._sys0[2]) / wall
        out["others"] = max(0.0, out["machine_busy"] - sum(v for k, v in out.items()
                                                           if k not in ("machine_busy", "steal")))
        return out


def machine_busy(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over `seconds` (what the other users are doing before we start)."""
    b0, _, _ = _system_cpu()
    time.sleep(seconds)
    b1, _, _ = _system_cpu()
    return (b1 - b0) / seconds


# -- the machine -----------------------------------------------------------------------------------
PACKAGES = ("torch", "torchvision", "ultralytics", "onnxruntime", "opencv-python-headless", "numpy", "av",
            "pyzmq", "websockets", "supervisor", "pydantic", "psutil", "matplotlib")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    gst = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "gir1.2-gst-rtsp-server-1.0"], capture_output=True,
                         text=True, check=False).stdout.strip()
    versions["gst-rtsp-server (Debian)"] = gst or "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    hypervisor = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Hypervisor vendor:"):
                hypervisor = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "hypervisor": hypervisor,
        "ram_gib": round(mem_kb / 2**20, 1), "os": os_name, "kernel": platform.release(),
        "python": platform.python_version(), "packages": versions,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "loadavg": os.getloadavg(),
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def prepare_models() -> Path:
    """The stand-in archive unpacked into the bench's model cache, with its ONNX exports (made once,
    in a child process, so torch never enters this one). Bench fleets use this cache directory."""
    from detector_worker.pipeline.archive import open_archive
    from detector_worker.pipeline.export import export_in_subprocess, is_fresh, model_files

    model_dir, _ = open_archive(MODEL_URL, CACHE / "models", MODEL_ID)
    if not all(is_fresh(pt) for pt in model_files(model_dir)):
        say("exporting the stand-in models to ONNX (once; cached in %s)" % (CACHE / "models"))
        export_in_subprocess(model_dir)
    return model_dir
