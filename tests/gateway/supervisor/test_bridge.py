"""SupervisorBridge.apply against a real supervisord."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.supervisor.bridge import SupervisorBridge
from gateway.supervisor.programs import ProgramSpec, program_for_camera
from gateway.supervisor.rpc import SupervisorClient, SupervisorUnavailable

from .conftest import FAKE_WORKER, Supervisord, running_pids, wait_state

pytestmark = pytest.mark.slow  # make check skips it: a real supervisord


def desired(*programs: ProgramSpec) -> dict[str, ProgramSpec]:
    return {p.name: p for p in programs}


def test_add_three_then_reapply_touches_nothing(supervisord: Supervisord) -> None:
    sv = supervisord
    programs = desired(*(sv.program(f"camera-{n}") for n in "abc"))

    async def body() -> None:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        report = await bridge.apply(programs)
        assert report.added == ["camera-a", "camera-b", "camera-c"] and report.ok, report
        infos = [await wait_state(sv.client, n, {"RUNNING"}) for n in programs]
        states = await bridge.states()
        assert sorted(states) == sorted(programs) and {i.state for i in states.values()} == {"RUNNING"}
        mtimes = {p.name: p.stat().st_mtime_ns for p in sv.conf_dir.iterdir()}

        again = await bridge.apply(programs)
        assert (again.added, again.removed, again.replaced, again.errors) == ([], [], [], {})
        assert again.unchanged == sorted(programs)
        assert {n: i.pid for n, i in (await bridge.states()).items()} == {i.name: i.pid for i in infos}
        assert {p.name: p.stat().st_mtime_ns for p in sv.conf_dir.iterdir()} == mtimes

    asyncio.run(body())


def test_remove_one_stops_only_it(supervisord: Supervisord) -> None:
    sv = supervisord
    a, b, c = (sv.program(f"camera-{n}") for n in "abc")

    async def body() -> None:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply(desired(a, b, c))
        pids = await running_pids(sv.client, ["camera-a", "camera-b", "camera-c"])
        report = await bridge.apply(desired(a, c))
        assert (report.removed, report.unchanged, report.errors) == (["camera-b"], ["camera-a", "camera-c"], {})
        states = await bridge.states()
        assert sorted(states) == ["camera-a", "camera-c"]
        assert {n: i.pid for n, i in states.items()} == {"camera-a": pids["camera-a"], "camera-c": pids["camera-c"]}
        assert not (sv.conf_dir / "camera-b.conf").exists()

    asyncio.run(body())


def test_change_one_restarts_only_it(supervisord: Supervisord) -> None:
    sv = supervisord
    a, b, c = (sv.program(f"camera-{n}") for n in "abc")

    async def body() -> None:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply(desired(a, b, c))
        pids = await running_pids(sv.client, ["camera-a", "camera-b", "camera-c"])
        report = await bridge.apply(desired(a, sv.program("camera-b", "--max-fps=5"), c))
        assert (report.replaced, report.unchanged, report.errors) == (["camera-b"], ["camera-a", "camera-c"], {})
        after = await running_pids(sv.client, ["camera-a", "camera-b", "camera-c"])
        assert after["camera-a"] == pids["camera-a"] and after["camera-c"] == pids["camera-c"]
        assert after["camera-b"] != pids["camera-b"]
        assert "--max-fps=5" in (sv.conf_dir / "camera-b.conf").read_text()

    asyncio.run(body())


def test_operator_stopped_camera_stays_stopped(supervisord: Supervisord) -> None:
    sv = supervisord
    a, b = sv.program("camera-a"), sv.program("camera-b")

    async def body() -> None:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        await bridge.apply(desired(a, b))
        pids = await running_pids(sv.client, ["camera-a", "camera-b"])
        await asyncio.sleep(0.2)  # let it exec: a stop in the fork/exec window is lost (see bridge._stop)
        await sv.client.stop("camera-b")  # the operator

        # An unrelated change: a new camera.
        report = await bridge.apply(desired(a, b, sv.program("camera-c")))
        assert (report.added, report.unchanged) == (["camera-c"], ["camera-a", "camera-b"])
        # Its own config changes: it is replaced, and stopped again right after it is re-added.
        report = await bridge.apply(desired(a, sv.program("camera-b", "--v2"), sv.program("camera-c")))
        assert (report.replaced, report.errors) == (["camera-b"], {})
        await asyncio.sleep(0.5)  # autostart would have started it by now
        states = await bridge.states()
        assert states["camera-b"].state == "STOPPED"
        assert states["camera-a"].pid == pids["camera-a"]
        assert "--v2" in (sv.conf_dir / "camera-b.conf").read_text()
        # Once the operator starts it again, it runs the new config and later applies leave it alone.
        await sv.client.start("camera-b", wait=False)
        started = await running_pids(sv.client, ["camera-b"])
        report = await bridge.apply(desired(a, sv.program("camera-b", "--v2"), sv.program("camera-c")))
        assert report.unchanged == ["camera-a", "camera-b", "camera-c"]
        assert (await sv.client.process_info("camera-b")).pid == started["camera-b"]

    asyncio.run(body())


def test_hostile_camera_ids_reach_files_only_as_slugs(supervisord: Supervisord) -> None:
    sv = supervisord
    hostile = ["a;b", "x\n[program:evil]\ncommand=touch /tmp/pwned", '"quoted"', "p%40ss", "../../etc", "all",
               "h" * 5000]
    programs = {}
    for camera_id in hostile:
        program = program_for_camera(camera_id, python=sv.program("camera-x").command[0],
                                     spec_path=sv.specs / "placeholder.json", project_dir=sv.root, log_dir=sv.logs)
        # The stand-in worker instead of the real one; the name, paths and environment are the real ones.
        programs[program.name] = ProgramSpec(
            name=program.name, command=[program.command[0], str(FAKE_WORKER), *program.command[1:]],
            directory=program.directory, environment=program.environment, stdout_logfile=program.stdout_logfile)

    async def body() -> None:
        bridge = SupervisorBridge(sv.client, sv.conf_dir)
        report = await bridge.apply(programs)
        assert report.ok and report.added == sorted(programs), report
        await running_pids(sv.client, programs)
        assert sorted(await bridge.states()) == sorted(programs)

    asyncio.run(body())
    texts = "\n".join(p.read_text() for p in sv.conf_dir.glob("*.conf"))
    assert len(list(sv.conf_dir.iterdir())) == len(hostile)
    # The ids survive only as slugs ("x-program-evil-command-touch-tmp-pwned-<hash>"), never as config.
    assert "[program:evil]" not in texts and not re.search(r"^command=touch", texts, re.MULTILINE)
    settings = "\n".join(line for line in texts.splitlines() if not line.startswith("; Written by the gateway"))
    assert not re.search(r"[%;]|\"quoted\"|\.\./", settings)
    assert len(re.findall(r"^\[", texts, re.MULTILINE)) == len(hostile)
    for name in programs:
        assert re.fullmatch(r"camera-[a-z0-9_-]{1,60}", name) and name != "camera-all"
    assert not Path("/tmp/pwned").exists()


def test_errors_are_per_program_and_retried(supervisord: Supervisord) -> None:
    sv = supervisord

    class Flaky(SupervisorClient):
        fail = True

        async def add_group(self, name: str) -> None:
            if name == "camera-b" and self.fail:
                raise SupervisorUnavailable("injected")
            await super().add_group(name)

    client = Flaky(sv.socket)
    bad = sv.program("camera-d", environment={"PASSWORD": "p%40ss"})

    async def body() -> None:
        bridge = SupervisorBridge(client, sv.conf_dir)
        programs = desired(*(sv.program(f"camera-{n}") for n in "abc"), bad)
        report = await bridge.apply(programs)
        assert report.added == ["camera-a", "camera-c"]
        assert set(report.errors) == {"camera-b", "camera-d"}
        assert "injected" in report.errors["camera-b"] and "environment.PASSWORD" in report.errors["camera-d"]
        assert not (sv.conf_dir / "camera-d.conf").exists()
        client.fail = False
        retry = await bridge.apply(programs)  # nothing special: supervisord still reports camera-b as added
        assert retry.added == ["camera-b"] and retry.unchanged == ["camera-a", "camera-c"]
        assert set(retry.errors) == {"camera-d"}
        assert sorted(await bridge.states()) == ["camera-a", "camera-b", "camera-c"]

    asyncio.run(body())
