"""What the fleet should run, with one owner: static cameras, the backend's subscriptions, display state.

`DesiredState` is the only place these are kept and changed. Each change computes the plan
once (`plan()`, a pure function of its inputs) and returns what it refused, item by item: a
refused subscription is not kept, and an existing subscription whose new definition is refused
keeps running as it was. Cameras already planned come first, so a new camera can never push a
running one over `max_concurrent_sessions`.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from detector_worker.comms.messages import DisplayControl
from detector_worker.config.base import quote
from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import (
    BusSettings,
    LogSettings,
    ModelPolicy,
    StoreOverrides,
    Subscription,
    WorkerSpec,
)
from detector_worker.limits import MAX_DISPLAYS_PER_CAMERA
from detector_worker.naming import camera_slug

from .settings import GatewaySettings

Origin = Literal["static", "backend"]
UNSET: object = object()  # "leave as it is" for set_display


@dataclass(frozen=True)
class Refusal:
    """A subscription that can't be part of the plan; `code` is the protocol's error code."""

    code: Literal["conflict", "limit_exceeded", "invalid_message"]
    message: str
    subscription_identifier: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CameraPlan:
    spec: WorkerSpec
    origin: Origin  # "static" (cameras.yaml) or "backend"
    backend_ids: frozenset[str] = field(default_factory=frozenset)  # the backend's subscriptions on it

    @property
    def displays(self) -> list[str]:
        return [s.display_id for s in self.spec.subscriptions]


def plan(settings: GatewaySettings, cameras: CamerasFile | None, subscriptions: Sequence[Subscription],
         running: Mapping[str, CameraPlan] | None = None) -> tuple[dict[str, CameraPlan], list[Refusal]]:
    """Every camera that should run, and the backend's subscriptions that had to be refused (with why).

    A camera that runs (`running`) keeps its source while a subscription still names it; otherwise
    earlier subscriptions win: on a camera, the first one's source is the camera's; a subscription
    naming the same camera through another source is a conflict; once `max_concurrent_sessions`
    cameras are planned, later cameras are refused. Static cameras come before all of them."""
    out: dict[str, CameraPlan] = {}
    refusals: list[Refusal] = []
    common = _common(settings)
    base_dir = settings.cameras_file.parent if settings.cameras_file else settings.project_dir
    if cameras is not None:
        for name in cameras.cameras:
            out[name] = CameraPlan(cameras.worker_spec(name, base_dir=base_dir, **common), "static")
    by_camera: dict[str, list[Subscription]] = {}
    for sub in subscriptions:
        why = model_source_refused(settings.models, sub.model.url)
        if why is not None:
            refusals.append(Refusal("invalid_message", f"modelUrl: {why}", sub.subscription_identifier))
            continue
        pin = settings.models.pinned_sha256.get(sub.model.url)
        if pin is not None and sub.model.sha256 != pin:
            sub = sub.model_copy(update={"model": sub.model.model_copy(update={"sha256": pin})})
        by_camera.setdefault(sub.camera_id, []).append(sub)
    limit = settings.session_processes.max_concurrent_sessions
    slugs = {p.spec.slug: camera_id for camera_id, p in out.items()}
    for camera_id, subs in by_camera.items():
        existing = out.get(camera_id)
        twin = slugs.get(camera_slug(camera_id), camera_id)
        if existing is None and twin != camera_id:  # two ids, one program name: refuse the later one
            why = f"camera {quote(camera_id)} would share its program name with camera {quote(twin)}; use another id"
            refusals.extend(Refusal("conflict", why, s.subscription_identifier) for s in subs)
            continue
        was = running.get(camera_id) if running else None
        source = existing.spec.source if existing else next(
            (s.source for s in subs if was is not None and s.source.same_stream(was.spec.source)), subs[0].source)
        accepted: list[Subscription] = []
        for s in subs:
            if not s.source.same_stream(source):
                refusals.append(Refusal("conflict", f"camera {quote(camera_id)} is already watched through "
                                                    "another source URL", s.subscription_identifier))
            else:
                accepted.append(s)
        if not accepted:
            continue
        if existing is None and len(out) >= limit:
            refusals.extend(Refusal("limit_exceeded", f"max_concurrent_sessions ({limit}) reached: camera "
                                                      f"{quote(camera_id)} not started", s.subscription_identifier)
                            for s in accepted)
            continue
        current = list(existing.spec.subscriptions) if existing else []
        known = {s.display_id for s in current}
        for s in accepted:
            if s.display_id in known:  # cameras.yaml serves this display on this camera already
                refusals.append(Refusal("conflict", f"display {quote(s.display_id)} of camera {quote(camera_id)} is "
                                                    "configured in cameras.yaml", s.subscription_identifier))
                continue
            if len(current) >= MAX_DISPLAYS_PER_CAMERA:
                refusals.append(Refusal("limit_exceeded", f"camera {quote(camera_id)} has {MAX_DISPLAYS_PER_CAMERA} "
                                                          "displays, the most one camera serves",
                                        s.subscription_identifier))
                continue
            current.append(s)
            known.add(s.display_id)
        ids = frozenset(s.subscription_identifier for s in accepted) - {
            r.subscription_identifier for r in refusals}
        if existing is not None:
            out[camera_id] = CameraPlan(existing.spec.model_copy(update={"subscriptions": current}), existing.origin,
                                        existing.backend_ids | ids)
            continue
        slugs[camera_slug(camera_id)] = camera_id
        out[camera_id] = CameraPlan(WorkerSpec(
            camera_id=camera_id, source=source, subscriptions=current, max_fps=settings.max_fps,
            stall_timeout_s=max(10.0, source.snapshot_interval_ms / 1000 + source.read_timeout_s + 5)
            if source.kind == "snapshot" else 10.0,
            inference=settings.inference, motion=settings.motion, resource_limits=settings.resource_limits, **common,
        ), "backend", ids)
    return out, refusals


def model_source_refused(policy: ModelPolicy, url: str) -> str | None:
    """Why the backend may not name this model archive, or None. http(s) as the policy allows;
    file:// only for a regular file inside the operator's model directories (links resolved)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        path = Path(urllib.request.url2pathname(parts.path)).resolve()
        if not any(path.is_relative_to(d.resolve()) for d in policy.model_dirs):
            return "file:// model URLs must name a file inside the configured model directories (models.model_dirs)"
        if path.exists() and not path.is_file():  # a FIFO would block the fetch, a device never end
            return "file:// model URLs must name a regular file (not a directory, FIFO or device)"
        return None
    if not any(url.lower().startswith(prefix.lower()) for prefix in policy.allowed_url_prefixes):
        return "not an allowed model source (models.allowed_url_prefixes)"
    return None


