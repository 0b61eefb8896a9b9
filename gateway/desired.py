"""What should run: static cameras from cameras.yaml plus the backend's subscriptions.

The result is one `WorkerSpec` per camera; displays subscribed to the same camera share its
worker (one stream per camera). Pure functions of their inputs, so the gateway can compute the
plan, compare it with what runs, and apply only the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from detector_worker.config.cameras_file import CamerasFile
from detector_worker.config.spec import (
    BusSettings,
    Crop,
    LogSettings,
    ModelRef,
    SourceSettings,
    StoreOverrides,
    Subscription,
    WorkerSpec,
)

from .settings import GatewaySettings


@dataclass(frozen=True)
class BackendSubscription:
    """A subscription as the gateway keeps it, already validated by the protocol layer."""

    subscription_identifier: str
    display_id: str
    camera_id: str
    source: SourceSettings
    model: ModelRef
    crop: Crop | None = None


class PlanError(ValueError):
    """A subscription that can't be part of the plan; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str, subscription_identifier: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.subscription_identifier = subscription_identifier


@dataclass(frozen=True)
class CameraPlan:
    spec: WorkerSpec
    origin: str  # "static" (cameras.yaml) or "backend"


def _bus(settings: GatewaySettings) -> BusSettings:
    return BusSettings(push_endpoint=settings.bus.pull, control_endpoint=settings.bus.control)


class _Common(TypedDict):
    bus: BusSettings
    log: LogSettings
    stores: StoreOverrides
    model_cache_dir: Path


def _common(settings: GatewaySettings) -> _Common:
    rotation = settings.session_processes.log_rotation
    return {
        "bus": _bus(settings),
        "log": LogSettings(directory=settings.log_dir, max_mb=rotation.max_size_mb, backups=rotation.backup_count),
        "stores": StoreOverrides(redis_url=settings.redis_url, database_url=settings.database_url),
        "model_cache_dir": settings.model_cache_dir,
    }


def plan(settings: GatewaySettings, cameras: CamerasFile | None,
         subscriptions: Iterable[BackendSubscription]) -> tuple[dict[str, CameraPlan], list[PlanError]]:
    """Every camera that should run, and the subscriptions that had to be refused (with why)."""
    out: dict[str, CameraPlan] = {}
    errors: list[PlanError] = []
    common = _common(settings)
    base_dir = settings.cameras_file.parent if settings.cameras_file else settings.project_dir
    if cameras is not None:
        for name in cameras.cameras:
            spec = cameras.worker_spec(name, base_dir=base_dir, **common)
            out[name] = CameraPlan(spec, "static")
    by_camera: dict[str, list[BackendSubscription]] = {}
    for sub in subscriptions:
        by_camera.setdefault(sub.camera_id, []).append(sub)
    limit = settings.session_processes.max_concurrent_sessions
    for camera_id in sorted(by_camera):
        subs = sorted(by_camera[camera_id], key=lambda s: s.subscription_identifier)
        existing = out.get(camera_id)
        source = existing.spec.source if existing else subs[0].source
        accepted = [s for s in subs if _same_source(s.source, source)]
        errors.extend(PlanError("conflict", f"camera {camera_id!r} is already watched through another source URL",
                                s.subscription_identifier) for s in subs if s not in accepted)
        if not accepted:
            continue
        if existing is None and len(out) >= limit:
            errors.extend(PlanError("limit_exceeded", f"max_concurrent_sessions ({limit}) reached: camera "
                                    f"{camera_id!r} not started", s.subscription_identifier) for s in accepted)
            continue
        new_subs = [Subscription(subscription_identifier=s.subscription_identifier, display_id=s.display_id,
                                 model=s.model, crop=s.crop) for s in accepted]
        if existing is not None:
            known = {s.display_id for s in existing.spec.subscriptions}
            merged = [*existing.spec.subscriptions, *(s for s in new_subs if s.display_id not in known)]
            out[camera_id] = CameraPlan(existing.spec.model_copy(update={"subscriptions": merged}), existing.origin)
            continue
        out[camera_id] = CameraPlan(WorkerSpec(
            camera_id=camera_id, source=source, subscriptions=new_subs, max_fps=settings.max_fps,
            stall_timeout_s=max(10.0, source.snapshot_interval_ms / 1000 + source.read_timeout_s + 5)
            if source.kind == "snapshot" else 10.0,
            inference=settings.inference, resource_limits=settings.resource_limits,
            **common,
        ), "backend")
    return out, errors


def _same_source(a: SourceSettings, b: SourceSettings) -> bool:
    return (a.kind, a.url) == (b.kind, b.url)


def spec_json(spec: WorkerSpec) -> str:
    return spec.model_dump_json(indent=2)


def displays_of(plans: Mapping[str, CameraPlan]) -> dict[str, str]:
    """display id → camera id, for routing a display's session id to its worker."""
    return {s.display_id: cam for cam, p in plans.items() for s in p.spec.subscriptions}


def spec_path(specs_dir: Path, slug: str) -> Path:
    return specs_dir / f"{slug}.json"
