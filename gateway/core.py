"""The gateway's core: the desired state → spec files + supervisord programs; the bus in; the backend out.

Every change (a backend message, a cameras.yaml edit, an operator's button) goes to the one
`DesiredState` and then only marks the plan dirty; one apply task turns the newest plan into
files and supervisord calls through the one serialized bridge, so bursts coalesce and
supervisord sees one change at a time. Nothing from the network reaches a file raw: camera ids
become slugs, and URLs and credentials go only into 0600 spec files that only the worker reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from detector_worker.comms.bus import control_identity
from detector_worker.comms.messages import (
    AnyWorkerMessage,
    DisplayDetection,
    Heartbeat,
    Hello,
    ProcessState,
    SessionResult,
    Snapshot,
    Status,
)
from detector_worker.config.spec import WorkerSpec
from detector_worker.logs import log_path

from . import relay
from .backend import BackendChannel
from .desired import DesiredState
from .metrics import GatewayMetrics
from .ports import Supervisor, WorkerBus
from .quiet import LogLimiter
from .settings import GatewaySettings
from .state import CameraState
from .supervisor.local import CameraProgram, spec_path
from .supervisor.programs import ProgramSpec, program_for_camera
from .supervisor.rpc import SupervisorError, SupervisorUnavailable

log = logging.getLogger("gateway")
RECONCILE_S = 5.0
RPC_ERRORS = (SupervisorError, SupervisorUnavailable)


def _process_settings(spec: WorkerSpec) -> tuple[object, ...]:
    """What a running worker cannot take by reloading its spec: a change restarts its process."""
    return spec.bus, spec.log, spec.inference, spec.resource_limits, spec.stores, spec.model_cache_dir


class Gateway:
    def __init__(self, settings: GatewaySettings, *, desired: DesiredState, supervisor: Supervisor,
                 bus: WorkerBus, backend: BackendChannel, metrics: GatewayMetrics,
                 states: dict[str, CameraState]) -> None:
        self.settings = settings
        self.desired = desired
        self.supervisor = supervisor
        self.bus = bus
        self.backend = backend
        self.metrics = metrics
        self.states = states  # camera id → what we know of it now (shared with the metrics collector)
        self.programs: dict[str, ProgramSpec] = {}  # camera id → its program, as last applied
        self.applied: dict[str, WorkerSpec] = {}  # camera id → its spec, as last written
        self.identities: dict[str, bytes] = {}
        self._reload_on_hello: set[str] = set()  # cameras whose reload found no worker connected
        self._quiet = LogLimiter()  # repeated bad input: one line per key and interval
        self.gpu: tuple[float, float] = (0.0, 0.0)
        self._dirty = asyncio.Event()
        self._applied = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rechecks: dict[str, asyncio.Task[None]] = {}  # camera id → its pending STARTING → RUNNING check
        self._backend_gone: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for d in (self.settings.specs_dir, self.settings.programs_dir, self.settings.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.settings.specs_dir.chmod(0o700)
        for endpoint in (self.settings.bus.push_endpoint, self.settings.bus.control_endpoint):
            if endpoint.startswith("ipc://"):  # the bus's unix sockets: only this user may reach them
                directory = Path(endpoint.removeprefix("ipc://")).parent
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o700)
        with contextlib.suppress(*RPC_ERRORS):
            ended = await self.supervisor.adopt_or_clean(self.settings.specs_dir)
            if ended:
                log.warning("ended %d orphaned worker(s) left by an earlier supervisord: %s", len(ended), ended)
        self.bus.start(self.on_bus_message, self.on_hello, self.metrics.bus_invalid.inc)
        await self.supervisor.open(self.mark_dirty)
        self._tasks = [asyncio.create_task(self._apply_loop(), name="apply"),
                       asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                       asyncio.create_task(self._gpu_loop(), name="gpu")]
        if self.desired.inherited:  # a previous gateway's backend: as if it had just disconnected
            self._tasks.append(asyncio.create_task(self._forget_inherited_later(), name="inherited"))
        self.mark_dirty()

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._rechecks.values(), *([self._backend_gone] if self._backend_gone else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.supervisor.close()
        await self.bus.close()

    # -- applying the desired state ------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self._applied.clear()
        self._dirty.set()

    async def wait_applied(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._applied.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.apply()
            except Exception:
                log.exception("applying the camera plan failed; retrying shortly")
                await asyncio.sleep(1.0)
                self._dirty.set()
                continue
            if not self._dirty.is_set():
                self._applied.set()

    def _program(self, camera_id: str, spec: WorkerSpec) -> ProgramSpec:
        s = self.settings
        # The worker logs to stdout only under supervisord: its one log file is this, rotated by it.
        return program_for_camera(camera_id, python=s.python, spec_path=spec_path(s.specs_dir, spec.slug),
                                  project_dir=s.project_dir, log_dir=s.log_dir,
                                  stdout_logfile=log_path(s.log_dir, spec.slug), log_max_mb=spec.log.max_mb,
                                  log_backups=spec.log.backups)

    async def apply(self) -> None:
        plans = self.desired.plans
        specs = {camera_id: p.spec for camera_id, p in plans.items()}
        programs = {camera_id: self._program(camera_id, spec) for camera_id, spec in specs.items()}
        report = await self.supervisor.apply_cameras(
            {camera_id: CameraProgram(specs[camera_id], program) for camera_id, program in programs.items()})
        self.metrics.applies.inc()
        if report.errors:
            log.error("supervisord apply errors: %s", report.errors)
        respecced = set(report.specs_changed)
        changed = [camera_id for camera_id, program in programs.items() if program.name in respecced]
        gone = [c for c in self.programs if c not in programs]
        for camera_id in gone:
            self.states.pop(camera_id, None)
            self.identities.pop(camera_id, None)
            self._reload_on_hello.discard(camera_id)
            self.metrics.remove_camera(camera_id)
        for camera_id, program in programs.items():
            if camera_id not in self.states:
                self.states[camera_id] = CameraState(camera_id, program.name)
            state = self.states[camera_id]
            epoch = self.supervisor.epoch(camera_id)
            if epoch != state.epoch:  # placed anew (another host): what the old copy said is not this one's
                state.on_placed(epoch)
                self.identities.pop(camera_id, None)
            state.host = self.supervisor.host_of(camera_id)
        replaced = set(report.added) | set(report.replaced)
        previous, self.applied, self.programs = self.applied, specs, programs
        for camera_id in changed:  # same program, new spec: reload it, or restart it for process settings
            name = programs[camera_id].name
            old = previous.get(camera_id)
            if name in replaced or old is None:
                continue
            if _process_settings(old) != _process_settings(specs[camera_id]):
                log.info("camera %s: process settings changed: restarting its worker", camera_id)
                await self._supervise(self.supervisor.restart, name)
            elif not await self.bus.send_reload(self.identity(camera_id), camera_id):
                # not connected yet (still loading its models, say): it may have read the old spec, so it
                # gets the reload right after its hello
                self._reload_on_hello.add(camera_id)
        if report.added or report.removed or report.replaced:
            log.info("applied: +%s -%s ~%s", report.added, report.removed, report.replaced)

    async def _supervise(self, action: Callable[[str], Awaitable[None]], name: str) -> str | None:
        """One program action through the bridge; the error text, or None when it worked."""
        try:
            await action(name)
        except RPC_ERRORS as err:
            log.error("%s %s failed: %s", action.__name__, name, err)
            return str(err)
        return None

    # -- operators ------------------------------------------------------------------------------------
    async def operate(self, camera_id: str, action: str) -> str | None:
        """Start, stop or restart a camera's worker (the dashboard's buttons); the error text or None."""
        program = self.programs.get(camera_id)
        if program is None:
            return "no such camera"
        if action == "stop":
            self.desired.operator_stopped.add(camera_id)
            return await self._supervise(self.supervisor.stop, program.name)
        self.desired.operator_stopped.discard(camera_id)
        if action == "start":
            return await self._supervise(self.supervisor.start, program.name)
        return await self._supervise(self.supervisor.restart, program.name)

    def drain_host(self, host: str, draining: bool = True) -> bool:
        """Move every camera off a worker host (before maintenance), or let it take cameras again."""
        return self.supervisor.drain(host, draining)

    # -- the backend ------------------------------------------------------------------------------------
    def backend_connected(self) -> None:
        if self._backend_gone is not None:
            self._backend_gone.cancel()
            self._backend_gone = None

    def backend_disconnected(self) -> None:
        log.info("backend disconnected; its cameras stay for %.0f s",
                 self.settings.session_processes.process_cleanup_timeout)
        self._backend_gone = asyncio.create_task(self._drop_backend_later(), name="backend-gone")

    async def _drop_backend_later(self) -> None:
        await asyncio.sleep(self.settings.session_processes.process_cleanup_timeout)
        count = self.desired.drop_backend()
        if count:
            log.info("backend did not come back: removed its %d subscription(s)", count)
            self.mark_dirty()

    async def _forget_inherited_later(self) -> None:
        await asyncio.sleep(self.settings.session_processes.process_cleanup_timeout)
        count = self.desired.drop_inherited()
        if count:
            log.info("the backend did not declare %d subscription(s) of the previous gateway again: removed them",
                     count)
            self.mark_dirty()

    async def set_display(self, display_id: str, **change: object) -> None:
        """A display's session or stage changed: every camera it watches hears of it."""
        for camera_id in self.desired.set_display(display_id, **change):
            await self.bus.send_control(self.identity(camera_id), camera_id, self.desired.controls_for(camera_id))

    # -- the bus --------------------------------------------------------------------------------------------
    async def on_hello(self, hello: Hello, identity: bytes) -> None:
        """A worker (re)started. Answered only for a planned camera whose program supervisord runs under
        the pid the hello gives: a stray process (an orphan of an earlier supervisord, a hand-run
        worker) can never take a camera's control identity or learn its sessions."""
        camera_id = hello.camera
        program = self.programs.get(camera_id)
        if program is None or camera_id not in self.desired.plans:
            return
        if hello.epoch != self.supervisor.epoch(camera_id):
            self._fenced(camera_id, hello.epoch)
            return
        if not await self._supervised(camera_id, program.name, hello.pid):
            if self._quiet.allow(f"hello:{camera_id}"):
                log.warning("camera %s: ignored a hello from pid %d, not the process supervisord runs for it%s",
                            camera_id, hello.pid, self._quiet.suffix())
            return
        self.identities[camera_id] = identity
        await self.bus.send_control(identity, camera_id, self.desired.controls_for(camera_id))
        if camera_id in self._reload_on_hello:
            self._reload_on_hello.discard(camera_id)
            await self.bus.send_reload(identity, camera_id)

    async def _supervised(self, camera_id: str, name: str, pid: int) -> bool:
        state = self.states.get(camera_id)
        if state is not None and state.pid == pid:
            return True
        try:  # the event may not be here yet: ask supervisord (a worker repeats its hello until answered)
            info = await self.supervisor.program_state(name)
        except RPC_ERRORS:
            return False
        if info is None or info.pid != pid:
            return False
        if state is not None:
            state.on_process_state(info.state, info.pid)
            if info.state == "STARTING" and self.supervisor.host_of(camera_id) is not None:
                startsecs = self.programs[camera_id].startsecs
                elapsed = info.now - info.start if info.now and info.start else 0.0
                self._recheck_later(camera_id, name, max(0.2, startsecs - elapsed + 0.2))
        return True

    def _recheck_later(self, camera_id: str, name: str, delay: float) -> None:
        """Ask its supervisord again once startsecs are over. Another host's supervisord sends the gateway
        no events: without this the camera would show RUNNING (and online) only at the next reconcile."""
        if camera_id in self._rechecks:
            return

        async def recheck() -> None:
            try:
                await asyncio.sleep(delay)
                info = await self.supervisor.program_state(name)
                state, program = self.states.get(camera_id), self.programs.get(camera_id)
                if info is not None and state is not None and program is not None and program.name == name:
                    state.on_polled(info.state, info.pid or None)
            except RPC_ERRORS:
                pass  # the reconcile poll covers it
            finally:
                self._rechecks.pop(camera_id, None)

        self._rechecks[camera_id] = asyncio.create_task(recheck(), name=f"recheck-{camera_id}")

    def identity(self, camera_id: str) -> bytes:
        """The camera's worker on the control socket. A worker says hello only when it starts, so one
        that outlived a previous gateway process never does to this one: its identity is its slug
        (WorkerBus), so it can be addressed all the same (a send to an absent worker just fails)."""
        known = self.identities.get(camera_id)
        if known is not None:
            return known
        p = self.desired.plans.get(camera_id)
        return control_identity(p.spec.slug, self.supervisor.epoch(camera_id)) if p is not None else b""

    def _fenced(self, camera_id: str, epoch: int) -> None:
        """A message of another placement epoch: a stale copy of a camera that moved hosts."""
        self.metrics.bus_fenced.inc()
        if self._quiet.allow(f"fenced:{camera_id}"):
            log.warning("camera %s: dropped messages of placement epoch %d (now %d): a stale copy%s", camera_id,
                        epoch, self.supervisor.epoch(camera_id), self._quiet.suffix())

    def on_bus_message(self, msg: AnyWorkerMessage) -> None:
        self.metrics.bus_messages.labels(msg.type).inc()
        if isinstance(msg, ProcessState):
            camera_id = next((c for c, p in self.programs.items() if p.name == msg.name), None)
            if camera_id is not None and camera_id in self.states:
                self.states[camera_id].on_process_state(msg.to_state, msg.pid)
            return
        state = self.states.get(msg.camera)
        if state is None:
            return  # a worker of a camera no longer planned; it is being stopped
        if msg.epoch != self.supervisor.epoch(msg.camera):
            self._fenced(msg.camera, msg.epoch)
            return
        if isinstance(msg, Heartbeat):
            state.on_heartbeat(msg)
        elif isinstance(msg, Status):
            state.on_status(msg)
        elif isinstance(msg, Snapshot):
            state.snapshot = msg
        elif isinstance(msg, DisplayDetection):
            self._relay_detection(state, msg)
        elif isinstance(msg, SessionResult):
            self._relay_session_result(msg)

    def _for_backend(self, camera_id: str, subscription_identifier: str) -> bool:
        """Only the backend's own subscriptions go to it (cameras.yaml cameras stay ours unless set)."""
        if self.desired.is_backend_subscription(camera_id, subscription_identifier):
            return True
        p = self.desired.plans.get(camera_id)
        return (self.settings.backend.relay_static_cameras and p is not None
                and any(s.subscription_identifier == subscription_identifier for s in p.spec.subscriptions))

    def _relay_detection(self, state: CameraState, msg: DisplayDetection) -> None:
        state.on_detection(msg)
        self.metrics.detections.labels(msg.camera).inc()
        if not self._for_backend(msg.camera, msg.subscription_identifier):
            return
        self.backend.send(relay.image_detection(msg))
        self.metrics.observe_capture_to_backend(max(0.0, time.time() - msg.captured_at))

    def _relay_session_result(self, msg: SessionResult) -> None:
        if self.settings.backend.patch_session and self._for_backend(msg.camera, msg.subscription_identifier):
            self.backend.send(relay.patch_session(msg))

    # -- supervisord's view -------------------------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        """Events say what changed at once; this poll makes sure nothing was missed."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            await self.reconcile()

    async def reconcile(self) -> None:
        try:
            infos = await self.supervisor.states()
        except RPC_ERRORS as err:
            log.warning("supervisord unreachable: %s", err)
            for cam in self.states.values():
                cam.process_state = "UNKNOWN"
            return
        missing = False
        for camera_id, program in self.programs.items():
            info = infos.get(program.name)
            state = self.states.get(camera_id)
            if state is None:
                continue
            if info is None:
                missing = True
                state.on_process_state("UNKNOWN", None)
            else:
                state.on_polled(info.state, info.pid or None)
        if missing:
            self.mark_dirty()  # e.g. supervisord restarted without our programs: add them again
        await self.restart_hung()

    async def restart_hung(self) -> None:
        """A worker that stops its heartbeats, or whose start-up (fetching, converting, opening its
        models) takes longer than `startup_timeout`, is restarted. Heartbeats flow from a worker's
        first moment, so a long download is not a hang."""
        timeout = self.settings.session_processes.heartbeat_timeout
        startup = self.settings.session_processes.startup_timeout
        for camera_id, state in list(self.states.items()):
            program = self.programs.get(camera_id)
            if program is None or camera_id in self.desired.operator_stopped or state.process_state != "RUNNING":
                continue
            why = state.hung(heartbeat_timeout=timeout, startup_timeout=startup)
            if why is not None:
                log.error("camera %s: %s: restarting it", camera_id, why)
                state.on_hung_restart()
                self.metrics.hung_restarts.labels(camera_id).inc()
                await self._supervise(self.supervisor.restart, program.name)

    async def _gpu_loop(self) -> None:
        """GPU figures for stateReport, sampled off the event loop (NVML calls can block)."""
        from detector_worker.gpu import gpu_usage

        while True:
            self.gpu = await asyncio.to_thread(gpu_usage)
            await asyncio.sleep(5.0)

