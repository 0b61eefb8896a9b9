"""A heartbeat-only stand-in for a camera worker (control-plane bench with many cameras).

`python -m bench.idle_worker -m detector_worker.cli --spec X`: reads the spec like the real
worker, says hello on the real bus (DEALER) and sends heartbeats (PUSH) with the real message
module, so the gateway sees a live camera, and exits on SIGTERM. No video, no models: a process
that costs ~30 MB and no CPU, so that 100 of them fit beside everything else on this machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    args = sys.argv[1:]
    spec_path = Path(args[args.index("--spec") + 1])
    from detector_worker.comms.bus import WorkerBus
    from detector_worker.comms.messages import Heartbeat
    from detector_worker.config.spec import load_spec

    spec = load_spec(spec_path)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    bus = WorkerBus(spec.camera_id, spec.slug, spec.bus.push_endpoint, spec.bus.control_endpoint)
    started = time.monotonic()
    next_beat = next_hello = 0.0
    while not stop:
        now = time.monotonic()
        if not bus.answered and now >= next_hello:
            bus.hello()
            next_hello = now + 1.0
        bus.poll_control(0)
        if now >= next_beat:
            bus.send(Heartbeat(camera=spec.camera_id, sent_at=time.time(), pid=os.getpid(), uptime_s=now - started))
            next_beat = now + spec.bus.heartbeat_interval_s
        time.sleep(0.1)
    bus.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
