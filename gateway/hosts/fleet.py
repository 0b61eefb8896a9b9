"""`HostFleet`: the gateway's supervisord port over several worker hosts.

Each camera runs on exactly one host (placement.py). Its spec and program entry are written on
that host by the host's agent (agent.py, `fleet.apply`), then the host's supervisord converges
through the same bridge as on one host, over HTTP. Every placement of a camera gets a new epoch,
stamped into its spec and from there on every bus message, so after a move the gateway hears only
the new copy (core.py drops other epochs).

Hosts are asked for `fleet.getInfo` every `check_interval_s`. One that has not answered for
`down_after_s` is down: the next apply places its cameras on the others. When it answers again,
the apply that follows converges it on its new share, which stops its stale copies; until then
their messages are fenced by epoch. Placements (host and epoch per camera, drained hosts) are kept
in a file, so a restarted gateway moves nothing and never reuses an epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector_worker.files import atomic_write

from ..supervisor.bridge import ApplyReport, SupervisorBridge
from ..supervisor.local import CameraProgram, remove_other_spec_files, write_spec_files
from ..supervisor.rpc import HttpSupervisorClient, ProcessInfo, SupervisorError, SupervisorUnavailable
from .placement import HostView, place
from .settings import HostSettings, RemoteSettings

log = logging.getLogger("gateway.hosts")
RPC_ERRORS = (SupervisorError, SupervisorUnavailable)
UNPLACED = "unplaced: no usable host has a free slot and its labels"
APPLY_LIMIT_RPCS = 15  # one host's apply may take this many RPC timeouts before it is given up on
RETRY_S = 5.0  # a host's apply that failed is tried again after this
BRIDGE_CONCURRENCY = 4  # program steps at once per host


@dataclass
class Host:
    settings: HostSettings
    client: HttpSupervisorClient  # applies and program actions, on this host's own threads
    health: HttpSupervisorClient  # fleet.getInfo only, on a thread of its own: never queued behind an apply
    bridge: SupervisorBridge
    up: bool = False
    last_ok: float = 0.0  # monotonic time of its last answer
    changed_at: float = field(default_factory=time.time)  # wall time it last went up or down
    draining: bool = False
    error: str | None = None  # why it is down (unreachable, credentials refused, ...)
    cpus: int = 0
    load1: float = 0.0
    applying: int = 0  # our applies in flight: a supervisord busy with our reloadConfig is not down
    applied: str | None = None  # digest of the share it last took without error (None: apply it again)
    threads: list[ThreadPoolExecutor] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.name

    def view(self) -> HostView:
        return HostView(self.name, self.settings.capacity, frozenset(self.settings.labels),
                        usable=self.up and not self.draining)


@dataclass
class Book:
    """Where each camera is placed, under which epoch; which hosts are drained. Kept on disk."""

    path: Path
    cameras: dict[str, tuple[str, int]] = field(default_factory=dict)  # camera id → (host, epoch)
    drained: set[str] = field(default_factory=set)
    last_epoch: int = 0
    fleet_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # this fleet, in shared stores

    @classmethod
    def load(cls, path: Path) -> Book:
        book = cls(path)
        with contextlib.suppress(FileNotFoundError):
            try:
                data = json.loads(path.read_text())
                book.cameras = {str(c): (str(h), int(e)) for c, (h, e) in data["cameras"].items()}
                book.drained = {str(h) for h in data["drained"]}
                book.last_epoch = max([int(data["last_epoch"]), *(e for _, e in book.cameras.values())])
                book.fleet_id = str(data["fleet_id"])
            except (ValueError, KeyError, TypeError) as err:
                log.error("placements in %s unreadable (%s): starting afresh", path, err)
        return book

    def save(self) -> None:
        data = {"cameras": self.cameras, "drained": sorted(self.drained), "last_epoch": self.last_epoch,
                "fleet_id": self.fleet_id}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)

    def new_epoch(self) -> int:
        """Higher than any before, even if the file was lost: milliseconds of the wall clock at least."""
        self.last_epoch = max(self.last_epoch + 1, int(time.time() * 1000))
        return self.last_epoch


class HostFleet:
    def __init__(self, hosts: list[HostSettings], remote: RemoteSettings, state_file: Path, specs_dir: Path, *,
                 labels_of: Callable[[str], frozenset[str]] = lambda camera_id: frozenset()) -> None:
        self.remote = remote
        self.specs_dir = specs_dir  # a copy of every spec here too: a restarted gateway inherits them
        self.hosts: dict[str, Host] = {}
        for settings in hosts:
            # Threads per host: measured, with the loop's shared pool (6 threads on 2 cores) three hosts'
            # applies queued the health checks behind them and healthy hosts were marked down.
            work = ThreadPoolExecutor(BRIDGE_CONCURRENCY + 2, thread_name_prefix=f"host-{settings.name}")
            probe = ThreadPoolExecutor(1, thread_name_prefix=f"health-{settings.name}")
            client, health = (HttpSupervisorClient(settings.url, settings.username, settings.secret(),
                                                   timeout_s=remote.rpc_timeout_s, executor=pool)
                              for pool in (work, probe))
            bridge = SupervisorBridge(client, Path("/nonexistent"), concurrency=BRIDGE_CONCURRENCY, local=False)
            self.hosts[settings.name] = Host(settings, client, health, bridge, threads=[work, probe])
        self.book = Book.load(state_file)
        for name in self.book.drained & set(self.hosts):
            self.hosts[name].draining = True
        self.labels_of = labels_of
        self.unplaced: list[str] = []
        self._programs: dict[str, str] = {}  # program name → host, as last applied
        self._lock = asyncio.Lock()
        self._on_change: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self, on_change: Callable[[], None]) -> None:
        """Ask every host once (so the first placement knows who is up), then keep asking."""
        self._on_change = on_change
        await asyncio.gather(*(self._check(h) for h in self.hosts.values()))
        self._task = asyncio.create_task(self._watch(), name="hosts")

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for host in self.hosts.values():
            for pool in host.threads:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.remote.check_interval_s)
            await asyncio.gather(*(self._check(h) for h in self.hosts.values()))

    async def _check(self, host: Host) -> None:
        try:
            info = await host.health.call("fleet.getInfo")
        except RPC_ERRORS as err:
            why = _why(err)
            if why != host.error and not host.up:
                log.error("host %s: %s", host.name, why)  # once per new reason, not every check
            host.error = why
            if host.up and not host.applying and time.monotonic() - host.last_ok >= self.remote.down_after_s:
                self._set_up(host, False)
            return
        host.last_ok = time.monotonic()
        host.error = None
        if isinstance(info, dict):
            host.cpus = int(info.get("cpus", 0) or 0)
            host.load1 = float(info.get("load1", 0.0) or 0.0)
        if not host.up:
            self._set_up(host, True)

    def _set_up(self, host: Host, up: bool) -> None:
        host.up = up
        host.applied = None  # a host back from down (a restarted supervisord?) takes its whole share again
        host.changed_at = time.time()
        if up:
            log.info("host %s is up", host.name)
        else:
            log.error("host %s is down (no answer for %.0f s: %s): moving its cameras", host.name,
                      self.remote.down_after_s, host.error)
        self._on_change()

    # -- operations --------------------------------------------------------------------------------
    def drain(self, name: str, draining: bool = True) -> bool:
        """Move a host's cameras away (before maintenance), or take it back; False: no such host."""
        host = self.hosts.get(name)
        if host is None:
            return False
        host.draining = draining
        (self.book.drained.add if draining else self.book.drained.discard)(name)
        self.book.save()
        self._on_change()
        return True

    def epoch(self, camera_id: str) -> int:
        placed = self.book.cameras.get(camera_id)
        return placed[1] if placed else 0

    def host_of(self, camera_id: str) -> str | None:
        placed = self.book.cameras.get(camera_id)
        return placed[0] if placed and camera_id not in self.unplaced else None

    def describe(self) -> list[dict[str, Any]]:
        """Per host: health, capacity and load, for /hosts, the dashboard and metrics."""
        placed: dict[str, int] = {}
        for camera_id, (name, _) in self.book.cameras.items():
            if camera_id not in self.unplaced:
                placed[name] = placed.get(name, 0) + 1
        return [{"name": h.name, "up": h.up, "draining": h.draining, "error": h.error,
                 "capacity": h.settings.capacity, "cameras": placed.get(h.name, 0),
                 "labels": list(h.settings.labels), "cpus": h.cpus, "load1": h.load1,
                 "since": h.changed_at} for h in self.hosts.values()]

    # -- applying ----------------------------------------------------------------------------------
    async def apply_cameras(self, cameras: Mapping[str, CameraProgram]) -> ApplyReport:
        async with self._lock:
            current = {c: host for c, (host, _) in self.book.cameras.items()}
            placement = place({c: self.labels_of(c) for c in cameras}, [h.view() for h in self.hosts.values()],
                              current)
            for camera_id, host in placement.assignment.items():
                if current.get(camera_id) != host:
                    self.book.cameras[camera_id] = (host, self.book.new_epoch())
            for camera_id in [c for c in self.book.cameras if c not in cameras]:
                del self.book.cameras[camera_id]
            self.book.save()  # before any host hears of an epoch: a restart never hands it out again
            if placement.moved:
                log.warning("moved camera(s) to other hosts: %s",
                            {c: placement.assignment[c] for c in placement.moved})
            self.unplaced = placement.unplaced
            shares: dict[str, dict[str, CameraProgram]] = {name: {} for name in self.hosts}
            for camera_id, host in placement.assignment.items():
                c = cameras[camera_id]
                spec = c.spec.model_copy(update={"placement_epoch": self.book.cameras[camera_id][1],
                                                 "fleet_id": self.book.fleet_id})
                shares[host][camera_id] = CameraProgram(spec, c.program)
            specs = {c.program.name: c.spec for c in cameras.values()}
            await asyncio.to_thread(write_spec_files, self.specs_dir, specs)  # what runs, as on one host
            requests = {name: _request(share) for name, share in shares.items()}
            live = [h for h in self.hosts.values() if h.up and h.applied != requests[h.name][1]]
            reports = await asyncio.gather(*(self._apply_host(h, shares[h.name], *requests[h.name]) for h in live))
            await asyncio.to_thread(remove_other_spec_files, self.specs_dir, {s.slug for s in specs.values()})
            report = ApplyReport()
            for done, part in zip(live, reports, strict=True):
                report.added += part.added
                report.removed += part.removed
                report.replaced += part.replaced
                report.unchanged += part.unchanged
                report.specs_changed += part.specs_changed
                report.errors.update({f"{done.name}:{k}": v for k, v in part.errors.items()})
            for camera_id in placement.unplaced:
                report.errors[cameras[camera_id].program.name] = UNPLACED
            self._programs = {c.program.name: h for h, share in shares.items() for c in share.values()}
            return report

    async def _apply_host(self, host: Host, share: Mapping[str, CameraProgram], request: dict[str, Any],
                          digest: str) -> ApplyReport:
        limit = self.remote.rpc_timeout_s * APPLY_LIMIT_RPCS
        host.applying += 1  # measured: reloadConfig with 100 programs on a loaded host blocks its getInfo > 3 s
        host.applied = None
        try:
            # measured: writing 100 spec files on a loaded host took more than one RPC timeout (2 s)
            written = await host.client.call("fleet.apply", request, timeout_s=limit)
            report = await asyncio.wait_for(
                host.bridge.apply({c.program.name: c.program for c in share.values()}, write=False), limit)
        except (*RPC_ERRORS, TimeoutError) as err:
            self._retry_later()  # half applied, or not at all: nothing else would ask again
            return ApplyReport(errors={"apply": _why(err)})
        finally:
            host.applying -= 1
        host.last_ok = time.monotonic()  # it answered our calls: alive
        report.specs_changed = [str(n) for n in written.get("changed", [])]
        report.errors.update({f"write {k}": str(v) for k, v in dict(written.get("errors", {})).items()})
        if report.ok:
            host.applied = digest
        return report

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.cancelled() or self._retry.when() <= asyncio.get_running_loop().time():
            self._retry = asyncio.get_running_loop().call_later(RETRY_S, self._on_change)

    # -- one program ------------------------------------------------------------------------------
    def _bridge(self, name: str) -> SupervisorBridge:
        host = self.hosts.get(self._programs.get(name, ""))
        if host is None or not host.up:
            raise SupervisorUnavailable(f"{name}: its host is not reachable")
        return host.bridge

    async def states(self) -> dict[str, ProcessInfo]:
        """Each camera program as its own host runs it (a moved camera's stale copy is not it)."""
        live = [h for h in self.hosts.values() if h.up]
        found = await asyncio.gather(*(h.bridge.states() for h in live), return_exceptions=True)
        out: dict[str, ProcessInfo] = {}
        for host, infos in zip(live, found, strict=True):
            if isinstance(infos, BaseException):
                continue
            mine = {n: i for n, i in infos.items() if self._programs.get(n) == host.name}
            if len(mine) < sum(1 for h in self._programs.values() if h == host.name):
                host.applied = None  # it lost programs (its supervisord restarted): the next apply sends them
            out.update(mine)
        return out

    async def program_state(self, name: str) -> ProcessInfo | None:
        """One program as its own host runs it (one call to that host only)."""
        try:
            return await self._bridge(name).client.process_info(name)
        except SupervisorError as err:
            if err.fault == "BAD_NAME":
                return None
            raise

    async def start(self, name: str) -> None:
        await self._bridge(name).start(name)

    async def stop(self, name: str) -> None:
        await self._bridge(name).stop(name)

    async def restart(self, name: str) -> None:
        await self._bridge(name).restart(name)

    async def adopt_or_clean(self, specs_dir: Path) -> list[int]:
        return []  # each host's own supervisord owns its processes; the agent keeps only what it was given


def _request(share: Mapping[str, CameraProgram]) -> tuple[dict[str, Any], str]:
    """What a host's agent is sent for its share (fleet.apply), and its digest."""
    request = {c.program.name: {"spec": c.spec.model_dump_json(), "autostart": c.program.autostart,
                                "startsecs": c.program.startsecs, "startretries": c.program.startretries,
                                "stopwaitsecs": c.program.stopwaitsecs} for c in share.values()}
    return request, hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _why(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "401" in text:
        return "credentials refused (HTTP 401): check the host's username/password"
    return text[:300]
