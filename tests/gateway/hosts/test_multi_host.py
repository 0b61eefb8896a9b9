"""One gateway, three worker hosts: real supervisord processes in network namespaces of this machine.

Each host is set up by scripts/setup_worker_host.py and runs its supervisord (with the fleet agent)
inside its own namespace; its workers reach the gateway's bus over tcp:// with CURVE, and the RTSP
server and the stores through the lab's one root-namespace address. The gateway runs as in
production, as a program of the root namespace's own supervisord (tests/fleet.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import MODEL_URL
from tests.faults.harness import RecordingBackend, wait_until
from tests.faults.test_exactly_once import account, say
from tests.fleet import Fleet, subscription
from tests.gateway.hosts.netns import ROOT, NetnsLab, WorkerHost, netns_unavailable
from tests.rtsp import RtspServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.fault,
              pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))]
MOVE_S = 10.0  # a lost host's cameras run elsewhere within this (the goal)
PASSWORD = "lab-host-secret"


@dataclass
class Site:
    lab: NetnsLab
    hosts: list[WorkerHost]
    fleet: Fleet
    rtsp: RtspServer

    def placed(self) -> dict[str, list[str]]:
        """Camera program → the hosts where it runs now (more than one: running twice)."""
        out: dict[str, list[str]] = {}
        for host in self.hosts:
            for name in host.running():
                out.setdefault(name, []).append(host.name)
        return out

    def hosts_view(self) -> dict[str, dict[str, Any]]:
        status, body, _ = self.fleet.get("/hosts")
        assert status == 200
        return {h["name"]: h for h in json.loads(body)["hosts"]}

    def metric(self, name: str) -> float:
        _, body, _ = self.fleet.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _via(lab: NetnsLab, url: str) -> str:
    """A store URL as the hosts reach it: through a forwarder on the lab's root-namespace address."""
    parts = urllib.parse.urlsplit(url)
    port = lab.forward(parts.hostname or "127.0.0.1", parts.port or (6379 if parts.scheme == "redis" else 5432))
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit((parts.scheme, f"{user}{lab.service_ip}:{port}", parts.path, parts.query, ""))


@pytest.fixture
def site_factory(tmp_path: Path, fault_model_cache: Path, stop_clip: Path, redis_url: str,
                 database_url: str) -> Iterator[Any]:
    made: list[tuple[NetnsLab, Fleet, RtspServer]] = []

    def make(cameras: int, *, capacity: int = 6, tamper: dict[int, dict[str, Any]] | None = None) -> Site:
        lab = NetnsLab(3).__enter__()
        rtsp = RtspServer({f"cam-{i}": stop_clip for i in range(cameras)}, host=lab.service_ip).__enter__()
        keys = tmp_path / "keys"
        subprocess.run([sys.executable, str(ROOT / "scripts/setup_worker_host.py"), "gateway-keys", "--dir",
                        str(keys)], check=True, capture_output=True)
        push, control = free_port(), free_port()
        redis_via, database_via = _via(lab, redis_url), _via(lab, database_url)
        hosts = [lab.host(i, tmp_path / f"host-{i}", name=f"host-{chr(97 + i)}", password=PASSWORD,
                          gateway_key=keys / "gateway.key", capacity=capacity, model_cache=fault_model_cache,
                          gateway_push=f"tcp://{lab.service_ip}:{push}",
                          gateway_control=f"tcp://{lab.service_ip}:{control}",
                          redis_url=redis_via, database_url=database_via) for i in range(3)]
        for host in hosts:
            host.start()
        extra = {"backend": {"patch_session": True},
                 "hosts": [h.settings(**(tamper or {}).get(i, {})) for i, h in enumerate(hosts)],
                 "remote": {"listen_push": f"tcp://{lab.service_ip}:{push}",
                            "listen_control": f"tcp://{lab.service_ip}:{control}",
                            "secret_key_file": str(keys / "gateway.key_secret"),
                            "check_interval_s": 0.5, "down_after_s": 3.0}}
        fleet = Fleet(tmp_path / "gateway", model_cache=fault_model_cache, redis_url=redis_url,
                      database_url=database_url, extra=extra)
        made.append((lab, fleet, rtsp))
        fleet.start()
        return Site(lab, hosts, fleet, rtsp)

    yield make
    for lab, fleet, rtsp in made:
        for close in (fleet.stop, rtsp.stop, lab.close):
            try:
                close()
            except Exception as err:  # tear everything down whatever failed
                print(f"teardown: {err}")


def _subscriptions(site: Site, cameras: int) -> list[dict[str, Any]]:
    return [subscription(f"display-{i}", f"cam-{i}", site.rtsp.url(f"cam-{i}"), MODEL_URL) for i in range(cameras)]


def _running_once(site: Site, programs: int) -> bool:
    placed = site.placed()
    return len(placed) == programs and all(len(hosts) == 1 for hosts in placed.values())


