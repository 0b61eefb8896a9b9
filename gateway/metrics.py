"""Prometheus metrics of the gateway and its cameras (one registry per gateway, no globals).

Naming follows Prometheus' conventions: counts that only grow are counters (exposed with a
`_total` suffix), names carry base units (`_seconds`, `_bytes`), and everything else is a gauge.

Per-camera values the workers report (and the gateway's view of each process) are read from the
camera states at scrape time, so a removed camera disappears from /metrics with its state. The
few per-camera series the gateway counts itself (detections, hung-worker restarts) live in
labelled counters; `remove_camera` drops them when a camera leaves the plan.

API used by the gateway:

- `GatewayMetrics(cameras)`: `cameras` returns the current `CameraState`s (called per scrape).
- `detection(camera_id)`, `hung_restart(camera_id)`, `bus_message(type)`, `bus_invalid_message()`,
  `backend_dropped_message()`, `backend_error(code)`, `backend_ignored(keys)`, `supervisor_applied()`:
  count events.
- `observe_capture_to_backend(seconds)`: a detection's frame capture → handed to the backend.
- `remove_camera(camera_id)`: drop a removed camera's labelled series.
- `render()`: the exposition text for /metrics.

The counters themselves stay reachable as attributes (`metrics.detections.labels(cam).inc()`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import CameraState

# A detection's capture → backend time: a few ms when the pipeline keeps up, seconds when it lags.
CAPTURE_TO_BACKEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Per-camera series read from the camera states: (name, help, value). Counter names get `_total`
# appended by prometheus_client when exposed.
_CAMERA_COUNTERS: tuple[tuple[str, str, Callable[[CameraState], float]], ...] = (
    ("fleet_camera_frames_processed", "frames the worker's pipeline processed since it started (rate() is fps)",
     lambda c: c.frames_processed),
    ("fleet_camera_reconnects", "stream (re)open attempts since the worker started", lambda c: c.reconnects),
    ("fleet_camera_stalls", "stream stalls (no frame within the watchdog) since the worker started",
     lambda c: c.stalls),
    ("fleet_camera_bus_dropped", "bus messages the worker could not send, since it started", lambda c: c.dropped),
    ("fleet_camera_store_writes_failed", "store writes the worker gave up, since it started",
     lambda c: c.store_failed),
    ("fleet_camera_restarts", "worker process restarts seen by the gateway (crash, kill, hung)",
     lambda c: c.restarts),
)
_CAMERA_GAUGES: tuple[tuple[str, str, Callable[[CameraState], float]], ...] = (
    ("fleet_camera_online", "1 when the worker runs and its stream is up", lambda c: float(c.online)),
    ("fleet_camera_fps", "frames/s the pipeline processes, as the worker last reported", lambda c: c.fps),
    ("fleet_camera_inference_seconds", "last frame's detector + branches time", lambda c: c.inference_seconds),
    ("fleet_camera_heartbeat_age_seconds", "time since the worker's last heartbeat or status",
     lambda c: c.silent_for()),
    ("fleet_camera_store_writes_pending", "store writes queued or retrying in the worker",
     lambda c: c.store_pending),
    ("fleet_camera_rss_bytes", "worker resident memory", lambda c: c.rss_bytes),
    ("fleet_camera_store_quota_full", "1 when the worker's durable outbox is at its disk quota (writes refused)",
     lambda c: float(c.store_quota_full)),
    ("fleet_camera_starting_seconds", "how long the worker has been starting (fetching, converting, opening)",
     lambda c: c.starting_for()),
    ("fleet_camera_display_errors", "displays whose pipeline could not be built", lambda c: len(c.display_errors)),
)


class _CameraCollector(Collector):
    def __init__(self, cameras: Callable[[], Iterable[CameraState]]) -> None:
        self._cameras = cameras

    def collect(self) -> Iterable[Metric]:
        cameras = list(self._cameras())
        counters = [(CounterMetricFamily(name, doc, labels=["camera"]), value)
                    for name, doc, value in _CAMERA_COUNTERS]
        gauges = [(GaugeMetricFamily(name, doc, labels=["camera"]), value) for name, doc, value in _CAMERA_GAUGES]
        families: list[tuple[CounterMetricFamily | GaugeMetricFamily, Callable[[CameraState], float]]] = [
            *counters, *gauges]
        for cam in cameras:
            for family, value in families:
                family.add_metric([cam.camera_id], float(value(cam)))
        for family, _ in families:
            yield family

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so the registry checks their names at registration."""
        for name, doc, _ in _CAMERA_COUNTERS:
            yield CounterMetricFamily(name, doc, labels=["camera"])
        for name, doc, _ in _CAMERA_GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["camera"])


