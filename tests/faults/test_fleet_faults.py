"""Fault injection against a whole real fleet: kill -9 of workers, of the gateway and of
supervisord; camera (RTSP) outages and hangs; Redis and PostgreSQL restarts.

Every test checks what the fault must not do: touch cameras it does not concern (their
detections keep coming with no silence beyond the footage's own, and their pids never change),
and lose a completed session's row or image. Measured figures are printed (`-s`) as `[fault] ...`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import MODEL_URL
from tests.faults.harness import (
    RecordingBackend,
    alive,
    assert_sessions_stored,
    camera,
    gaps,
    gateway_pids,
    metric,
    normal_gap_s,
    program_pid,
    stored_sessions,
    wait_until,
    workers_by_slug,
)
from tests.fleet import ROOT, Fleet, subscription
from tests.rtsp import RtspServer
from tests.servers import PostgresTemplate, RedisServer

pytestmark = pytest.mark.fault

# Beyond the footage's own longest silence: stability frames at 5 fps, a loaded 2-core machine.
GAP_SLACK_S = 6.0
STARTUP_S = 60.0  # fleet start → every camera online with a first detection
RECOVERY_S = 40.0  # a restarted worker or a returning camera back online


def say(what: str) -> None:
    print(f"[fault] {what}", flush=True)


def sub(display: str, cam: str, server: RtspServer) -> dict[str, object]:
    return subscription(display, cam, server.url(cam), MODEL_URL)


def sid(display: str, cam: str) -> str:
    return f"{display};{cam}"


def online(fleet: Fleet, cam: str) -> bool:
    return bool(camera(fleet, cam).get("online"))


def wait_running(fleet: Fleet, backend: RecordingBackend, subs: dict[str, str]) -> float:
    """Every camera online and each subscription's first detection in; returns when (monotonic)."""
    wait_until(lambda: all(online(fleet, c) for c in subs.values()), STARTUP_S, "every camera online")
    wait_until(lambda: all(backend.detections(s) for s in subs), STARTUP_S, "a first detection of every camera")
    return time.monotonic()


def assert_no_gap(backend: RecordingBackend, subscription_id: str, fault_at: float, end: float, limit: float) -> float:
    """From the camera's last detection before the fault to `end`, no silence over `limit`; the longest."""
    before = [t for t in backend.detections(subscription_id) if t < fault_at]
    assert before, f"{subscription_id} had no detection before the fault"
    silences = gaps(backend.detections(subscription_id), before[-1], end)
    assert max(silences) <= limit, (f"{subscription_id} went {max(silences):.1f} s without a detection "
                                    f"(limit {limit:.1f} s): {[round(g, 1) for g in silences]}")
    return max(silences)


def wait_detection(backend: RecordingBackend, subscription_id: str, since: float, timeout: float) -> float:
    wait_until(lambda: backend.detections(subscription_id, since), timeout, f"a detection of {subscription_id}")
    return backend.detections(subscription_id, since)[0]


# -- 1 -------------------------------------------------------------------------------------------------

