"""The shipped supervisord config: generated files equal the renderer's output, and work as shipped."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from detector_worker.config.spec import BusSettings
from gateway.supervisor.programs import (
    EVENTLISTENER_NAME,
    SHIPPED_EVENTLISTENER_FILE,
    render,
    render_eventlistener,
    shipped_eventlistener,
)
from scripts import render_fleet_conf

from .conftest import PROJECT_DIR, Supervisord, wait_state

FLEET_D = PROJECT_DIR / "conf" / "fleet.d"


def test_committed_events_conf_is_the_renderers_output() -> None:
    committed = (PROJECT_DIR / SHIPPED_EVENTLISTENER_FILE).read_text()
    assert committed == render_eventlistener(shipped_eventlistener()), (
        "conf/fleet.d/events.conf is out of date: run scripts/render_fleet_conf.py")
    assert render_fleet_conf.main(["--check"]) == 0


def test_check_reports_a_drifted_copy(tmp_path: Path) -> None:
    target = tmp_path / SHIPPED_EVENTLISTENER_FILE
    target.parent.mkdir(parents=True)
    assert render_fleet_conf.main(["--check", "--root", str(tmp_path)]) == 1  # missing
    assert render_fleet_conf.main(["--root", str(tmp_path)]) == 0
    assert render_fleet_conf.main(["--check", "--root", str(tmp_path)]) == 0
    target.write_text(target.read_text().replace("stdout_logfile=NONE\n", ""))
    assert render_fleet_conf.main(["--check", "--root", str(tmp_path)]) == 1


def test_the_listener_pushes_to_the_workers_default_endpoint() -> None:
    # the shipped file names the socket relative to itself; resolved, it is the workers' default endpoint
    command = next(line for line in (PROJECT_DIR / SHIPPED_EVENTLISTENER_FILE).read_text().splitlines()
                   if line.startswith("command="))
    endpoint = command.split("--push ", 1)[1].split()[0]
    here = (PROJECT_DIR / SHIPPED_EVENTLISTENER_FILE).parent
    resolved = Path(endpoint.removeprefix("ipc://").replace("%(here)s", str(here))).resolve()
    assert f"ipc://{resolved}" == BusSettings().push_endpoint


def test_fleet_d_defines_each_section_once_and_the_listener_only_in_events_conf() -> None:
    seen: dict[str, str] = {}
    for path in sorted(FLEET_D.glob("*.conf")):
        parser = configparser.RawConfigParser()
        parser.read_string(path.read_text(), source=str(path))  # also: every file parses
        for section in parser.sections():
            assert section not in seen, f"[{section}] in both {seen.get(section)} and {path.name}"
            seen[section] = path.name
    assert seen[f"eventlistener:{EVENTLISTENER_NAME}"] == "events.conf"
    assert seen["program:gateway"] == "gateway.conf"


@pytest.mark.slow  # make check skips it: a real supervisord
def test_the_shipped_listener_runs_under_a_real_supervisord(tmp_path: Path) -> None:
    """The shipped section with only the endpoint changed, at the shipped depth (<project>/conf/<dir>/):
    `%(here)s` resolves, the listener forwards events, and its stdout (the protocol) is logged nowhere."""
    (tmp_path / ".venv").symlink_to(PROJECT_DIR / ".venv")
    (tmp_path / "logs").mkdir()
    (tmp_path / "conf").mkdir()
    sv = Supervisord(tmp_path / "conf")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    listener = dataclasses.replace(shipped_eventlistener(), push_endpoint=f"tcp://127.0.0.1:{port}")
    (sv.conf_dir / "events.conf").write_text(render_eventlistener(listener))

    def receive(timeout_s: float) -> list[dict[str, Any]]:
        messages, deadline = [], time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if pull.poll(int(left * 1000)):
                messages.append(json.loads(pull.recv()))
        return messages

    async def body() -> None:
        info = await wait_state(sv.client, EVENTLISTENER_NAME, {"RUNNING"})
        assert info.pid
        raw = await sv.client.call("supervisor.getProcessInfo", EVENTLISTENER_NAME)
        assert raw["stdout_logfile"] == ""  # NONE: READY/RESULT lines are not written anywhere
        assert Path(raw["stderr_logfile"]).resolve() == (tmp_path / "logs/camera_events.log").resolve()
        (sv.conf_dir / "camera-a.conf").write_text(render(sv.program("camera-a")))
        await sv.client.reload_config()
        await sv.client.add_group("camera-a")
        await wait_state(sv.client, "camera-a", {"RUNNING"})

    sv.start()
    try:
        asyncio.run(body())
        states = [m["to_state"] for m in receive(1.0) if m["name"] == "camera-a"]
        assert states[:2] == ["STARTING", "RUNNING"]
    finally:
        sv.stop()
        sv.kill_leftovers()
        pull.close(0)
        context.term()
    assert "forwarding PROCESS_STATE events" in (tmp_path / "logs/camera_events.log").read_text()
    assert not [p.name for p in sv.logs.iterdir() if p.name.startswith(EVENTLISTENER_NAME)]  # no AUTO stdout log
