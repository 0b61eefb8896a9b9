"""Section 7: control-plane latency. One subscription change with N cameras already configured.

A real fleet (supervisord + the gateway with its timing tap + event listener). N cameras are
subscribed first; then, several times, one camera is added (list of N+1) and removed again (list of
N), each a whole `setSubscriptionList`, as the backend sends it. Measured from the client's send:
- gateway applied: `Gateway.apply` finished (spec files + program files + reloadConfig + supervisord
  add/remove; the gateway's own record);
- spawned: supervisord's PROCESS_STATE STARTING event for the new program (sent by the event
  listener, relayed on the bus);
- worker hello: the new worker's first bus message (it runs and is connected);
- removed: STOPPED event for the removed program / the apply that removed it finished.

Workers: for N = 1 and 20 the real worker, pointed at a dead RTSP URL (nothing listens: it loads
its models, fails to connect, backs off; cheap after start-up). For N = 100 a heartbeat-only
stand-in (bench/idle_worker.py) instead: 100 real workers would need ~100 x 130 MB and ~2 min of
CPU to start on this machine. The gateway and supervisord do the same work either way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import DEAD_RTSP, fmt, md_table, say, wait_until
from .harness import FleetHarness, program_name, subscription


def _cams(n: int) -> list[dict[str, Any]]:
    return [subscription(f"ctl{i:03d}", DEAD_RTSP) for i in range(n)]


def _all_running(h: FleetHarness, n: int) -> bool:
    progs = h.fleet.programs()
    return len(progs) == n and all(state == "RUNNING" for state, _ in progs.values())


def _one_change(h: FleetHarness, base: list[dict[str, Any]], camera: str) -> dict[str, Any]:
    program = program_name(camera)
    out: dict[str, Any] = {}
    t0 = h.backend.set_subscriptions([*base, subscription(camera, DEAD_RTSP)])
    wait_until(lambda: h.taps.refresh().gw("hello", t0) and
               any(r[1] == camera for r in h.taps.gw("hello", t0)), 60, 0.02)
    h.taps.refresh()
    cmd = next((r for r in h.taps.gw("cmd", t0)), None)
    bridge = next((r for r in h.taps.gw("bridge", t0 - 0.01) if program in r[3]), None)
    apply = next((r for r in h.taps.gw("apply", t0 - 0.01) if bridge and r[1] <= bridge[1] and r[2] >= bridge[2]),
                 None)
    spawn = next((r for r in h.taps.gw("ps", t0) if r[1] == program and r[3] == "STARTING"), None)
    hello = next((r for r in h.taps.gw("hello", t0) if r[1] == camera), None)
    out["add"] = {"at_gateway": cmd[3] - t0 if cmd else None,
                  "supervisord_calls": bridge[2] - bridge[1] if bridge else None,
                  "applied": apply[2] - t0 if apply else None,
                  "spawned": spawn[5] - t0 if spawn else None,
                  "hello": hello[4] - t0 if hello else None}
    wait_until(lambda: h.fleet.state(program) == "RUNNING", 20, 0.1)
    time.sleep(0.5)
    t1 = h.backend.set_subscriptions(base)
    wait_until(lambda: h.taps.refresh().gw("bridge", t1) and
               any(program in r[4] for r in h.taps.gw("bridge", t1)), 60, 0.02)
    h.taps.refresh()
    bridge = next((r for r in h.taps.gw("bridge", t1 - 0.01) if program in r[4]), None)
    apply = next((r for r in h.taps.gw("apply", t1 - 0.01) if bridge and r[1] <= bridge[1] and r[2] >= bridge[2]),
                 None)
    stopped = next((r for r in h.taps.gw("ps", t1) if r[1] == program and r[3] in ("STOPPED", "EXITED")), None)
    out["remove"] = {"supervisord_calls": bridge[2] - bridge[1] if bridge else None,
                     "applied": apply[2] - t1 if apply else None,
                     "stopped": stopped[5] - t1 if stopped else None}
    time.sleep(0.5)
    return out


def control_plane(model_cache: Path, work_root: Path, quick: bool) -> dict[str, Any]:
    plan = [(1, "plain"), (5, "plain"), (20, "idle")] if quick else [(1, "plain"), (20, "plain"), (100, "idle")]
    reps = 2 if quick else 5
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="control-", dir=work_root))
    with FleetHarness(work, model_cache=model_cache, mode="plain") as h:
        for n, mode in plan:
            h.set_mode(mode)
            base = _cams(n)
            t0 = h.backend.set_subscriptions(base)
            ok = wait_until(lambda n=n: _all_running(h, n), 300, 0.5)
            bulk_add = time.time() - t0
            time.sleep(3.0)
            changes = [_one_change(h, base, f"ctlx{n:03d}-{r}") for r in range(reps)]
            t1 = h.backend.set_subscriptions([])
            wait_until(lambda: not h.fleet.programs(), 300, 0.2)
            bulk_remove = time.time() - t1
            row = {"cameras": n, "workers": "real worker, dead RTSP URL" if mode == "plain" else "heartbeat-only "
                   "stand-in", "changes": changes, "bulk_add_s": bulk_add if ok else None,
                   "bulk_remove_s": bulk_remove}
            results.append(row)
            med = _medians(changes)
            say(f"  {n:3d} cameras ({row['workers']}): add one → applied {fmt(med['add.applied'] * 1000, 0)} ms, "
                f"spawned {fmt(med['add.spawned'] * 1000, 0)} ms, worker hello {fmt(med['add.hello'] * 1000, 0)} ms; "
                f"remove one → applied {fmt(med['remove.applied'] * 1000, 0)} ms; all {n} up (RUNNING) in "
                f"{fmt(row['bulk_add_s'], 1)} s, all removed in {bulk_remove:.1f} s")
    return {"rows": results, "reps": reps}


def _medians(changes: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for phase in ("add", "remove"):
        for key in changes[0][phase]:
            vals = [c[phase][key] for c in changes if c[phase][key] is not None]
            out[f"{phase}.{key}"] = statistics.median(vals) if vals else float("nan")
    return out


def control_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        m = _medians(r["changes"])
        mx = max((c["add"]["applied"] or 0) for c in r["changes"])
        rows.append([r["cameras"], r["workers"], fmt(m["add.at_gateway"] * 1000, 1),
                     f"{fmt(m['add.applied'] * 1000, 0)} (max {mx * 1000:.0f})",
                     fmt(m["add.supervisord_calls"] * 1000, 0),
                     fmt(m["add.spawned"] * 1000, 0), fmt(m["add.hello"] * 1000, 0),
                     fmt(m["remove.applied"] * 1000, 0), fmt(m["remove.stopped"] * 1000, 0),
                     fmt(r["bulk_add_s"], 1), fmt(r["bulk_remove_s"], 1)])
    return md_table(["cameras configured", "workers", "message at gateway ms", "add one: applied ms",
                     "of which supervisord calls ms", "add: spawned (STARTING) ms", "add: worker hello ms",
                     "remove one: applied ms", "remove: STOPPED ms", "bulk: all N RUNNING s",
                     "bulk: all N removed s"], rows)
