"""Run scripts/rtsp_server.py (a real GStreamer RTSP server) from tests.

    with RtspServer({"cam1": "a.mp4"}) as srv:
        cap = cv2.VideoCapture(srv.url("cam1"), cv2.CAP_FFMPEG)
        srv.kill(); srv.restart()      # camera outage, same URL afterwards
        srv.freeze(); srv.thaw()       # camera hangs (SIGSTOP/SIGCONT)

The server needs Debian's /usr/bin/python3 (python3-gi), not the venv.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
EXIT_CANNOT_LISTEN = 1  # rtsp_server.py's exit code when bind/listen fails


class RtspServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RtspServer:
    """One rtsp_server.py process; the port is picked once and kept across restarts."""

    def __init__(
        self,
        streams: Mapping[str, str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout: float = 15.0,
        starts: Mapping[str, float] | None = None,
    ) -> None:
        self.streams = {name: str(path) for name, path in streams.items()}
        self.starts = dict(starts or {})  # name -> the clip second its camera starts at (out of step)
        self.host = host
        self._port = port
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.stream_info: dict[str, str] = {}  # name -> "WxH@FPS" from the STREAM lines
        self._logdir = tempfile.TemporaryDirectory(prefix="rtsp-server-")
        self._out = Path(self._logdir.name, "stdout")
        self._err = Path(self._logdir.name, "stderr")

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stderr(self) -> str:
        """stderr of the current (or last) server process."""
        return self._err.read_text(errors="replace") if self._err.exists() else ""

    def url(self, name: str) -> str:
        return f"rtsp://{self.host}:{self.port}/{name}"

    def start(self) -> Self:
        """Launch and wait for READY; raises RtspServerError (with stderr) on failure."""
        if self.running:
            raise RtspServerError("RTSP server is already running")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            error = self._launch_and_wait(deadline)
            if error is None:
                return self
            # Port still held (e.g. the killed server's socket): retry briefly.
            if self.proc is not None and self.proc.returncode == EXIT_CANNOT_LISTEN \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RtspServerError(error)

    def restart(self) -> Self:
        """Kill the server if still running, then start it again on the same port."""
        if self.running:
            self.kill()
        return self.start()

    def kill(self) -> None:
        """SIGKILL (works even when frozen) and reap."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open but stops sending (a hung camera)."""
        self._require_running().send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: undo freeze()."""
        self._require_running().send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait; returns the exit code (0 on a clean shutdown)."""
        if self.proc is None:
            raise RtspServerError("RTSP server was never started")
        if self.proc.poll() is not None:
            return self.proc.returncode
        if self.frozen:  # a stopped process would not handle SIGTERM until resumed
            self.thaw()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RtspServerError(f"RTSP server ignored SIGTERM for {timeout}s") from None

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(RtspServerError):  # already killed by stop()
                self.stop()
        self._logdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self.proc is None or not self.running:
            raise RtspServerError("RTSP server is not running")
        return self.proc

    def _launch_and_wait(self, deadline: float) -> str | None:
        cmd = [SYSTEM_PYTHON, str(SCRIPT), "--host", self.host, "--port", str(self.port)]
        for name, path in self.streams.items():
            cmd += ["--stream", f"{name}={path}"]
        for name, start in self.starts.items():
            cmd += ["--start", f"{name}={start:g}"]
        # Output goes to files, not pipes: nobody drains them after READY, and
        # a full pipe would block the server.
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.frozen = False
        while True:
            lines = self._out.read_text(errors="replace").splitlines()
            if any(line.startswith("READY ") for line in lines):
                self.stream_info = {
                    p[1]: p[3] for p in (line.split() for line in lines)
                    if len(p) == 4 and p[0] == "STREAM"
                }
                return None
            if self.proc.poll() is not None:
                return (f"RTSP server exited with code {self.proc.returncode} before READY:"
                        f"\n{self.stderr.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                return (f"RTSP server not READY within {self.ready_timeout}s:"
                        f"\n{self.stderr.strip()}")
            time.sleep(0.02)