def test_worker_kill_9_three_times_leaves_the_other_cameras_alone(
        make_fleet: Callable[..., Fleet], start_backend: Callable[..., RecordingBackend], stop_clip: Path,
        redis_url: str, database_url: str) -> None:
    limit = normal_gap_s(stop_clip) + GAP_SLACK_S
    sa, sb, sc = sid("display-a", "cam-a"), sid("display-b", "cam-b"), sid("display-c", "cam-c")
    with RtspServer({"cam-a": stop_clip, "cam-b": stop_clip, "cam-c": stop_clip}) as server:
        fleet = make_fleet(redis_url=redis_url, database_url=database_url)
        backend = start_backend(fleet, [sub("display-a", "cam-a", server), sub("display-b", "cam-b", server),
                                        sub("display-c", "cam-c", server)], {"display-a", "display-b", "display-c"})
        wait_running(fleet, backend, {sa: "cam-a", sb: "cam-b", sc: "cam-c"})
        before = fleet.programs()
        others = {name: pid for name, (_, pid) in before.items() if name != "camera-cam-a"}
        first_kill = time.monotonic()
        for i in (1, 2, 3):
            pid = program_pid(fleet, "camera-cam-a")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            t_off = wait_until(lambda: not online(fleet, "cam-a") and time.monotonic(), 5, "cam-a offline")
            t_on = wait_until(lambda p=pid: (c := camera(fleet, "cam-a")).get("online") and c["pid"] != p
                              and time.monotonic(), RECOVERY_S, "cam-a online again")
            assert camera(fleet, "cam-a")["restarts"] == i
            r_off = wait_until(lambda t=t0: backend.first_report(sa, t, lambda e: not e["online"]), 5,
                               "a stateReport with cam-a offline")
            r_on = wait_until(lambda t=r_off[0], n=i: backend.first_report(
                sa, t, lambda e: e["online"] and e["restarts"] == n), 10, "a stateReport with cam-a online again")
            say(f"worker kill -9 #{i}: /cameras offline after {t_off - t0:.2f} s, online after {t_on - t0:.2f} s; "
                f"stateReport offline after {r_off[0] - t0:.2f} s, online after {r_on[0] - t0:.2f} s")
            assert {n: pid for n, (_, pid) in fleet.programs().items() if n != "camera-cam-a"} == others
        last = time.monotonic()
        for s in (sb, sc):
            wait_detection(backend, s, last, limit)
        again = wait_detection(backend, sa, last, limit)
        end = time.monotonic()
        say(f"worker kill -9: cam-a's first detection {again - last:.1f} s after its last recovery")
        worst = {s: round(assert_no_gap(backend, s, first_kill, end, limit), 1) for s in (sb, sc)}
        say(f"worker kill -9: longest silence of the other cameras {worst} s (limit {limit:.1f} s)")
        assert {n: pid for n, (_, pid) in fleet.programs().items() if n != "camera-cam-a"} == others
        assert {s: len(p) for s, p in workers_by_slug(fleet).items()} == {"cam-a": 1, "cam-b": 1, "cam-c": 1}
        assert camera(fleet, "cam-b")["restarts"] == camera(fleet, "cam-c")["restarts"] == 0
        assert metric(fleet, "fleet_camera_restarts_total", "cam-a") == 3
        say(f"worker kill -9: sessions {assert_sessions_stored(backend, redis_url, database_url)}")


# -- 2 -------------------------------------------------------------------------------------------------

def test_gateway_kill_9_keeps_the_workers_which_drop_what_they_cannot_send(
        make_fleet: Callable[..., Fleet], start_backend: Callable[..., RecordingBackend], stop_clip: Path,
        redis_url: str, database_url: str) -> None:
    limit = normal_gap_s(stop_clip) + GAP_SLACK_S
    subs = {sid("display-a", "cam-a"): "cam-a", sid("display-b", "cam-b"): "cam-b"}
    with RtspServer({"cam-a": stop_clip, "cam-b": stop_clip}) as server:
        fleet = make_fleet(redis_url=redis_url, database_url=database_url)
        backend = start_backend(fleet, [sub("display-a", "cam-a", server), sub("display-b", "cam-b", server)],
                                {"display-a", "display-b"})
        wait_running(fleet, backend, subs)
        programs, workers = fleet.programs(), workers_by_slug(fleet)
        assert {s: len(p) for s, p in workers.items()} == {"cam-a": 1, "cam-b": 1}

        def gateway_back(t0: float, old: int) -> float:
            wait_until(lambda: fleet.state("gateway") == "RUNNING" and program_pid(fleet, "gateway") != old, 30,
                       "supervisord to restart the gateway")
            return float(wait_until(lambda: backend.connects[-1] > t0 and backend.connects[-1], 30,
                                    "the backend connected again"))

        # 1: as it happens; supervisord restarts the gateway at once
        old = program_pid(fleet, "gateway")
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        t_back = gateway_back(t0, old)
        say(f"gateway kill -9: the backend was connected again after {t_back - t0:.2f} s")
        time.sleep(2)  # it declared the same list again: nothing restarts, nothing runs twice
        assert fleet.programs() == programs, "restarting the gateway restarted camera workers"
        assert workers_by_slug(fleet) == workers

        # 2: with supervisord held for a while, so the gateway stays down long enough for every worker
        # to try sending (a heartbeat every 2 s): those messages are dropped and counted, never queued
        # or waited for
        old = program_pid(fleet, "gateway")
        supervisord = int((fleet.base / "run/supervisord.pid").read_text())
        counted = {c: int(camera(fleet, c)["dropped"]) for c in subs.values()}  # e.g. sends before a first connect
        t1 = time.monotonic()
        os.kill(supervisord, signal.SIGSTOP)
        try:
            os.kill(old, signal.SIGKILL)
            time.sleep(3.0)
        finally:
            os.kill(supervisord, signal.SIGCONT)
        t_back = gateway_back(t1, old)
        say(f"gateway kill -9 held 3 s: the backend was connected again after {t_back - t1:.2f} s")
        dropped = wait_until(lambda: (d := {c: camera(fleet, c).get("dropped", 0) for c in subs.values()})
                             and all(d[c] > counted[c] for c in d) and d, 15, "every worker's dropped messages")
        say(f"gateway kill -9 held 3 s: bus messages the workers dropped and counted {counted} -> {dropped}")
        for cam, n in dropped.items():
            assert metric(fleet, "fleet_camera_bus_dropped_total", cam) == n
        for s in subs:
            wait_detection(backend, s, t_back, limit)
        resumed = {s: round(backend.detections(s, t1)[0] - t1, 1) for s in subs}
        say(f"gateway kill -9 held 3 s: first detection after the kill {resumed} s")
        # sessions bound through the new gateway reach workers that outlived the old one
        for display in ("display-a", "display-b"):
            wait_until(lambda d=display: backend.written_since(d, t_back), limit + 10,
                       f"a session of {display} bound after the restart to be written")
        assert fleet.programs() == programs and workers_by_slug(fleet) == workers
        assert gateway_pids(fleet) == [program_pid(fleet, "gateway")]
        say(f"gateway kill -9: sessions {assert_sessions_stored(backend, redis_url, database_url)}")


