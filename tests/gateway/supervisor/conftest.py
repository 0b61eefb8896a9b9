"""A real, throwaway supervisord per test, plus a tiny stand-in worker to run under it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from gateway.supervisor.programs import ProgramSpec
from gateway.supervisor.rpc import ProcessInfo, SupervisorClient

VENV_BIN = Path(sys.executable).parent
SUPERVISORD = VENV_BIN / "supervisord"
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
PROJECT_DIR = Path(__file__).resolve().parents[3]

CONF = """\
[unix_http_server]
file={run}/s.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={run}/supervisord.log
pidfile={run}/supervisord.pid
childlogdir={logs}
directory={root}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run}/s.sock

[include]
files = supervisord.d/*.conf
"""


class Supervisord:
    """supervisord on `root` (conf in root, programs in root/supervisord.d, socket in root/run)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.conf_dir = root / "supervisord.d"
        self.logs = root / "logs"
        self.specs = root / "specs"
        self.socket = self.run_dir / "s.sock"
        assert len(str(self.socket)) < 100, "unix socket paths are limited to 107 bytes"
        for d in (self.run_dir, self.conf_dir, self.logs, self.specs):
            d.mkdir(exist_ok=True)
        self.run_dir.chmod(0o700)
        self.conf = root / "supervisord.conf"
        self.conf.write_text(CONF.format(run=self.run_dir, logs=self.logs, root=root))
        self.client = SupervisorClient(self.socket, timeout_s=5)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(SUPERVISORD), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if asyncio.run(self.client.state()) == "RUNNING":
                    return
            assert self.proc.poll() is None, (self.run_dir / "supervisord.log").read_text()
            time.sleep(0.05)
        raise AssertionError("supervisord did not come up")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Stop all programs at once first: supervisord's shutdown stops them one by one. wait=False:
            # stopAllProcesses(wait=True) takes >= 1 s even when every program exits at once.
            with contextlib.suppress(Exception):
                asyncio.run(self.client.stop_all(wait=False))
            self.proc.send_signal(signal.SIGTERM)
            # supervisord notices signals and dead children only when its poll() returns (a 1 s
            # tick when idle): any connection wakes it.
            deadline = time.monotonic() + 15
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as knock:
                    knock.connect(str(self.socket))
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill_leftovers(self) -> None:
        """Anything still running from this test's directory (orphans of a kill -9'd supervisord)."""
        marker = str(self.root)
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.pid != me and any(marker in part for part in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def program(self, name: str, *args: str, **overrides: object) -> ProgramSpec:
        """A stand-in worker program: `python fake_worker.py detector_worker.cli --spec specs/<name>.json ARGS`."""
        options: dict[str, object] = {
            "name": name,
            "command": [sys.executable, str(FAKE_WORKER), "detector_worker.cli", "--spec",
                        str(self.specs / f"{name}.json"), *args],
            "directory": self.root,
            "environment": {"PYTHONUNBUFFERED": "1"},
            "stdout_logfile": self.logs / f"{name}.log",
        }
        options.update(overrides)
        return ProgramSpec(**options)  # type: ignore[arg-type]


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Supervisord]:
    sv = Supervisord(tmp_path)
    sv.start()
    try:
        yield sv
    finally:
        sv.stop()
        sv.kill_leftovers()


async def wait_state(client: SupervisorClient, name: str, states: set[str], timeout_s: float = 10) -> ProcessInfo:
    """Poll until `name` is in one of `states`; its info then."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = await client.process_info(name)
        if info.state in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {info.state}, wanted {states}")
        await asyncio.sleep(0.05)


async def running_pids(client: SupervisorClient, names: Iterable[str]) -> dict[str, int]:
    """Wait until each program has a live pid (STARTING or RUNNING); name -> pid."""
    return {n: (await wait_state(client, n, {"STARTING", "RUNNING"})).pid for n in names}
