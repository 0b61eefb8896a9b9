"""The [eventlistener:] forwards PROCESS_STATE events to the gateway's PULL socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from gateway.supervisor.bridge import SupervisorBridge
from gateway.supervisor.events import parse_tokens, to_message
from gateway.supervisor.programs import EVENTLISTENER_NAME, EventListenerSpec, render_eventlistener

from .conftest import PROJECT_DIR, Supervisord, wait_state

pytestmark = pytest.mark.slow  # make check skips it: a real supervisord and its event listener


def test_to_message() -> None:
    headers = parse_tokens("ver:3.0 server:supervisor serial:21 pool:camera-events poolserial:10 "
                           "eventname:PROCESS_STATE_EXITED len:71\n")
    message = to_message(headers, "processname:camera-a groupname:camera-a from_state:RUNNING expected:0 pid:42", 5.0)
    assert message == {"type": "process_state", "name": "camera-a", "group": "camera-a", "from_state": "RUNNING",
                       "to_state": "EXITED", "pid": 42, "expected": False, "serial": 21, "sent_at": 5.0}
    starting = to_message({"eventname": "PROCESS_STATE_STARTING"}, "processname:a groupname:a from_state:EXITED "
                          "tries:0", 1.0)
    assert starting is not None and starting["pid"] is None and starting["expected"] is None
    assert to_message({"eventname": "TICK_5"}, "when:1", 1.0) is None


def test_kill_9_reaches_the_gateway_as_events(supervisord: Supervisord) -> None:
    sv = supervisord
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    (sv.conf_dir / f"{EVENTLISTENER_NAME}.conf").write_text(render_eventlistener(EventListenerSpec(
        python=Path(sys.executable), push_endpoint=f"tcp://127.0.0.1:{port}", directory=PROJECT_DIR,
        stderr_logfile=sv.logs / "events.log")))

    def receive(timeout_s: float) -> list[dict[str, Any]]:
        messages, deadline = [], time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if pull.poll(int(left * 1000)):
                messages.append(json.loads(pull.recv()))
        return messages

    async def body() -> None:
        # The gateway's job at start-up (or a fixed fleet.d file). Events that happen before the
        # listener's pool exists are not delivered to it; while it is STARTING they are buffered.
        await sv.client.reload_config()
        await sv.client.add_group(EVENTLISTENER_NAME)
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        report = await bridge.apply({"camera-a": sv.program("camera-a")})
        assert report.added == ["camera-a"]  # the listener's file is neither applied nor removed by the bridge
        assert (sv.conf_dir / f"{EVENTLISTENER_NAME}.conf").exists()
        await wait_state(sv.client, EVENTLISTENER_NAME, {"RUNNING"})
        info = await wait_state(sv.client, "camera-a", {"RUNNING"})
        assert list(await bridge.states()) == ["camera-a"]
        startup = [m for m in receive(0.3) if m["name"] == "camera-a"]
        # Buffered by supervisord while the listener was starting, then delivered.
        assert [m["to_state"] for m in startup] == ["STARTING", "RUNNING"]

        killed_at = time.time()
        os.kill(info.pid, signal.SIGKILL)
        # Without the listener's knocks an idle supervisord takes 1-2 s here (see events.py).
        events = [m for m in receive(1.0) if m["name"] == "camera-a"]
        assert [(m["from_state"], m["to_state"]) for m in events[:2]] == [("RUNNING", "EXITED"),
                                                                          ("EXITED", "STARTING")]
        assert events[0]["pid"] == info.pid and events[0]["expected"] is False
        assert events[1]["pid"] is None
        latency = events[0]["sent_at"] - killed_at
        print(f"kill -9 -> EXITED event sent after {latency * 1000:.1f} ms")
        assert latency < 0.6
        assert all(m["serial"] > s["serial"] for m in events for s in startup)

    try:
        asyncio.run(body())
    finally:
        pull.close(0)
        context.term()
    assert "forwarding PROCESS_STATE events" in (sv.logs / "events.log").read_text()