# -- 3 -------------------------------------------------------------------------------------------------

def test_camera_outage_and_hang_take_only_that_camera_offline(
        make_fleet: Callable[..., Fleet], start_backend: Callable[..., RecordingBackend], stop_clip: Path,
        redis_url: str, database_url: str) -> None:
    limit = normal_gap_s(stop_clip) + GAP_SLACK_S
    sa, sb, sc = sid("display-a", "cam-a"), sid("display-b", "cam-b"), sid("display-c", "cam-c")
    with RtspServer({"cam-a": stop_clip}) as one, RtspServer({"cam-b": stop_clip, "cam-c": stop_clip}) as two:
        fleet = make_fleet(redis_url=redis_url, database_url=database_url)
        backend = start_backend(fleet, [sub("display-a", "cam-a", one), sub("display-b", "cam-b", two),
                                        sub("display-c", "cam-c", two)], {"display-a", "display-b", "display-c"})
        wait_running(fleet, backend, {sa: "cam-a", sb: "cam-b", sc: "cam-c"})
        programs = fleet.programs()

        t0 = time.monotonic()
        one.kill()
        t_off = wait_until(lambda: not online(fleet, "cam-a") and time.monotonic(), 10, "cam-a offline")
        assert wait_until(lambda: backend.first_report(sa, t0, lambda e: not e["online"]), 5, "an offline report")
        time.sleep(max(0.0, t0 + 4 - time.monotonic()))  # a 4 s outage
        t1 = time.monotonic()
        one.restart()  # same port, same URL
        t_on = wait_until(lambda: online(fleet, "cam-a") and time.monotonic(), RECOVERY_S, "cam-a online again")
        assert wait_until(lambda: backend.first_report(sa, t_on - 0.5, lambda e: e["online"]), 5, "an online report")
        say(f"RTSP server killed: cam-a offline after {t_off - t0:.2f} s; online {t_on - t1:.2f} s after its restart")

        t2 = time.monotonic()
        one.freeze()
        try:
            t_off2 = wait_until(lambda: not online(fleet, "cam-a") and time.monotonic(), 30, "cam-a offline (hung)")
        finally:
            t3 = time.monotonic()
            one.thaw()
        t_on2 = wait_until(lambda: online(fleet, "cam-a") and time.monotonic(), RECOVERY_S, "cam-a online (thawed)")
        say(f"RTSP server frozen: cam-a offline after {t_off2 - t2:.2f} s; online {t_on2 - t3:.2f} s after the thaw")

        last = time.monotonic()
        for s in (sb, sc):
            wait_detection(backend, s, last, limit)
        again = wait_detection(backend, sa, t_on2, limit + 5)
        end = time.monotonic()
        say(f"RTSP outages: cam-a's first detection {again - t_on2:.1f} s after it was back")
        worst = {s: round(assert_no_gap(backend, s, t0, end, limit), 1) for s in (sb, sc)}
        say(f"RTSP outages: longest silence of the other server's cameras {worst} s (limit {limit:.1f} s)")
        assert fleet.programs() == programs, "a camera outage is no reason to restart any worker"
        cam = camera(fleet, "cam-a")
        assert cam["restarts"] == 0 and cam["reconnects"] >= 2
        assert camera(fleet, "cam-b")["reconnects"] == camera(fleet, "cam-c")["reconnects"] == 0
        say(f"RTSP outages: cam-a reconnects {cam['reconnects']}, stalls {cam['stalls']}")
        say(f"RTSP outages: sessions {assert_sessions_stored(backend, redis_url, database_url)}")