def test_twelve_cameras_spread_over_three_hosts_all_detect_and_a_drain_moves_them(site_factory: Any) -> None:
    site: Site = site_factory(12)
    backend = RecordingBackend(site.fleet, _subscriptions(site, 12)).start()
    try:
        wait_until(lambda: _running_once(site, 12), 120, "12 cameras running, each on one host")
        per_host = {h.name: len(h.running()) for h in site.hosts}
        assert per_host == {"host-a": 4, "host-b": 4, "host-c": 4}, per_host
        wanted = {f"display-{i};cam-{i}" for i in range(12)}
        wait_until(lambda: wanted <= {m["subscriptionIdentifier"] for _, m in backend.messages("imageDetection")},
                   240, "an imageDetection from every camera")
        cameras = site.fleet.cameras()
        assert {c["host"] for c in cameras.values()} == {"host-a", "host-b", "host-c"}
        view = site.hosts_view()
        assert all(h["up"] and h["cameras"] == 4 for h in view.values()), view

        # drain host-c: its cameras move to the others (capacity 6 each), each runs once all along
        moving = site.hosts[2].running()
        t0 = time.monotonic()
        drain = subprocess.run([sys.executable, str(ROOT / "scripts/drain_host.py"), "host-c", "--gateway",
                                f"ws://127.0.0.1:{site.fleet.port}", "--wait", "60"], capture_output=True, text=True)
        assert drain.returncode == 0, drain.stderr
        wait_until(lambda: not site.hosts[2].running() and _running_once(site, 12), 60, "host-c drained")
        say(f"drain: {len(moving)} cameras moved in {time.monotonic() - t0:.1f} s")
        assert {h.name: len(h.running()) for h in site.hosts} == {"host-a": 6, "host-b": 6, "host-c": 0}
        assert site.hosts_view()["host-c"]["draining"]
        since = time.monotonic()
        wait_until(lambda: all(backend.detections(f"display-{i};cam-{i}", since) for i in range(12)), 240,
                   "detections from every camera after the drain")
    finally:
        backend.close()


@pytest.mark.parametrize("loss", ["kill", "link"])
def test_a_lost_host_moves_its_cameras_and_its_stale_copies_write_nothing(
        site_factory: Any, loss: str, redis_url: str, database_url: str, stop_clip: Path, tag: str) -> None:
    site: Site = site_factory(6)
    displays = [f"display-{i}" for i in range(6)]
    backend = RecordingBackend(site.fleet, _subscriptions(site, 6), bind=set(displays), tag=tag).start()
    try:
        wait_until(lambda: _running_once(site, 6), 120, "6 cameras running, each on one host")
        wait_until(lambda: all(backend.sessions(d) for d in displays), 180, "a session bound on every display")
        lost = site.hosts[0]
        moving = lost.running()
        assert len(moving) == 2
        t0 = time.monotonic()
        if loss == "kill":
            lost.kill()
        else:
            site.lab.link_down(0)
        wait_until(lambda: moving <= site.hosts[1].running() | site.hosts[2].running(), 30,
                   "the lost host's cameras running elsewhere")
        moved_s = time.monotonic() - t0
        online = {c: site.fleet.cameras()[c] for c in (f"cam-{n.rsplit('-', 1)[1]}" for n in moving)}
        say(f"{loss}: cameras running elsewhere after {moved_s:.1f} s; hosts {site.hosts_view()}")
        assert moved_s <= MOVE_S, f"moved in {moved_s:.1f} s"
        wait_until(lambda: all(site.fleet.cameras()[c]["online"] for c in online), 60, "moved cameras online")
        say(f"{loss}: moved cameras online after {time.monotonic() - t0:.1f} s")

        # the host comes back: its stale copies (a restarted supervisord starts its old programs) are fenced and
        # stopped; every camera runs once
        if loss == "kill":
            lost.start()
        else:
            site.lab.link_up(0)
        wait_until(lambda: site.hosts_view()["host-a"]["up"], 30, "host-a up again")
        wait_until(lambda: _running_once(site, 6) and not lost.running(), 30, "each camera on one host")
        assert all(not site.hosts_view()[h]["draining"] for h in ("host-a", "host-b", "host-c"))
        say(f"{loss}: fenced messages {site.metric('fleet_bus_fenced_messages_total')}")
        time.sleep(20)  # sessions go on being bound on the moved cameras
        counts = account(backend, displays, redis_url, database_url, stop_clip, timeout=60)
        assert counts["lost"] == 0 and counts["duplicated"] == 0, counts
    finally:
        backend.close()


def test_wrong_credentials_and_an_unknown_bus_key_are_refused_and_reported(site_factory: Any, tmp_path: Path) -> None:
    import zmq.auth

    public, _ = zmq.auth.create_certificates(tmp_path, "stranger")
    stranger = zmq.auth.load_certificate(public)[0].decode()
    # host-b: the gateway has the wrong XML-RPC password; host-c: its workers' bus key is not the one allow-listed
    site: Site = site_factory(4, tamper={1: {"password": "not-the-password"}, 2: {"bus_public_key": stranger}})
    backend = RecordingBackend(site.fleet, _subscriptions(site, 4)).start()
    try:
        wait_until(lambda: "credentials refused" in str(site.hosts_view()["host-b"]["error"]), 30,
                   "host-b reported as refusing the gateway's credentials")
        assert not site.hosts_view()["host-b"]["up"]
        assert not site.hosts[1].running()  # nothing placed on a host the gateway cannot log in to
        # the gateway's placement says which cameras host-c has (its programs reach RUNNING one by one: a set
        # taken from the first one running would count the other among host-a's)
        def all_placed() -> dict[str, dict[str, Any]] | None:
            cams = site.fleet.cameras()
            return cams if len(cams) == 4 and all(v.get("host") for v in cams.values()) else None

        placed = wait_until(all_placed, 60, "4 cameras placed")
        on_c = {c for c, v in placed.items() if v["host"] == "host-c"}
        assert on_c and {v["host"] for v in placed.values()} == {"host-a", "host-c"}, placed
        wait_until(lambda: site.hosts[2].running() == {f"camera-{c}" for c in on_c}, 120, "cameras started on host-c")
        wait_until(lambda: site.metric("fleet_bus_refused_connections_total") > 0, 60,
                   "host-c's bus connections refused")
        time.sleep(5)
        cameras = site.fleet.cameras()
        assert all(not cameras[c]["online"] for c in on_c), "a worker with an unknown key was heard"
        wait_until(lambda: all(site.fleet.cameras()[c]["online"] for c in cameras if c not in on_c), 120,
                   "host-a's cameras online")
    finally:
        backend.close()
