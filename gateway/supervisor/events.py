"""supervisord event listener: forwards PROCESS_STATE events to the gateway over ZeroMQ.

    python -m gateway.supervisor.events --push ipc:///path/to/run/bus-results.sock

Its `[eventlistener:camera-events]` section is rendered by `programs.render_eventlistener` (the
shipped one is conf/fleet.d/events.conf). This module imports no more than it needs: it runs in
its own process next to supervisord.

Each event becomes one JSON message on a PUSH socket (the gateway binds the PULL end):

    {"type": "process_state", "name": "camera-x", "group": "camera-x",
     "from_state": "RUNNING", "to_state": "EXITED", "pid": 1234 | null,
     "expected": false | true | null,   # EXITED only: was the exit code an expected one
     "serial": 17,                      # supervisord's event serial: gaps mean dropped events
     "sent_at": 1700000000.123}         # epoch seconds when this listener sent it

Delivery is best effort: when the gateway is away and 1000 messages are queued, newer ones are
dropped (never block: supervisord sends nothing more to a listener until it answers). The
gateway should reconcile with `getAllProcessInfo` periodically anyway.

An idle supervisord is slow to report a death: its loop sleeps in a 1 s poll(), reaps a killed
child on the next pass (when the pipe's EOF arrived before the child was a zombie) and hands the
event to listeners one pass later: kill -9 -> event took 1.0-2.0 s (median 1.5 s, 6 tries).
Any connection to its socket wakes the loop, so this listener "knocks" (connect + close, no
request) every `--wake-interval` s (0.25 by default; knocking 10/s cost supervisord ~0.4 % of a
core): kill -9 -> event then took 150-235 ms (median 184 ms).

stdout is supervisord's protocol channel (READY / RESULT): nothing else may ever be written to
it, so `sys.stdout` is pointed at stderr and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

import zmq

log = logging.getLogger("gateway.supervisor.events")
_STATE_PREFIX = "PROCESS_STATE_"


def parse_tokens(line: str) -> dict[str, str]:
    """`key:value key:value` (supervisord's header and payload format)."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def to_message(headers: dict[str, str], payload: str, now: float) -> dict[str, Any] | None:
    event = headers.get("eventname", "")
    if not event.startswith(_STATE_PREFIX):
        return None
    body = parse_tokens(payload.split("\n", 1)[0])
    expected = body.get("expected")
    return {
        "type": "process_state",
        "name": body.get("processname"),
        "group": body.get("groupname"),
        "from_state": body.get("from_state"),
        "to_state": event.removeprefix(_STATE_PREFIX),
        "pid": int(body["pid"]) if body.get("pid", "").isdigit() else None,
        "expected": None if expected is None else expected == "1",
        "serial": int(headers["serial"]) if headers.get("serial", "").isdigit() else None,
        "sent_at": now,
    }


def serve(stdin: BinaryIO, stdout: BinaryIO, sock: zmq.Socket[bytes]) -> int:
    """The listener loop; returns when supervisord closes stdin."""
    dropped = 0
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        headers = parse_tokens(line.decode())
        if not headers.get("len", "").isdigit():  # out of sync: exit and let supervisord restart us
            log.error("bad event header %r", line[:200])
            return 1
        payload = stdin.read(int(headers["len"])).decode(errors="replace")
        try:
            message = to_message(headers, payload, time.time())
            if message is not None:
                sock.send(json.dumps(message).encode(), zmq.NOBLOCK)
        except zmq.Again:
            dropped += 1
            if dropped in (1, 10, 100) or dropped % 1000 == 0:
                log.warning("gateway not draining events: %d dropped so far", dropped)
        except Exception:  # a bad event must not stall supervisord's event queue: acknowledge anyway
            log.exception("could not forward event %r", payload[:200])
        # FAIL would make supervisord resend the same event forever; always OK.
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def _knock(url: str, interval_s: float) -> None:
    """Wake supervisord's loop every `interval_s` by connecting to its unix socket."""
    path = url.removeprefix("unix://")
    failures = 0
    while True:
        time.sleep(interval_s)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(path)
            failures = 0
        except OSError as err:
            failures += 1
            if failures == 1:
                log.warning("cannot wake supervisord at %s: %s", path, err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward supervisord PROCESS_STATE events to the gateway.")
    parser.add_argument("--push", required=True, help="the gateway's PULL endpoint, e.g. ipc:///srv/fleet/run/bus-results.sock")
    parser.add_argument("--wake-interval", type=float, default=0.25, metavar="SECONDS",
                        help="wake supervisord's loop this often so events are not held up to 2 s (0: never)")
    args = parser.parse_args(argv)
    protocol_out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt the protocol
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.push)  # messages queue (up to SNDHWM) until the gateway is there
    log.info("forwarding PROCESS_STATE events to %s", args.push)
    url = os.environ.get("SUPERVISOR_SERVER_URL", "")  # set by supervisord for its children
    if args.wake_interval > 0 and url.startswith("unix://"):
        threading.Thread(target=_knock, args=(url, args.wake_interval), name="knock", daemon=True).start()
    try:
        return serve(sys.stdin.buffer, protocol_out, sock)
    finally:
        sock.close()
        context.term()


if __name__ == "__main__":
    raise SystemExit(main())