# -- 4 -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresTemplate]:
    from tests.servers import postgres_template

    with postgres_template("faults-pg-") as template:
        yield template


def test_redis_and_postgresql_restarts_lose_no_completed_session(
        make_fleet: Callable[..., Fleet], start_backend: Callable[..., RecordingBackend], stop_clip: Path,
        pg_template: PostgresTemplate, tmp_path: Path) -> None:
    limit = normal_gap_s(stop_clip) + GAP_SLACK_S
    sa, sb = sid("display-a", "cam-a"), sid("display-b", "cam-b")
    pg = pg_template.server()
    try:
        with RedisServer(tmp_path / "redis", persist=True) as rds, \
                RtspServer({"cam-a": stop_clip, "cam-b": stop_clip}) as server:
            rds.start()
            pg.start()
            fleet = make_fleet(redis_url=rds.url, database_url=pg.dsn)
            # display-a's sessions write to both stores; cam-b writes nothing: the unaffected camera
            backend = start_backend(fleet, [sub("display-a", "cam-a", server), sub("display-b", "cam-b", server)],
                                    {"display-a"})
            wait_running(fleet, backend, {sa: "cam-a", sb: "cam-b"})

            def next_session(since: float, what: str) -> float:
                b = wait_until(lambda: backend.written_since("display-a", since), limit + 5, what)
                return b.at

            def stored(session: float) -> None:
                ids = {b.session_id for b in backend.sessions("display-a") if b.at <= session}
                wait_until(lambda: ids <= set(stored_sessions(pg.dsn)), 20, "the session's row")

            t_first = time.monotonic()
            s1 = next_session(0, "session 1 written")
            stored(s1)
            t = time.monotonic()
            rds.kill()
            rds.start()
            say(f"stores: Redis restarted (kill -9, AOF) in {time.monotonic() - t:.2f} s between sessions 1 and 2")
            s2 = next_session(s1 + 0.01, "session 2 written")
            stored(s2)
            t = time.monotonic()
            pg.stop()
            pg.start()
            say(f"stores: PostgreSQL restarted (fast stop) in {time.monotonic() - t:.2f} s between sessions 2 and 3")
            s3 = next_session(s2 + 0.01, "session 3 written")
            # both stores down while session 4's result is written: it waits in the worker's durable outbox,
            # and the backend hears of it (patchSession) only once it is committed
            rds.kill()
            pg.stop()
            t_down = time.monotonic()
            s4 = wait_until(lambda: next((b.at for b in backend.sessions("display-a") if b.at > s3 + 0.01), None),
                            limit + 5, "session 4 bound while the stores are down")
            time.sleep(2.0)  # its result goes to the outbox and waits
            assert not backend.written_since("display-a", s3 + 0.01), "patchSession before the write was committed"
            rds.start()
            pg.start()
            t_up = time.monotonic()
            say(f"stores: both down {t_up - t_down:.1f} s while session 4 was written")
            next_session(s3 + 0.01, "session 4 reported written once the stores are back")
            wait_until(lambda: {b.session_id for b in backend.sessions("display-a") if b.at <= s4}
                       <= set(stored_sessions(pg.dsn)), 30, "session 4's row once the stores are back")
            say(f"stores: session 4's row in {time.monotonic() - t_up:.1f} s after the stores were back")
            end = time.monotonic()
            worst = {s: round(assert_no_gap(backend, s, t_first, end, limit), 1) for s in (sa, sb)}
            say(f"stores: longest silence {worst} s (limit {limit:.1f} s)")
            stats = assert_sessions_stored(backend, rds.url, pg.dsn, timeout=30)
            rows = stored_sessions(pg.dsn)
            assert all(brand and body for _, brand, body in rows.values()), rows
            say(f"stores: sessions {stats}")
    finally:
        pg.destroy()


