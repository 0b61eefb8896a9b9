"""HostFleet against real worker hosts on loopback: supervisord + the fleet agent, set up by
scripts/setup_worker_host.py, with a stand-in "python" that only sleeps (no real workers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from detector_worker.config.spec import WorkerSpec
from gateway.hosts.fleet import HostFleet
from gateway.hosts.settings import HostSettings, RemoteSettings
from gateway.supervisor.local import CameraProgram
from gateway.supervisor.programs import program_for_camera
from tests.rtsp import free_port

pytestmark = pytest.mark.slow  # real supervisord processes
ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "loopback-secret"


class LoopbackHost:
    def __init__(self, root: Path, name: str, gateway_key: Path) -> None:
        self.root, self.name, self.port = root, name, free_port()
        sleeper = root / "sleep-python"
        root.mkdir(parents=True)
        sleeper.write_text("#!/bin/sh\nexec sleep 1000\n")
        sleeper.chmod(0o755)
        done = subprocess.run([sys.executable, str(ROOT / "scripts/setup_worker_host.py"), "host", "--name", name,
                               "--root", str(root), "--listen", f"127.0.0.1:{self.port}", "--gateway-push",
                               "tcp://127.0.0.1:1", "--gateway-control", "tcp://127.0.0.1:2", "--gateway-key",
                               str(gateway_key), "--python", str(sleeper)], capture_output=True, text=True,
                              env={**os.environ, "FLEET_HOST_PASSWORD": PASSWORD})
        assert done.returncode == 0, done.stderr
        public, _ = zmq.auth.load_certificate(root / "keys/host.key")
        self.settings = HostSettings(name=name, url=f"http://127.0.0.1:{self.port}", username="fleet",
                                     password=PASSWORD, capacity=2, bus_public_key=public.decode())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "supervisord"), "-n", "-c",
                                      str(self.root / "supervisord.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        import xmlrpc.client

        proxy = xmlrpc.client.ServerProxy(f"http://fleet:{PASSWORD}@127.0.0.1:{self.port}/RPC2")
        deadline = time.monotonic() + 20
        while True:
            try:
                proxy.fleet.getInfo()
                return
            except (OSError, xmlrpc.client.Error):
                assert time.monotonic() < deadline, f"{self.name}'s supervisord did not answer"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            subprocess.run(["pkill", "-9", "-f", f"{self.root}/run/specs/"], check=False)
            self.proc = None

    def programs(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "supervisord.d").glob("camera-*.conf"))


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[LoopbackHost]]:
    (tmp_path / "keys").mkdir()
    public, _ = zmq.auth.create_certificates(tmp_path / "keys", "gateway")
    made = [LoopbackHost(tmp_path / f"host-{n}", f"host-{n}", Path(public)) for n in "ab"]
    for h in made:
        h.start()
    yield made
    for h in made:
        h.stop()


def cameras(tmp_path: Path, *ids: str) -> dict[str, CameraProgram]:
    out = {}
    for camera_id in ids:
        spec = WorkerSpec.model_validate({"camera_id": camera_id, "source": {"kind": "rtsp",
                                                                             "url": "rtsp://127.0.0.1:1/x"}})
        program = program_for_camera(camera_id, python=sys.executable, project_dir=ROOT, log_dir=tmp_path / "logs",
                                     spec_path=tmp_path / "specs" / f"{spec.slug}.json")
        out[camera_id] = CameraProgram(spec, program)
    return out


def fleet_of(tmp_path: Path, hosts: list[LoopbackHost]) -> HostFleet:
    remote = RemoteSettings(secret_key_file=tmp_path / "keys/gateway.key_secret", check_interval_s=0.2,
                            down_after_s=0.6, rpc_timeout_s=1.0)
    (tmp_path / "specs").mkdir(exist_ok=True)
    return HostFleet([h.settings for h in hosts], remote, tmp_path / "placements.json", tmp_path / "specs")


def test_placement_survives_a_gateway_restart_and_a_lost_host_moves_its_cameras(
        tmp_path: Path, hosts: list[LoopbackHost]) -> None:
    async def run() -> dict[str, Any]:
        changes: list[float] = []
        fleet = fleet_of(tmp_path, hosts)
        await fleet.open(lambda: changes.append(time.monotonic()))
        wanted = cameras(tmp_path, "cam-1", "cam-2", "cam-3")
        report = await fleet.apply_cameras(wanted)
        assert report.ok, report.errors
        first = {c: (fleet.host_of(c), fleet.epoch(c)) for c in wanted}
        assert sorted(len(h.programs()) for h in hosts) == [1, 2]
        assert sorted(p.name for p in (tmp_path / "specs").iterdir()) == ["cam-1.json", "cam-2.json", "cam-3.json"]
        spec_on_host = WorkerSpec.model_validate_json(next((hosts[0].root / "run/specs").iterdir()).read_text())
        assert spec_on_host.placement_epoch in {e for _, e in first.values()} and spec_on_host.fleet_id
        assert spec_on_host.bus.curve is not None  # the host's own bus settings, not the gateway's
        await fleet.close()

        again = fleet_of(tmp_path, hosts)  # the gateway restarted: nothing moves, no epoch changes
        await again.open(lambda: changes.append(time.monotonic()))
        assert (await again.apply_cameras(wanted)).ok
        assert {c: (again.host_of(c), again.epoch(c)) for c in wanted} == first

        lost = next(h for h in hosts if len(h.programs()) == 2)
        kept = next(h for h in hosts if h is not lost)
        moved = [c for c, (host, _) in first.items() if host == lost.name]
        lost.stop()
        t0 = time.monotonic()
        while again.hosts[lost.name].up:
            assert time.monotonic() - t0 < 5, "the lost host was not marked down"
            await asyncio.sleep(0.05)
        report = await again.apply_cameras(wanted)
        placed = {c: again.host_of(c) for c in wanted}
        out = {"report": report, "placed": placed, "moved": moved, "first": first, "kept": kept.name,
               "epochs": {c: again.epoch(c) for c in wanted}, "hosts": again.describe()}
        await again.close()
        return out

    out = asyncio.run(run())
    kept = out["kept"]
    # capacity 2: one of the lost host's two cameras fits on the other host, the other is unplaced
    assert sum(1 for c in out["moved"] if out["placed"][c] == kept) == 1
    assert len([c for c, h in out["placed"].items() if h is None]) == 1
    assert any("unplaced" in why for why in out["report"].errors.values())
    for c in out["moved"]:
        if out["placed"][c] is not None:
            assert out["epochs"][c] > out["first"][c][1]  # a new placement, a higher epoch
    view = {h["name"]: h for h in out["hosts"]}
    assert not view[next(n for n in view if n != kept)]["up"] and view[kept]["cameras"] == 2


def test_only_hosts_whose_share_changed_are_applied_and_a_host_that_lost_programs_gets_them_again(
        tmp_path: Path, hosts: list[LoopbackHost]) -> None:
    import xmlrpc.client

    async def run() -> None:
        fleet = fleet_of(tmp_path, hosts)
        await fleet.open(lambda: None)
        try:
            two = cameras(tmp_path, "cam-1", "cam-2")
            first = await fleet.apply_cameras(two)
            assert first.ok and first.added == ["camera-cam-1", "camera-cam-2"], first
            again = await fleet.apply_cameras(two)  # nothing changed: no host is asked anything
            assert again.ok and not (again.added or again.unchanged or again.specs_changed), again
            third = await fleet.apply_cameras(cameras(tmp_path, "cam-1", "cam-2", "cam-3"))
            # only cam-3's host took an apply: its other camera is the one unchanged program
            assert third.ok and third.added == ["camera-cam-3"] and len(third.unchanged) == 1, third
            host = next(h for h in hosts if h.name == fleet.host_of("cam-3"))
            proxy = xmlrpc.client.ServerProxy(f"http://fleet:{PASSWORD}@127.0.0.1:{host.port}/RPC2")
            proxy.supervisor.stopProcess("camera-cam-3")  # the host loses a program behind the gateway's back
            proxy.supervisor.removeProcessGroup("camera-cam-3")
            assert "camera-cam-3" not in await fleet.states()
            healed = await fleet.apply_cameras(cameras(tmp_path, "cam-1", "cam-2", "cam-3"))
            assert healed.ok and healed.added == ["camera-cam-3"], healed
            assert (await fleet.program_state("camera-cam-3")) is not None
        finally:
            await fleet.close()

    asyncio.run(run())
