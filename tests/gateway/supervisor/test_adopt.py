"""adopt_or_clean: worker processes that supervisord did not start are ended, supervised ones kept."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil
import pytest

from gateway.supervisor.bridge import SupervisorBridge
from gateway.supervisor.rpc import SupervisorUnavailable

from .conftest import FAKE_WORKER, Supervisord, running_pids

pytestmark = pytest.mark.slow  # make check skips it: a real supervisord, killed


def worker_like(sv: Supervisord, spec: str, *extra: str) -> int:
    """A worker-like process outside supervisord, already orphaned (its parent is gone), like the
    workers a kill -9'd supervisord leaves behind. It runs in sv.root; the fixture's teardown ends
    whatever is left (its command line names sv.root)."""
    script = 'cd "$1" && shift && "$@" >/dev/null 2>&1 </dev/null & echo $!'
    launched = subprocess.run(["/bin/sh", "-c", script, "sh", str(sv.root), sys.executable, str(FAKE_WORKER),
                               "detector_worker.cli", "--spec", spec, *extra], capture_output=True, text=True,
                              check=True, timeout=10)
    return int(launched.stdout)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # orphans' zombies wait for init
    except psutil.NoSuchProcess:
        return False


def wait_exec(pid: int) -> None:
    # Until its interpreter is up, a signal could land before the handler (fine) or the cmdline
    # could still be the parent's (would not match): wait until it shows the worker's cmdline.
    deadline = time.monotonic() + 5
    while "detector_worker.cli" not in psutil.Process(pid).cmdline() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def test_orphans_are_ended_supervised_and_unrelated_are_not(supervisord: Supervisord) -> None:
    sv = supervisord
    orphan = worker_like(sv, str(sv.specs / "camera-x.json"))
    relative = worker_like(sv, "specs/camera-y.json")  # resolved against the process's own cwd
    stubborn = worker_like(sv, str(sv.specs / "camera-z.json"), "--ignore-term")
    elsewhere = worker_like(sv, str(sv.root / "other-specs" / "camera-x.json"))
    for pid in (orphan, relative, stubborn, elsewhere):
        wait_exec(pid)

    async def body() -> list[int]:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply({"camera-x": sv.program("camera-x")})
        supervised = (await running_pids(sv.client, ["camera-x"]))["camera-x"]
        wait_exec(supervised)
        started = time.monotonic()
        ended = await bridge.adopt_or_clean(sv.specs, kill_after_s=0.5)
        assert 0.5 <= time.monotonic() - started < 2  # the stubborn one needed SIGKILL
        assert alive(supervised) and (await bridge.states())["camera-x"].pid == supervised
        return ended

    assert asyncio.run(body()) == sorted([orphan, relative, stubborn])
    assert not any(alive(pid) for pid in (orphan, relative, stubborn))
    assert alive(elsewhere)  # a worker for another specs dir is left alone


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
        assert all(alive(pid) for pid in old.values())  # each camera runs twice now
        return await bridge.adopt_or_clean(sv.specs), new

    ended, new = asyncio.run(second())
    assert ended == sorted(old.values())
    assert not any(alive(pid) for pid in old.values())
    assert all(alive(pid) for pid in new.values())


def test_nothing_is_ended_without_supervisord(supervisord: Supervisord) -> None:
    orphan = worker_like(supervisord, str(supervisord.specs / "camera-x.json"))
    supervisord.stop()
    with pytest.raises(SupervisorUnavailable):
        asyncio.run(SupervisorBridge(supervisord.client, supervisord.conf_dir).adopt_or_clean(supervisord.specs))
    assert alive(orphan)