class _Common(TypedDict):
    bus: BusSettings
    log: LogSettings
    stores: StoreOverrides
    model_cache_dir: Path
    model_policy: ModelPolicy


def _common(settings: GatewaySettings) -> _Common:
    rotation = settings.session_processes.log_rotation
    return {
        "bus": settings.bus,
        "log": LogSettings(directory=settings.log_dir, max_mb=rotation.max_size_mb, backups=rotation.backup_count),
        "stores": StoreOverrides(redis_url=settings.redis_url, database_url=settings.database_url),
        "model_cache_dir": settings.model_cache_dir,
        "model_policy": settings.models,
    }


class DesiredState:
    """The one owner of what should run. Not thread-safe: used from the gateway's event loop only."""

    def __init__(self, settings: GatewaySettings, cameras: CamerasFile | None = None,
                 inherited: Iterable[Subscription] = ()) -> None:
        self._settings = settings
        self._cameras = cameras
        self._backend: dict[str, Subscription] = {}  # accepted, in priority order
        # the backend's subscriptions as a previous gateway process left them, until the backend returns
        self._inherited: dict[str, Subscription] = {s.subscription_identifier: s for s in inherited}
        self._displays: dict[str, DisplayControl] = {}
        self.operator_stopped: set[str] = set()  # camera ids an operator stopped from the gateway
        self.version = 0
        self.plans: dict[str, CameraPlan] = {}
        self._replan({**self._inherited})

    # -- reading ---------------------------------------------------------------------------------
    @property
    def cameras_file(self) -> CamerasFile | None:
        return self._cameras

    @property
    def inherited(self) -> Mapping[str, Subscription]:
        return self._inherited

    def backend_subscriptions(self) -> list[Subscription]:
        """The backend's subscriptions that run (what stateReport lists), inherited ones included."""
        return [s for p in self.plans.values() for s in p.spec.subscriptions
                if s.subscription_identifier in p.backend_ids]

    def is_backend_subscription(self, camera_id: str, subscription_identifier: str) -> bool:
        p = self.plans.get(camera_id)
        return p is not None and subscription_identifier in p.backend_ids

    def host_labels(self, camera_id: str) -> frozenset[str]:
        """The labels a worker host needs to run this camera (cameras.yaml `host_labels`; none for the backend's)."""
        entry = self._cameras.cameras.get(camera_id) if self._cameras is not None else None
        return frozenset(entry.host_labels) if entry is not None else frozenset()

    def cameras_of_display(self, display_id: str) -> list[str]:
        """Every camera the display watches: a session reaches all of them."""
        return [cam for cam, p in self.plans.items() if display_id in p.displays]

    def controls_for(self, camera_id: str) -> dict[str, DisplayControl]:
        """Session and stage of the camera's displays, for those the backend has spoken about (after a
        gateway restart the workers keep the sessions they have instead of hearing "no session")."""
        p = self.plans.get(camera_id)
        return {d: self._displays[d] for d in (p.displays if p else []) if d in self._displays}

    # -- changing ----------------------------------------------------------------------------------
    def set_cameras_file(self, cameras: CamerasFile | None) -> None:
        self._cameras = cameras
        self._replan(self._backend_with_inherited())

    def replace_backend(self, subscriptions: Sequence[Subscription], keep: Iterable[str] = ()) -> list[Refusal]:
        """The backend's whole list (setSubscriptionList). `keep`: identifiers whose new definition the
        parser refused; a running one keeps its previous definition."""
        previous = self._backend_with_inherited()
        wanted = {s.subscription_identifier: s for s in subscriptions}
        for sid in keep:
            if sid in previous and sid not in wanted:
                wanted[sid] = previous[sid]
        self._inherited.clear()  # the backend's whole list: nothing else of its is wanted
        return self._change(wanted, previous)

    def add_backend(self, subscription: Subscription) -> list[Refusal]:
        previous = self._backend_with_inherited()
        wanted = {**previous, subscription.subscription_identifier: subscription}
        self._inherited.pop(subscription.subscription_identifier, None)  # the backend's word now
        return self._change(wanted, previous)

    def remove_backend(self, subscription_identifier: str) -> bool:
        known = subscription_identifier in self._backend or subscription_identifier in self._inherited
        self._inherited.pop(subscription_identifier, None)
        if known:
            self._change({k: v for k, v in self._backend_with_inherited().items() if k != subscription_identifier})
        return known

    def drop_backend(self) -> int:
        """The backend did not come back: its subscriptions go. Returns how many."""
        count = len(self._backend)
        if count:
            self._change(dict(self._inherited))
        return count

    def drop_inherited(self) -> int:
        count = len(self._inherited)
        if count:
            self._inherited.clear()
            self._replan(dict(self._backend))
        return count

    def set_display(self, display_id: str, *, session_id: object = UNSET, stage: object = UNSET) -> list[str]:
        """Bind or clear a display's session or stage; the cameras whose workers must hear of it."""
        current = self._displays.get(display_id, DisplayControl())
        update: dict[str, object] = {}
        if session_id is not UNSET:
            update["session_id"] = session_id
        if stage is not UNSET:
            update["progression_stage"] = stage
        self._displays[display_id] = current.model_copy(update=update)
        return self.cameras_of_display(display_id)

    # -- inside ----------------------------------------------------------------------------------------
    def _backend_with_inherited(self) -> dict[str, Subscription]:
        """Every backend subscription we hold, in the order the plan runs them (a stable order: the
        same subscriptions never reorder a camera's displays, which would rewrite its spec)."""
        merged = {**self._inherited, **self._backend}
        place = {s.subscription_identifier: i for i, s in enumerate(
            s for p in self.plans.values() for s in p.spec.subscriptions)}
        return dict(sorted(merged.items(), key=lambda item: place.get(item[0], len(place))))

    def _change(self, wanted: dict[str, Subscription],
                previous: Mapping[str, Subscription] | None = None) -> list[Refusal]:
        """Plan `wanted`; `previous` (default: what runs now, inherited included) keeps its order and,
        where a new definition is refused, its old one."""
        previous = self._backend_with_inherited() if previous is None else previous
        # Running subscriptions keep their place (and their camera's slot), in their old order.
        ordered = {k: wanted[k] for k in previous if k in wanted}
        ordered.update({k: v for k, v in wanted.items() if k not in ordered})
        refusals = self._replan(ordered)
        fallback = {r.subscription_identifier: previous[r.subscription_identifier] for r in refusals
                    if r.subscription_identifier in previous and previous[r.subscription_identifier] != ordered.get(
                        r.subscription_identifier)}
        if fallback:  # a refused new definition: the previous one keeps running
            self._replan({k: fallback.get(k, v) for k, v in ordered.items()})
        return refusals

    def _replan(self, candidates: Mapping[str, Subscription]) -> list[Refusal]:
        plans, refusals = plan(self._settings, self._cameras, list(candidates.values()), self.plans)
        refused = {r.subscription_identifier for r in refusals}
        self._backend = {k: v for k, v in candidates.items() if k not in refused and k not in self._inherited}
        self._inherited = {k: v for k, v in self._inherited.items() if k not in refused}
        self.plans = plans
        self._prune_displays()
        self.version += 1
        return refusals

    def _prune_displays(self) -> None:
        """Forget the session and stage of displays no camera serves any more (bounded state)."""
        served = {d for p in self.plans.values() for d in p.displays}
        for display_id in [d for d in self._displays if d not in served]:
            del self._displays[display_id]

