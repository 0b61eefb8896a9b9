"""A heartbeat-only stand-in for a camera worker (control-plane benches with many cameras).

`python -m bench.idle_worker -m detector_worker.cli --spec X`: reads the spec like the real
worker, opens the real bus as the worker does (`WorkerBus.for_camera`: ipc://, or tcp:// with the
spec's CURVE keys and placement epoch on another host), says hello (DEALER), sends heartbeats and
a status saying its stream is up (PUSH) with the real message module, so the gateway sees a live,
online camera, and exits on SIGTERM at once. No video, no models: a process that costs ~20 MB of
its own and wakes only to send (or for a control message), so that hundreds of them fit beside
everything else on this machine. Its start (imports, spec, bus: ~0.5 s of CPU) takes one of
$BENCH_TAP_DIR's per-core start slots: hundreds started at once would otherwise all be runnable
for minutes, and starve the gateway and supervisord that the bench measures.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from pathlib import Path


class _Stop(Exception):
    """SIGTERM/SIGINT: raised by the handler, so a wait on the control socket ends at once."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _start_slot() -> int | None:
    """A lock held while this stand-in starts: one of os.cpu_count() slots (None: no $BENCH_TAP_DIR)."""
    directory = os.environ.get("BENCH_TAP_DIR")
    if not directory:
        return None
    slots = [os.open(Path(directory) / f"start-{i}.lock", os.O_CREAT | os.O_RDWR, 0o600)
             for i in range(os.cpu_count() or 1)]
    for fd in slots:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return fd
    fcntl.flock(slots[os.getpid() % len(slots)], fcntl.LOCK_EX)  # all busy: wait for one
    return slots[os.getpid() % len(slots)]


def main() -> int:
    args = sys.argv[1:]
    spec_path = Path(args[args.index("--spec") + 1])
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        slot = _start_slot()
        from detector_worker.comms.bus import WorkerBus
        from detector_worker.comms.messages import Heartbeat, Status
        from detector_worker.config.spec import load_spec

        spec = load_spec(spec_path)
        bus = WorkerBus.for_camera(spec.camera_id, spec.slug, spec.bus, epoch=spec.placement_epoch)
    except _Stop:
        return 0
    if slot is not None:
        fcntl.flock(slot, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):  # started (a bench may start it niced): stop and answer at normal priority
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    started = time.monotonic()
    next_beat = next_hello = next_status = 0.0
    try:
        while True:
            now = time.monotonic()
            if not bus.answered and now >= next_hello:
                bus.hello()
                next_hello = now + 1.0
            if now >= next_beat:
                bus.send(Heartbeat(camera=spec.camera_id, sent_at=time.time(), pid=os.getpid(),
                                   uptime_s=now - started))
                next_beat = now + spec.bus.heartbeat_interval_s
            if bus.answered and now >= next_status:  # connected: the first one is not lost
                bus.send(Status(camera=spec.camera_id, sent_at=time.time(), online=True, fps=0.0, inference_ms=0.0,
                                reconnects=0, stalls=0, dropped=bus.dropped, rss_mb=0.0))
                next_status = now + spec.bus.status_interval_s
            due = min(next_beat, next_status if bus.answered else next_hello)
            bus.poll_control(max(1, int((due - time.monotonic()) * 1000)))  # the gateway's answer wakes it
    except _Stop:
        pass
    finally:
        bus.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