_HOST_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("fleet_host_up", "1 while the worker host's supervisord answers", "up"),
    ("fleet_host_draining", "1 while the host is drained (its cameras move away)", "draining"),
    ("fleet_host_capacity_slots", "camera slots of the host", "capacity"),
    ("fleet_host_cameras", "cameras placed on the host", "cameras"),
    ("fleet_host_load1", "the host's 1-minute load average", "load1"),
)


class _HostCollector(Collector):
    """Per worker host (gateway/hosts), and which host runs each camera."""

    def __init__(self, hosts: Callable[[], list[dict[str, object]]],
                 cameras: Callable[[], Iterable[CameraState]]) -> None:
        self._hosts = hosts
        self._cameras = cameras

    def collect(self) -> Iterable[Metric]:
        hosts = self._hosts()
        for name, doc, key in _HOST_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["host"])
            for h in hosts:
                family.add_metric([str(h["name"])], float(h[key]))  # type: ignore[arg-type]
            yield family
        placed = GaugeMetricFamily("fleet_camera_placed", "1 on the host that runs the camera",
                                   labels=["camera", "host"])
        for cam in self._cameras():
            if cam.host is not None:
                placed.add_metric([cam.camera_id, cam.host], 1.0)
        yield placed


class GatewayMetrics:
    def __init__(self, cameras: Callable[[], Iterable[CameraState]]) -> None:
        self.registry = CollectorRegistry()
        self._cameras = cameras
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes...
        PlatformCollector(registry=self.registry)  # python_info
        self.registry.register(_CameraCollector(cameras))
        r = self.registry
        self.detections = Counter("fleet_detections", "detections relayed to the backend", ["camera"], registry=r)
        self.hung_restarts = Counter("fleet_hung_worker_restarts",
                                     "workers restarted because their heartbeats stopped while the process ran",
                                     ["camera"], registry=r)
        self.bus_messages = Counter("fleet_bus_messages", "messages received from workers", ["type"], registry=r)
        self.bus_invalid = Counter("fleet_bus_invalid_messages", "malformed messages from the bus", registry=r)
        self.bus_fenced = Counter("fleet_bus_fenced_messages",
                                  "messages of a stale placement epoch dropped (a copy of a camera that moved hosts)",
                                  registry=r)
        self.bus_refused = Counter("fleet_bus_refused_connections",
                                   "tcp:// bus connections refused: a CURVE key not allow-listed", registry=r)
        self.backend_dropped = Counter("fleet_backend_dropped_messages",
                                       "messages for the backend dropped (absent or too slow)", registry=r)
        self.backend_errors = Counter("fleet_backend_errors", "error replies sent to the backend", ["code"],
                                      registry=r)
        self.applies = Counter("fleet_supervisor_applies", "changes applied to supervisord", registry=r)
        self.backend_ignored_keys = Counter("fleet_backend_ignored_keys",
                                            "unknown keys in backend messages, ignored (tolerant reader)", registry=r)
        self.capture_to_backend = Histogram(
            "fleet_capture_to_backend_seconds", "a detection's frame capture to its hand-over to the backend",
            buckets=CAPTURE_TO_BACKEND_BUCKETS, registry=r)
        self._per_camera: tuple[Counter, ...] = (self.detections, self.hung_restarts)

    def watch_hosts(self, hosts: Callable[[], list[dict[str, object]]]) -> None:
        """Several worker hosts: expose each one's health, capacity and load (HostFleet.describe)."""
        self.registry.register(_HostCollector(hosts, self._cameras))

    # -- events -----------------------------------------------------------------------------
    def detection(self, camera_id: str) -> None:
        self.detections.labels(camera_id).inc()

    def hung_restart(self, camera_id: str) -> None:
        self.hung_restarts.labels(camera_id).inc()

    def bus_message(self, kind: str) -> None:
        self.bus_messages.labels(kind).inc()

    def bus_invalid_message(self) -> None:
        self.bus_invalid.inc()

    def backend_dropped_message(self) -> None:
        self.backend_dropped.inc()

    def backend_error(self, code: str) -> None:
        self.backend_errors.labels(code).inc()

    def backend_ignored(self, keys: int = 1) -> None:
        self.backend_ignored_keys.inc(keys)

    def supervisor_applied(self) -> None:
        self.applies.inc()

    def observe_capture_to_backend(self, seconds: float) -> None:
        """Clocks of the same host can still disagree by a little: a negative latency counts as 0."""
        if math.isfinite(seconds):
            self.capture_to_backend.observe(max(0.0, seconds))

    def remove_camera(self, camera_id: str) -> None:
        """Forget a camera that left the plan: its labelled series go from /metrics."""
        for counter in self._per_camera:
            counter.remove(camera_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)
