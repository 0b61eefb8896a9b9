"""Section 9a-b: a site of three worker hosts with the gateway configured with `hosts:` (bench/hosts.py).

Three worker hosts in network namespaces of this machine (tests/gateway/hosts/netns.py: each set
up by scripts/setup_worker_host.py, its own supervisord with the fleet agent, its workers on tcp://
with CURVE), the gateway configured with `hosts:` as in tests/gateway/hosts/test_multi_host.py and
run under its own supervisord (tests/fleet.py). Workers are the heartbeat-only stand-in
(bench/idle_worker.py: each host's `python` is bench/worker_python in mode idle).

a. Control plane: N cameras subscribed in one `setSubscriptionList`; then, R times, one camera
   added (a list of N+1) and removed again. From the backend's send: the new program STARTING and
   RUNNING on its host (its supervisord, polled every 20 ms), the camera online at the gateway
   (/cameras, with the pid of that program), and the removed program gone from its host (its
   process group removed).
b. Failover: the first host is killed (its supervisord and its workers, SIGKILL). From the kill:
   the gateway marks it down (/hosts), all its cameras RUNNING on the other hosts, all online at the
   gateway with their new process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.fleet import Fleet
from tests.gateway.hosts.netns import NetnsLab, WorkerHost
from tests.rtsp import free_port

from .common import DEAD_RTSP, PYTHON, ROOT, SHIM, CpuMeter, fmt, say, summary, wait_until
from .harness import DATABASE_URL, REDIS_URL, BackendClient, program_name, subscription

PASSWORD = "bench-host-secret"
CHECK_S, DOWN_S = 0.5, 3.0  # remote.check_interval_s and down_after_s, as in the namespace tests
NICE, HEARTBEAT_TIMEOUT_S = 19, 300  # the stand-in workers' niceness; session_processes.heartbeat_timeout


@dataclass(frozen=True)
class Plan:
    cameras: int
    capacity: int  # per host: the survivors of a killed host must take its share
    reps: int


FULL, QUICK = Plan(300, 160, 10), Plan(12, 10, 3)


@dataclass
class Site:
    hosts: list[WorkerHost]
    fleet: Fleet
    backend: BackendClient

    def find(self, program: str) -> tuple[str | None, int, str | None]:
        """(state, pid, host) of a program on the first host that has it; (None, 0, None) if none has."""
        for host in self.hosts:
            with contextlib.suppress(xmlrpc.client.Fault, OSError):
                info: Any = host.rpc("supervisor.getProcessInfo", program)
                return str(info["statename"]), int(info["pid"]), host.name
        return None, 0, None

    def cameras(self) -> dict[str, dict[str, Any]]:
        try:
            return self.fleet.cameras()
        except Exception:  # busy or between answers: ask again next time
            return {}

    def host_up(self, name: str) -> bool | None:
        with contextlib.suppress(Exception):
            _, body, _ = self.fleet.get("/hosts")
            return bool(next(h["up"] for h in json.loads(body)["hosts"] if h["name"] == name))
        return None

    def gateway_pid(self) -> int:
        return int(self.fleet.rpc().supervisor.getProcessInfo("gateway")["pid"])

    def log_lines(self, text: str) -> list[str]:
        with contextlib.suppress(OSError):
            log = (self.fleet.base / "logs/gateway_stdout.log").read_text(errors="replace")
            return [line for line in log.splitlines() if text in line]
        return []

    def log_tail(self, text: str) -> str:
        return (self.log_lines(text) or [""])[-1]


def _stop(fleet: Fleet) -> None:
    """Fleet.stop without its last-resort pkill: no worker runs under the gateway's own supervisord."""
    try:
        pid = int((fleet.base / "run/supervisord.pid").read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(Exception):
        fleet.rpc().supervisor.shutdown()
    wait_until(lambda: not psutil.pid_exists(pid), 30, 0.1)


def _exit_on_term(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def _site(work: Path, capacity: int) -> Iterator[Site]:
    taps = work / "taps"
    taps.mkdir(parents=True, exist_ok=True)
    (taps / "mode").write_text("idle")
    os.environ["BENCH_TAP_DIR"], os.environ["BENCH_PYTHON"] = str(taps), PYTHON  # the hosts' supervisords pass them on
    keys = work / "keys"
    subprocess.run([PYTHON, str(ROOT / "scripts/setup_worker_host.py"), "gateway-keys", "--dir", str(keys)],
                   check=True, capture_output=True)
    push, control = free_port(), free_port()
    previous = signal.signal(signal.SIGTERM, _exit_on_term)  # a terminated bench still removes its namespaces
    with contextlib.ExitStack() as undo:
        undo.callback(signal.signal, signal.SIGTERM, previous)
        lab = undo.enter_context(NetnsLab(3))
        bus = {"gateway_push": f"tcp://{lab.service_ip}:{push}", "gateway_control": f"tcp://{lab.service_ip}:{control}"}
        hosts = [lab.host(i, work / f"host-{i}", name=f"host-{chr(97 + i)}", password=PASSWORD, capacity=capacity,
                          gateway_key=keys / "gateway.key", **bus) for i in range(3)]
        # The hosts' `python` for workers: the bench shim (mode idle), started at nice 19 (back to 0 once started):
        # all hosts share this machine's two cores with the gateway, and a start-up storm of stand-ins must not
        # starve the control plane that on real hosts would have CPUs of its own (without: hosts flap).
        shim = work / "worker_python"
        shim.write_text(f'#!/bin/sh\nexec nice -n {NICE} {SHIM} "$@"\n')
        shim.chmod(0o755)
        for host in hosts:
            conf = host.root / "host.yaml"
            conf.write_text(yaml.safe_dump({**yaml.safe_load(conf.read_text()), "python": str(shim)}, sort_keys=False))
            host.start()
        extra = {"hosts": [h.settings() for h in hosts],
                 "remote": {"listen_push": bus["gateway_push"], "listen_control": bus["gateway_control"],
                            "secret_key_file": str(keys / "gateway.key_secret"), "check_interval_s": CHECK_S,
                            "down_after_s": DOWN_S},
                 # a stand-in starved at nice 19 may be slow to send its first heartbeat: not a hung worker
                 "session_processes": {"max_concurrent_sessions": 1000, "health_check_interval": 10,
                                       "heartbeat_timeout": HEARTBEAT_TIMEOUT_S, "process_cleanup_timeout": 30}}
        fleet = Fleet(work / "gateway", model_cache=work / "models", redis_url=REDIS_URL, database_url=DATABASE_URL,
                      extra=extra)
        undo.callback(_stop, fleet)
        fleet.start()
        client = BackendClient(fleet.connect())
        undo.callback(client.close)
        yield Site(hosts, fleet, client)


def _online(site: Site, camera: str, host: str, pid: int) -> bool:
    c = site.cameras().get(camera)
    return bool(c and c.get("online") and c.get("host") == host and c.get("pid") == pid)


def _change(site: Site, base: list[dict[str, Any]], camera: str) -> dict[str, Any]:
    program = program_name(camera)
    out: dict[str, Any] = {"camera": camera, "spawned_s": None, "running_s": None, "online_s": None, "gone_s": None}
    t0 = site.backend.set_subscriptions([*base, subscription(camera, DEAD_RTSP)])
    state, pid, host = None, 0, None
    while time.time() - t0 < 60 and state != "RUNNING":
        state, pid, host = site.find(program)
        if state in ("STARTING", "RUNNING") and out["spawned_s"] is None:
            out["spawned_s"] = time.time() - t0
        time.sleep(0.02)
    out["host"] = host
    if state == "RUNNING" and host is not None:
        out["running_s"] = time.time() - t0
        where: str = host
        if wait_until(lambda: _online(site, camera, where, pid), 30, 0.1):
            out["online_s"] = time.time() - t0
    time.sleep(0.5)
    t1 = site.backend.set_subscriptions(base)
    if wait_until(lambda: site.find(program)[0] is None, 60, 0.02):
        out["gone_s"] = time.time() - t1
    time.sleep(0.5)
    return out


def _running(site: Site) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for host in site.hosts:
        for name in host.running():
            out.setdefault(name, []).append(host.name)
    return out


def _progress(count: Callable[[], int], n: int, stall_s: float, every_s: float = 2.0) -> bool:
    """Wait until count() >= n, as long as it keeps growing (no growth for `stall_s`: False). Polled
    every 2 s: faster polls of 300 cameras load the very gateway and supervisords being measured."""
    best, since = -1, time.monotonic()
    while (c := count()) < n:
        if c > best:
            best, since = c, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return False
        time.sleep(every_s)
    return True


def _bulk(site: Site, base: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(base)
    meter = CpuMeter({"gateway": [site.gateway_pid()], "supervisords": [h.proc.pid for h in site.hosts if h.proc]})
    meter.start()
    t0 = site.backend.set_subscriptions(base)
    if not _progress(lambda: len(_running(site)), n, 120):
        raise RuntimeError(f"{len(_running(site))} of {n} cameras running; the gateway's last apply error: "
                           f"{site.log_tail('apply errors')[-400:]}")
    running_s = time.time() - t0
    online = _progress(lambda: sum(bool(c.get("online")) for c in site.cameras().values()), n, 300)
    online_s = time.time() - t0 if online else None
    cpu = meter.stop()
    placed = _running(site)
    say(f"  bulk: {n} cameras subscribed → all RUNNING on their hosts in {fmt(running_s)} s, all online at the "
        f"gateway in {fmt(online_s)} s (gateway {cpu['gateway']:.2f} core, supervisords {cpu['supervisords']:.2f}, "
        f"others {cpu['others']:.2f} meanwhile)")
    return {"running_s": running_s, "online_s": online_s, "cpu": cpu, "twice": sum(len(h) > 1 for h in placed.values()),
            "downs": len(site.log_lines("is down (")),
            "per_host": {h.name: sum(1 for v in placed.values() if h.name in v) for h in site.hosts}}


def _steady(site: Site, seconds: float) -> dict[str, Any]:
    workers = [pid for h in site.hosts for _, pid in h.programs().values() if pid]
    meter = CpuMeter({"gateway": [site.gateway_pid()], "supervisords": [h.proc.pid for h in site.hosts if h.proc],
                      "workers": workers}).start()
    time.sleep(seconds)
    return {"seconds": seconds, "workers": len(workers), "cpu": meter.stop()}


def _failover(site: Site, cameras: dict[str, str], timeout: float) -> dict[str, Any]:
    """Kill the first host; `cameras`: program name → camera id."""
    lost, others = site.hosts[0], site.hosts[1:]
    moving = lost.running()
    t0 = time.time()
    lost.kill()
    out: dict[str, Any] = {"host": lost.name, "cameras": len(moving), "kill_call_s": time.time() - t0, "down_s": None}
    running: dict[str, tuple[float, str, int]] = {}  # program → (seconds, new host, pid)
    online: dict[str, float] = {}
    shown: dict[str, float] = {}  # online in /cameras with the new host, whatever the pid: what an operator sees
    while time.time() - t0 < timeout and (out["down_s"] is None or len(online) < len(moving)):
        now = time.time() - t0
        if out["down_s"] is None and site.host_up(lost.name) is False:
            out["down_s"] = now
        for host in others:
            for name, (state, pid) in host.programs().items():
                if name in moving and state == "RUNNING":
                    running.setdefault(name, (now, host.name, pid))
        states = site.cameras()
        for name in moving:
            c = states.get(cameras[name], {})
            if c.get("online") and c.get("host") not in (None, lost.name):
                shown.setdefault(name, now)
                if name in running and c.get("pid") == running[name][2]:
                    online.setdefault(name, now)
        time.sleep(0.5)
    complete = len(moving) > 0
    out.update({
        "moved": len(running), "online_n": len(online),
        "all_running_s": max(v[0] for v in running.values()) if complete and len(running) == len(moving) else None,
        "all_online_s": max(online.values()) if complete and len(online) == len(moving) else None,
        "running": summary(v[0] for v in running.values()), "online": summary(online.values()),
        "shown_online_first_s": min(shown.values(), default=None),
        "to": {h.name: sum(1 for v in running.values() if v[1] == h.name) for h in others}})
    say(f"  failover: killed {lost.name} ({len(moving)} cameras): down at the gateway after {fmt(out['down_s'])} s; "
        f"all RUNNING elsewhere after {fmt(out['all_running_s'])} s; all online (new process) after "
        f"{fmt(out['all_online_s'])} s; moved to {out['to']}")
    return out


def site_figures(work: Path, quick: bool) -> dict[str, Any]:
    from gateway.core import RECONCILE_S
    from gateway.hosts.settings import RemoteSettings
    from gateway.supervisor.programs import ProgramSpec

    plan = QUICK if quick else FULL
    out: dict[str, Any] = {
        "setup": "network namespaces (tests/gateway/hosts/netns.py), one supervisord per host", "hosts": 3,
        "capacity": plan.capacity, "cameras": plan.cameras, "reps": plan.reps,
        "workers": "heartbeat-only stand-in (bench/idle_worker.py), tcp:// + CURVE to the gateway",
        "remote": {"check_interval_s": CHECK_S, "down_after_s": DOWN_S,
                   "rpc_timeout_s": RemoteSettings().rpc_timeout_s},
        "reconcile_s": RECONCILE_S, "startsecs": ProgramSpec.startsecs, "nice": NICE,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}
    with _site(work, plan.capacity) as site:
        base = [subscription(f"h{i:03d}", DEAD_RTSP) for i in range(plan.cameras)]
        out["bulk"] = _bulk(site, base)
        time.sleep(2.0 if quick else 10.0)  # the stand-ins' start-up is over: let the machine settle
        out["steady"] = _steady(site, 5.0 if quick else 10.0)
        out["changes"] = [_change(site, base, f"hx{r:02d}") for r in range(plan.reps)]
        say("  one change: " + "; ".join(f"{label} {ms_summary(out['changes'], key)}" for key, label in CHANGE_ROWS))
        out["downs_before_kill"] = site.log_lines("is down (")
        out["failover"] = _failover(site, {program_name(s["subscriptionIdentifier"].split(";")[1]):
                                           s["subscriptionIdentifier"].split(";")[1] for s in base}, 300)
        out["apply_errors"] = len(site.log_lines("supervisord apply errors"))
    return out


CHANGE_ROWS = (("spawned_s", "add one → STARTING on its host"), ("running_s", "add one → RUNNING on its host"),
               ("online_s", "add one → online at the gateway"), ("gone_s", "remove one → gone from its host"))


def ms_summary(changes: list[dict[str, Any]], key: str) -> str:
    s = summary(c[key] * 1000 for c in changes if c[key] is not None)
    return f"{fmt(s['p50'], 0)} / {fmt(s['p99'], 0)} ms" if s["n"] else "–"
