"""Read-only views of the gateway for the backend (stateReport) and for people (/cameras, /health)."""

from __future__ import annotations

import base64
import time

import psutil

from .core import Gateway
from .protocol import CameraConnection, StateReport


def state_report(gateway: Gateway) -> StateReport:
    """The heartbeat: one entry per backend subscription that runs (cameras.yaml cameras are ours,
    unless `backend.relay_static_cameras` sends their detections too)."""
    connections = []
    desired = gateway.desired
    subs = ([s for p in desired.plans.values() for s in p.spec.subscriptions]
            if gateway.settings.backend.relay_static_cameras else desired.backend_subscriptions())
    for sub in subs:
        state = gateway.states.get(sub.camera_id)
        connections.append(CameraConnection.from_subscription(
            sub, online=bool(state and state.online), fps=state.fps if state else None,
            inference_ms=state.inference_ms if state else None,
            reconnects=state.reconnects if state else None, restarts=state.restarts if state else None,
            error=state.display_errors.get(sub.display_id) if state else None,
            store_quota_full=True if state and state.store_quota_full else None))
    gpu, gpu_memory = gateway.gpu
    return StateReport(cpu_usage=psutil.cpu_percent(interval=None), memory_usage=psutil.virtual_memory().percent,
                       gpu_usage=gpu, gpu_memory_usage=gpu_memory, camera_connections=connections)


def cameras_json(gateway: Gateway) -> list[dict[str, object]]:
    out = []
    for camera_id, plan in gateway.desired.plans.items():
        state = gateway.states.get(camera_id)
        entry: dict[str, object] = state.as_json() if state else {"camera": camera_id}
        subs = plan.spec.subscriptions
        entry["origin"] = plan.origin
        entry["operator_stopped"] = camera_id in gateway.desired.operator_stopped
        entry["subscriptions"] = [s.subscription_identifier for s in subs]
        entry["crops"] = {s.display_id: s.crop.model_dump() if s.crop else None for s in subs}
        entry["model"] = {s.display_id: {"id": s.model.id, "name": s.model.name} for s in subs}
        entry["sessions"] = {d: c.session_id for d, c in gateway.desired.controls_for(camera_id).items()}
        out.append(entry)
    return out


def hosts_json(gateway: Gateway) -> dict[str, object]:
    """The worker hosts (none when this machine runs every camera) and the cameras no host can take."""
    unplaced = [c for c, s in gateway.states.items() if s.host is None] if gateway.settings.hosts else []
    return {"hosts": gateway.supervisor.describe(), "unplaced": sorted(unplaced)}


def snapshot(gateway: Gateway, camera_id: str) -> bytes | None:
    state = gateway.states.get(camera_id)
    if state is None or state.snapshot is None:
        return None
    return base64.b64decode(state.snapshot.jpeg_b64)


def health(gateway: Gateway) -> dict[str, object]:
    return {"status": "ok", "uptime_s": round(time.monotonic() - gateway.started_at, 1),
            "backend_connected": gateway.backend.connected, "cameras": len(gateway.desired.plans),
            "online": sum(1 for s in gateway.states.values() if s.online)}