# -- 5 -------------------------------------------------------------------------------------------------

def test_supervisord_kill_9_and_restart_leaves_one_worker_per_camera(
        make_fleet: Callable[..., Fleet], start_backend: Callable[..., RecordingBackend], stop_clip: Path,
        redis_url: str, database_url: str) -> None:
    limit = normal_gap_s(stop_clip) + GAP_SLACK_S
    subs = {sid("display-a", "cam-a"): "cam-a", sid("display-b", "cam-b"): "cam-b"}
    with RtspServer({"cam-a": stop_clip, "cam-b": stop_clip}) as server:
        fleet = make_fleet(redis_url=redis_url, database_url=database_url)
        backend = start_backend(fleet, [sub("display-a", "cam-a", server), sub("display-b", "cam-b", server)],
                                {"display-a", "display-b"})
        wait_running(fleet, backend, subs)
        before = workers_by_slug(fleet)
        assert {s: len(p) for s, p in before.items()} == {"cam-a": 1, "cam-b": 1}
        old_gateway = program_pid(fleet, "gateway")
        supervisord = int((fleet.base / "run/supervisord.pid").read_text())

        t0 = time.monotonic()
        os.kill(supervisord, signal.SIGKILL)
        wait_until(lambda: not alive(supervisord), 5, "supervisord gone")
        assert workers_by_slug(fleet) == before, "the workers outlive their supervisord"
        subprocess.run([f"{ROOT}/.venv/bin/supervisord", "-c", str(fleet.base / "conf/supervisord.conf")],
                       check=True, timeout=30)
        t1 = time.monotonic()
        orphans = [pid for pids in before.values() for pid in pids]
        t_ended = wait_until(lambda: not any(alive(p) for p in orphans) and time.monotonic(), 30,
                             "the orphaned workers ended")
        wait_until(lambda: fleet.state("gateway") == "RUNNING", 30, "the new supervisord's gateway running")
        assert not alive(old_gateway), "the old gateway outlived its supervisord"
        assert gateway_pids(fleet) == [program_pid(fleet, "gateway")]

        def one_each() -> dict[str, list[int]] | None:
            workers, programs = workers_by_slug(fleet), fleet.programs()
            single = {s: len(p) for s, p in workers.items()} == {"cam-a": 1, "cam-b": 1}
            supervised = all(programs.get(f"camera-{s}") == ("RUNNING", p[0]) for s, p in workers.items())
            return workers if single and supervised else None

        after = wait_until(one_each, 30, "exactly one supervised worker per camera")
        t_one = time.monotonic()
        say(f"supervisord kill -9: orphans ended {t_ended - t1:.2f} s after the restart, one supervised worker "
            f"per camera after {t_one - t1:.2f} s")
        for s in subs:
            wait_detection(backend, s, t1, limit + 10)
        t_on = wait_until(lambda: all(online(fleet, c) for c in subs.values()) and time.monotonic(), RECOVERY_S,
                          "every camera online")
        resumed = {s: round(backend.detections(s, t0)[0] - t0, 1) for s in subs}
        say(f"supervisord kill -9: cameras online {t_on - t1:.2f} s after the restart; "
            f"first detections after the kill {resumed} s")
        t_back = backend.connects[-1]
        assert t_back > t0, "the backend never connected to the new gateway"
        for display in ("display-a", "display-b"):
            wait_until(lambda d=display: backend.written_since(d, t_back), limit + 10,
                       f"a session of {display} bound after the restart to be written")
        assert workers_by_slug(fleet) == after, "still exactly the same single worker per camera"
        assert gateway_pids(fleet) == [program_pid(fleet, "gateway")]
        say(f"supervisord kill -9: sessions {assert_sessions_stored(backend, redis_url, database_url)}")
