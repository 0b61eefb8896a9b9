"""SupervisorClient: typed answers, fault names, and quick failure when supervisord is away."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from gateway.supervisor.programs import write_programs
from gateway.supervisor.rpc import SupervisorClient, SupervisorError, SupervisorUnavailable

from .conftest import Supervisord, running_pids

pytestmark = pytest.mark.slow  # make check skips it: a real supervisord


def test_calls_and_fault_names(supervisord: Supervisord) -> None:
    sv = supervisord
    assert sv.proc is not None
    write_programs(sv.conf_dir, {"camera-a": sv.program("camera-a")})

    async def body() -> None:
        c = sv.client
        assert await c.pid() == sv.proc.pid  # type: ignore[union-attr]
        assert await c.state() == "RUNNING"
        assert await c.reload_config() == (["camera-a"], [], [])
        await c.add_group("camera-a")
        with pytest.raises(SupervisorError) as err:
            await c.add_group("camera-a")
        assert err.value.fault == "ALREADY_ADDED"
        pid = (await running_pids(c, ["camera-a"]))["camera-a"]
        [info] = await c.all_process_info()
        assert (info.name, info.group, info.pid) == ("camera-a", "camera-a", pid) and info.start > 0
        await asyncio.sleep(0.2)  # past the fork/exec window, or the signal is lost
        await c.signal("camera-a", signal.SIGTERM)
        with pytest.raises(SupervisorError) as err:
            await c.process_info("camera-nope")
        assert err.value.fault == "BAD_NAME" and "camera-nope" in str(err.value)
        while (await c.process_info("camera-a")).pid in (0, pid):  # autorestart=true
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await c.stop("camera-a")
        assert (await c.process_info("camera-a")).state == "STOPPED"
        with pytest.raises(SupervisorError) as err:
            await c.stop("camera-a")
        assert err.value.fault == "NOT_RUNNING"
        await c.remove_group("camera-a")
        assert await c.all_process_info() == []

    asyncio.run(body())


def test_stopped_supervisord_is_unavailable_at_once(supervisord: Supervisord) -> None:
    supervisord.stop()
    client = SupervisorClient(supervisord.socket, timeout_s=5)
    started = time.monotonic()
    with pytest.raises(SupervisorUnavailable):
        asyncio.run(client.state())
    assert time.monotonic() - started < 0.5


def test_hung_supervisord_times_out(supervisord: Supervisord) -> None:
    assert supervisord.proc is not None
    pid = supervisord.proc.pid
    client = SupervisorClient(supervisord.socket, timeout_s=0.3)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(SupervisorUnavailable, match="Timeout"):
            asyncio.run(client.state())
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert asyncio.run(client.state()) == "RUNNING"
