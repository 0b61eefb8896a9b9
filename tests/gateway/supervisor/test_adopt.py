"""adopt_or_clean: worker processes that supervisord did not start are ended, supervised ones kept."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gateway.supervisor.bridge import SupervisorBridge
from gateway.supervisor.rpc import SupervisorUnavailable

from .conftest import FAKE_WORKER, Supervisord, running_pids


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def worker_like(spawn: list[subprocess.Popen[bytes]], spec: str, *extra: str, cwd: Path | None = None) -> int:
    proc = subprocess.Popen([sys.executable, str(FAKE_WORKER), "detector_worker.cli", "--spec", spec, *extra],
                            cwd=cwd, stdout=subprocess.DEVNULL)
    spawn.append(proc)
    return proc.pid


def wait_exec(pid: int) -> None:
    # Until its interpreter is up, a signal could land before the handler (fine) or the cmdline
    # could still be the parent's (would not match): wait until it shows the worker's cmdline.
    deadline = time.monotonic() + 5
    while "detector_worker.cli" not in psutil.Process(pid).cmdline() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def test_orphans_are_ended_supervised_and_unrelated_are_not(supervisord: Supervisord,
                                                            spawn: list[subprocess.Popen[bytes]]) -> None:
    sv = supervisord
    orphan = worker_like(spawn, str(sv.specs / "camera-x.json"))
    relative = worker_like(spawn, "specs/camera-y.json", cwd=sv.root)  # resolved against its own cwd
    stubborn = worker_like(spawn, str(sv.specs / "camera-z.json"), "--ignore-term")
    elsewhere = worker_like(spawn, str(sv.root / "other-specs" / "camera-x.json"))
    for pid in (orphan, relative, stubborn, elsewhere):
        wait_exec(pid)

    async def body() -> list[int]:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply({"camera-x": sv.program("camera-x")})
        supervised = (await running_pids(sv.client, ["camera-x"]))["camera-x"]
        wait_exec(supervised)
        started = time.monotonic()
        ended = await bridge.adopt_or_clean(sv.specs, kill_after_s=0.5)
        assert time.monotonic() - started < 2
        assert psutil.pid_exists(supervised) and (await bridge.states())["camera-x"].pid == supervised
        return ended

    assert asyncio.run(body()) == sorted([orphan, relative, stubborn])
    codes = {pid: proc.wait(2) for proc in spawn if (pid := proc.pid) != elsewhere}
    assert codes == {orphan: 0, relative: 0, stubborn: -signal.SIGKILL}
    assert spawn[-1].poll() is None  # the worker for another specs dir is left alone


def test_after_supervisord_was_killed_each_camera_runs_once_again(supervisord: Supervisord) -> None:
    sv = supervisord
    assert sv.proc is not None

    async def first() -> dict[str, int]:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply({n: sv.program(n) for n in ("camera-a", "camera-b")})
        return await running_pids(sv.client, ["camera-a", "camera-b"])

    old = asyncio.run(first())
    for pid in old.values():
        wait_exec(pid)
    sv.proc.kill()  # kill -9: its programs live on as orphans
    sv.proc.wait()
    sv.start()  # the include files are still there: it starts both cameras again

    async def second() -> tuple[list[int], dict[str, int]]:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        new = await running_pids(sv.client, ["camera-a", "camera-b"])
        assert all(psutil.pid_exists(pid) for pid in old.values())  # each camera runs twice now
        return await bridge.adopt_or_clean(sv.specs), new

    ended, new = asyncio.run(second())
    assert ended == sorted(old.values())
    time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in old.values())
    assert all(psutil.pid_exists(pid) for pid in new.values())


def test_nothing_is_ended_without_supervisord(supervisord: Supervisord, spawn: list[subprocess.Popen[bytes]]) -> None:
    orphan = worker_like(spawn, str(supervisord.specs / "camera-x.json"))
    supervisord.stop()
    with pytest.raises(SupervisorUnavailable):
        asyncio.run(SupervisorBridge(supervisord.client, supervisord.conf_dir).adopt_or_clean(supervisord.specs))
    assert spawn[0].poll() is None and psutil.pid_exists(orphan)
