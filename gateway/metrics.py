"""Prometheus metrics of the gateway and its cameras (one registry per gateway, no globals).

Per-camera gauges are filled from the camera states at scrape time, so a removed camera
disappears from /metrics instead of lingering with its last values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .state import CameraState


class _CameraCollector(Collector):
    def __init__(self, cameras: Callable[[], Iterable[CameraState]]) -> None:
        self._cameras = cameras

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            "online": GaugeMetricFamily("fleet_camera_online", "1 when the worker runs and its stream is up",
                                        labels=["camera"]),
            "fps": GaugeMetricFamily("fleet_camera_fps", "frames/s the pipeline processes", labels=["camera"]),
            "inference": GaugeMetricFamily("fleet_camera_inference_ms", "last frame's detector + branches time",
                                           labels=["camera"]),
            "reconnects": GaugeMetricFamily("fleet_camera_reconnects", "stream reconnect attempts since start",
                                            labels=["camera"]),
            "stalls": GaugeMetricFamily("fleet_camera_stalls", "stream stalls (no frame within the watchdog)",
                                        labels=["camera"]),
            "restarts": GaugeMetricFamily("fleet_camera_restarts", "worker process restarts seen by the gateway",
                                          labels=["camera"]),
            "dropped": GaugeMetricFamily("fleet_camera_bus_dropped", "bus messages the worker could not send",
                                         labels=["camera"]),
            "rss": GaugeMetricFamily("fleet_camera_rss_mb", "worker resident memory (MB)", labels=["camera"]),
            "heartbeat": GaugeMetricFamily("fleet_camera_heartbeat_age_seconds", "time since the last heartbeat",
                                           labels=["camera"]),
        }
        for cam in self._cameras():
            values = {"online": float(cam.online), "fps": cam.fps, "inference": cam.inference_ms,
                      "reconnects": cam.reconnects, "stalls": cam.stalls, "restarts": cam.restarts,
                      "dropped": cam.dropped, "rss": cam.rss_mb, "heartbeat": cam.silent_for()}
            for key, family in families.items():
                family.add_metric([cam.camera_id], float(values[key]))
        yield from families.values()


class GatewayMetrics:
    def __init__(self, cameras: Callable[[], Iterable[CameraState]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CameraCollector(cameras))
        self.detections = Counter("fleet_detections", "detections relayed to the backend", ["camera"],
                                  registry=self.registry)
        self.bus_messages = Counter("fleet_bus_messages", "messages received from workers", ["type"],
                                    registry=self.registry)
        self.bus_invalid = Counter("fleet_bus_invalid_messages", "malformed messages from the bus",
                                   registry=self.registry)
        self.backend_dropped = Counter("fleet_backend_dropped_messages",
                                       "messages for the backend dropped (absent or too slow)", registry=self.registry)
        self.backend_errors = Counter("fleet_backend_errors", "error replies sent to the backend", ["code"],
                                      registry=self.registry)
        self.applies = Counter("fleet_supervisor_applies", "changes applied to supervisord", registry=self.registry)
        self.hung_restarts = Counter("fleet_hung_worker_restarts", "workers restarted for silent heartbeats",
                                     ["camera"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
