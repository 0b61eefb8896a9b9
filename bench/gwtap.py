"""The real gateway with a timing tap: `python -m bench.gwtap --config gateway.yaml`.

Wraps a few functions (behaviour unchanged) and records, in $BENCH_TAP_DIR/gateway.jsonl:
  ["det", camera, track_id, captured_at, sent_at, inference_ms, recv]   a bus detection, `recv` =
                                                   right after the PULL socket returned it (before decoding)
  ["relay", camera, track_id, t]                   the imageDetection was queued for the backend
  ["ps", name, from, to, pid, sent_at, recv]       a supervisord PROCESS_STATE event (via the listener)
  ["hello", camera, pid, sent_at, recv]            a worker's hello
  ["cmd", message_type, items, t]                  a backend message reached dispatch (after parsing)
  ["apply", t0, t1]                                Gateway.apply (plan -> files -> supervisord)
  ["bridge", t0, t1, added, removed, replaced, errors]   SupervisorBridge.apply inside it
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    from bench.taplog import TapLog

    log = TapLog(Path(os.environ["BENCH_TAP_DIR"]) / "gateway.jsonl")

    import gateway.bus as gbus
    from gateway import commands
    from gateway.core import Gateway
    from gateway.supervisor.bridge import SupervisorBridge

    decode = gbus.decode_from_worker

    def tapped_decode(data):  # type: ignore[no-untyped-def]
        t = time.time()
        msg = decode(data)
        kind = msg.type
        if kind == "detection":
            log.add("det", msg.camera, msg.track_id, msg.captured_at, msg.sent_at, msg.inference_ms, t)
        elif kind == "process_state":
            log.add("ps", msg.name, msg.from_state, msg.to_state, msg.pid, msg.sent_at, t)
        elif kind == "hello":
            log.add("hello", msg.camera, msg.pid, msg.sent_at, t)
        return msg

    gbus.decode_from_worker = tapped_decode

    relay = Gateway._relay_detection

    def tapped_relay(self, state, det):  # type: ignore[no-untyped-def]
        relay(self, state, det)
        log.add("relay", det.camera, det.track_id, time.time())

    handle = commands.handle

    async def tapped_handle(gateway, msg):  # type: ignore[no-untyped-def]
        items = getattr(msg, "subscriptions", None)
        log.add("cmd", type(msg).__name__, len(items) if isinstance(items, tuple) else None, time.time())
        return await handle(gateway, msg)

    apply = Gateway.apply

    async def tapped_apply(self):  # type: ignore[no-untyped-def]
        t0 = time.time()
        try:
            await apply(self)
        finally:
            log.add("apply", t0, time.time())

    bridge_apply = SupervisorBridge.apply

    async def tapped_bridge(self, desired):  # type: ignore[no-untyped-def]
        t0 = time.time()
        report = await bridge_apply(self, desired)
        log.add("bridge", t0, time.time(), report.added, report.removed, report.replaced, len(report.errors))
        return report

    Gateway._relay_detection = tapped_relay  # type: ignore[method-assign]
    commands.handle = tapped_handle
    Gateway.apply = tapped_apply  # type: ignore[method-assign]
    SupervisorBridge.apply = tapped_bridge  # type: ignore[method-assign]

    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
