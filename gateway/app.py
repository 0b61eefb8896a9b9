"""The gateway's core: desired cameras → spec files + supervisord programs; bus in; state out.

Every change (a backend message, a cameras.yaml edit) only marks the plan dirty; one apply task
turns the newest plan into files and supervisord calls, so bursts coalesce and supervisord sees
one serialized change at a time. Nothing from the network reaches a file raw: camera ids become
slugs, and URLs and credentials go only into 0600 spec files that only the worker reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from detector_worker.comms.messages import (
    AnyWorkerMessage,
    Detection,
    DisplayControl,
    Heartbeat,
    ProcessState,
    SessionResult,
    Snapshot,
    Status,
)
from detector_worker.config.cameras_file import CamerasFile, load_cameras_file
from detector_worker.config.spec import SpecError, load_spec

from .bus import GatewayBus
from .desired import BackendSubscription, CameraPlan, PlanError, displays_of, plan, spec_json, spec_path
from .metrics import GatewayMetrics
from .settings import GatewaySettings
from .state import CameraState
from .supervisor.bridge import SupervisorBridge
from .supervisor.programs import ProgramSpec, program_for_camera
from .supervisor.rpc import SupervisorClient, SupervisorError, SupervisorUnavailable

log = logging.getLogger("gateway")
RECONCILE_S = 5.0


def _atomic_private_write(path: Path, text: str) -> bool:
    """Write a 0600 file atomically; False when the content was already there."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.cameras_file: CamerasFile | None = None
        self.backend_subs: dict[str, BackendSubscription] = {}
        # the backend's subscriptions as a previous gateway process left them (inherit_backend_subscriptions)
        self.inherited_subs: dict[str, BackendSubscription] = {}
        self.display_controls: dict[str, DisplayControl] = {}
        self.plans: dict[str, CameraPlan] = {}
        self.programs: dict[str, ProgramSpec] = {}  # camera id → its program
        self.states: dict[str, CameraState] = {}
        self.identities: dict[str, bytes] = {}
        self.plan_errors: list[PlanError] = []
        self.metrics = GatewayMetrics(lambda: list(self.states.values()))
        self.client = SupervisorClient(settings.supervisor_socket)
        self.bridge = SupervisorBridge(self.client, settings.programs_dir)
        self.bus = GatewayBus(settings.bus.pull, settings.bus.control, self.on_bus_message,
                              on_invalid=self.metrics.bus_invalid.inc)
        self.bus.hello = self.on_hello
        self.on_detection: Callable[[Detection], None] = lambda d: None  # set by the server
        self.on_session_result: Callable[[SessionResult], None] = lambda r: None
        self._dirty = asyncio.Event()
        self._applied = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for d in (self.settings.specs_dir, self.settings.programs_dir, self.settings.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.settings.specs_dir, 0o700)
        self.load_cameras_file()
        self.inherited_subs = self.inherit_backend_subscriptions()
        with contextlib.suppress(SupervisorUnavailable, SupervisorError):
            ended = await self.bridge.adopt_or_clean(self.settings.specs_dir)
            if ended:
                log.warning("ended %d orphaned worker(s) left by an earlier supervisord: %s", len(ended), ended)
        self.bus.start()
        self._tasks = [asyncio.create_task(self._apply_loop(), name="apply"),
                       asyncio.create_task(self._reconcile_loop(), name="reconcile")]
        self.mark_dirty()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.bus.close()

    def load_cameras_file(self) -> bool:
        path = self.settings.cameras_file
        if path is None or not path.exists():
            self.cameras_file = None
            return True
        try:
            self.cameras_file = load_cameras_file(path)
        except SpecError as err:
            log.error("cameras.yaml not applied, keeping the previous cameras: %s", err)
            return False
        return True

    # -- desired state ----------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self._applied.clear()
        self._dirty.set()

    async def wait_applied(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._applied.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def compute_plan(self) -> tuple[dict[str, CameraPlan], list[PlanError]]:
        cameras = {s.camera_id for s in self.backend_subs.values()}  # the backend's word on a camera wins
        inherited = [s for s in self.inherited_subs.values() if s.camera_id not in cameras]
        return plan(self.settings, self.cameras_file, [*inherited, *self.backend_subs.values()])

    def inherit_backend_subscriptions(self) -> dict[str, BackendSubscription]:
        """The backend's subscriptions that the spec files of a previous gateway process hold.

        A restarted gateway (killed, or restarted with supervisord) knows nothing of the backend
        until it reconnects: planning without these would remove every backend camera at once and
        start it again when the backend re-declares it. They are kept like a disconnected backend's
        cameras: until the backend declares its list, or for `process_cleanup_timeout`.
        """
        static = {f"{display};{name}" for name, cam in (self.cameras_file.cameras if self.cameras_file else {}).items()
                  for display in cam.displays}
        found: dict[str, BackendSubscription] = {}
        for path in sorted(self.settings.specs_dir.glob("*.json")):
            try:
                spec = load_spec(path)
            except SpecError as err:
                log.warning("not inheriting a camera from %s", err)
                continue
            for sub in spec.subscriptions:
                if sub.subscription_identifier not in static:
                    found[sub.subscription_identifier] = BackendSubscription(
                        sub.subscription_identifier, sub.display_id, spec.camera_id, spec.source, sub.model, sub.crop)
        if found:
            log.info("kept %d backend subscription(s) of the previous gateway until the backend returns",
                     len(found))
        return found

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

    async def apply(self) -> None:
        plans, errors = self.compute_plan()
        self.plan_errors = errors
        programs: dict[str, ProgramSpec] = {}
        changed_specs: list[str] = []
        for camera_id, p in plans.items():
            path = spec_path(self.settings.specs_dir, p.spec.slug)
            if _atomic_private_write(path, spec_json(p.spec)):
                changed_specs.append(camera_id)
            programs[camera_id] = program_for_camera(
                camera_id, python=self.settings.python, spec_path=path, project_dir=self.settings.project_dir,
                log_dir=self.settings.log_dir)
        report = await self.bridge.apply({p.name: p for p in programs.values()})
        self.metrics.applies.inc()
        if report.errors:
            log.error("supervisord apply errors: %s", report.errors)
        for camera_id in set(self.plans) - set(plans):
            with contextlib.suppress(FileNotFoundError):
                spec_path(self.settings.specs_dir, self.plans[camera_id].spec.slug).unlink()
            self.states.pop(camera_id, None)
            self.identities.pop(camera_id, None)
        for camera_id, program in programs.items():
            if camera_id not in self.states:
                self.states[camera_id] = CameraState(camera_id, program.name)
        replaced = set(report.added) | set(report.replaced)
        self.plans, self.programs = plans, programs
        for camera_id in changed_specs:  # same program, new spec: the running worker re-reads it
            identity = self.identity(camera_id)
            if programs[camera_id].name not in replaced and identity is not None:
                await self.bus.send_reload(identity, camera_id)
        if report.added or report.removed or report.replaced:
            log.info("applied: +%s -%s ~%s", report.added, report.removed, report.replaced)

    # -- bus --------------------------------------------------------------------------------
    async def on_hello(self, camera_id: str, identity: bytes) -> None:
        if camera_id not in self.plans:
            return
        self.identities[camera_id] = identity
        await self.bus.send_control(identity, camera_id, self.controls_for(camera_id))

    def identity(self, camera_id: str) -> bytes | None:
        """The camera's worker on the control socket. A worker says hello only when it starts, so one
        that outlived a previous gateway process never does to this one: its identity is its slug
        (WorkerBus), so it can be addressed all the same (a send to an absent worker just fails)."""
        if camera_id in self.identities:
            return self.identities[camera_id]
        p = self.plans.get(camera_id)
        return p.spec.slug.encode() if p is not None else None

    def controls_for(self, camera_id: str) -> dict[str, DisplayControl]:
        p = self.plans.get(camera_id)
        displays = [s.display_id for s in p.spec.subscriptions] if p else []
        # only displays the backend has spoken about: after a gateway restart the workers keep the
        # sessions they have, instead of being told "no session" for displays we know nothing of yet
        return {d: self.display_controls[d] for d in displays if d in self.display_controls}

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
        if isinstance(msg, Heartbeat):
            state.on_heartbeat(msg)
        elif isinstance(msg, Status):
            state.on_status(msg)
        elif isinstance(msg, Snapshot):
            state.snapshot = msg
        elif isinstance(msg, Detection):
            state.detections += 1
            self.metrics.detections.labels(msg.camera).inc()
            self.on_detection(msg)
        elif isinstance(msg, SessionResult):
            self.on_session_result(msg)

    async def set_display_control(self, display_id: str, *, session_id: object = ...,
                                  stage: object = ...) -> None:
        current = self.display_controls.get(display_id, DisplayControl())
        update: dict[str, object] = {}
        if session_id is not ...:
            update["session_id"] = session_id
        if stage is not ...:
            update["progression_stage"] = stage
        self.display_controls[display_id] = current.model_copy(update=update)
        camera_id = displays_of(self.plans).get(display_id)
        identity = self.identity(camera_id) if camera_id is not None else None
        if camera_id is not None and identity is not None:
            await self.bus.send_control(identity, camera_id, self.controls_for(camera_id))

    # -- supervisord state -------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        """Events say what changed at once; this poll makes sure nothing was missed."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            await self.reconcile()

    async def reconcile(self) -> None:
        try:
            infos = await self.bridge.states()
        except (SupervisorUnavailable, SupervisorError) as err:
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
            elif info.state != state.process_state or (info.pid or None) != state.pid:
                state.on_process_state(info.state, info.pid or None)
        if missing:
            self.mark_dirty()  # e.g. supervisord restarted without our programs: add them again
        await self.restart_hung()

    async def restart_hung(self) -> None:
        timeout = self.settings.session_processes.heartbeat_timeout
        for camera_id, state in list(self.states.items()):
            if state.process_state == "RUNNING" and state.silent_for() > timeout:
                log.error("camera %s: no heartbeat for %.0f s while its process runs: restarting it",
                          camera_id, state.silent_for())
                state.hung_restarts += 1
                state.last_heartbeat = time.monotonic()
                self.metrics.hung_restarts.labels(camera_id).inc()
                try:
                    await self.client.stop(state.program, wait=True)
                    await self.client.start(state.program, wait=False)
                except (SupervisorUnavailable, SupervisorError) as err:
                    log.error("restarting %s failed: %s", state.program, err)
