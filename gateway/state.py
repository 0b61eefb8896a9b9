"""What the gateway knows about each camera right now, from workers and from supervisord.

A camera is online only when its process runs (supervisord says RUNNING) *and* its worker says
its stream is up; a crash, a FATAL program or an operator's stop makes it offline at once,
whatever the worker last said.

Counts that come from the worker (`reconnects`, `stalls`, `dropped`, `frames_processed`,
`store_failed`) are the worker's own since it started: they fall back to zero when the worker
restarts, which Prometheus reads as a counter reset. `restarts`, `hung_restarts` and
`detections` are counted by the gateway since it started.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from detector_worker.comms.messages import DisplayDetection, Heartbeat, Snapshot, Status

RECENT_DETECTIONS = 20  # kept per camera for the dashboard's camera page


@dataclass
class CameraState:
    camera_id: str
    program: str
    process_state: str = "UNKNOWN"  # supervisord's state name
    pid: int | None = None
    stream_online: bool = False
    fps: float = 0.0
    inference_ms: float = 0.0
    reconnects: int = 0
    stalls: int = 0
    dropped: int = 0
    rss_mb: float = 0.0
    last_error: str | None = None
    frames_processed: int = 0  # worker's count since it started
    store_pending: int = 0  # store writes queued or retrying in the worker now
    store_failed: int = 0  # store writes the worker gave up, since it started
    store_quota_full: bool = False  # its durable outbox is at its disk quota: new writes are refused
    display_errors: dict[str, str] = field(default_factory=dict)  # displays whose pipeline failed → why
    phase: str = "starting"  # the worker's own word: starting, fetching, converting, opening, running
    phase_detail: str | None = None
    phase_since: float = field(default_factory=time.monotonic)  # monotonic
    restarts: int = 0  # process restarts seen (crashes, hung-worker restarts), not first starts
    hung_restarts: int = 0
    detections: int = 0
    # an operator stopped this camera's worker: set by the gateway from its desired state, which owns it
    operator_stopped: bool = False
    # the current process has sent a heartbeat: until then it is importing its libraries (seconds, more on a
    # loaded host), so only startup_timeout applies, not heartbeat_timeout
    heard: bool = False
    host: str | None = None  # the worker host it is placed on (None: this one, or unplaced); gateway/hosts
    epoch: int = 0  # its placement epoch (0: one host); a new one is a new copy on another host
    last_heartbeat: float | None = None  # monotonic
    worker_pid: int | None = None
    snapshot: Snapshot | None = None
    recent: deque[DisplayDetection] = field(default_factory=lambda: deque(maxlen=RECENT_DETECTIONS), repr=False)
    _seen_running: bool = field(default=False, repr=False)

    @property
    def online(self) -> bool:
        return self.process_state == "RUNNING" and self.stream_online

    @property
    def rss_bytes(self) -> float:
        return self.rss_mb * 1024 * 1024

    @property
    def inference_seconds(self) -> float:
        return self.inference_ms / 1000

    def on_status(self, msg: Status) -> None:
        self.stream_online = msg.online
        self.fps, self.inference_ms = msg.fps, msg.inference_ms
        self.reconnects, self.stalls, self.dropped = msg.reconnects, msg.stalls, msg.dropped
        self.rss_mb, self.last_error = msg.rss_mb, msg.last_error
        self.frames_processed, self.store_pending, self.store_failed = (
            msg.frames_processed, msg.store_pending, msg.store_failed)
        self.store_quota_full, self.display_errors = msg.store_quota_full, dict(msg.display_errors)
        self.last_heartbeat = time.monotonic()

    def on_heartbeat(self, msg: Heartbeat) -> None:
        self.last_heartbeat = time.monotonic()
        self.heard = True
        self.worker_pid = msg.pid
        if msg.phase != self.phase:
            self.phase, self.phase_since = msg.phase, time.monotonic()
        self.phase_detail = msg.detail

    def starting_for(self) -> float:
        """Seconds this worker has been starting (fetching, converting, opening); 0 once it runs."""
        return 0.0 if self.phase == "running" else time.monotonic() - self.phase_since

    def on_detection(self, msg: DisplayDetection) -> None:
        self.detections += 1
        self.recent.append(msg)

    def hung(self, *, heartbeat_timeout: float, startup_timeout: float) -> str | None:
        """Why its running process counts as hung (the watchdog restarts it), or None."""
        if self.heard and self.silent_for() > heartbeat_timeout:
            return f"no heartbeat for {self.silent_for():.0f} s while its process runs"
        if not self.heard and self.silent_for() > startup_timeout:
            return f"no word for {self.silent_for():.0f} s since its process started (startup_timeout)"
        if self.starting_for() > startup_timeout:
            return f"still {self.phase} after {self.starting_for():.0f} s (startup_timeout)"
        return None

    def on_hung_restart(self) -> None:
        """The gateway restarts this worker because its heartbeats stopped while the process ran."""
        self.hung_restarts += 1
        self.last_heartbeat = self.phase_since = time.monotonic()  # one restart per timeout, not one per pass

    def on_placed(self, epoch: int) -> None:
        """Placed anew under `epoch`: the old copy's process, stream and phase are not the new copy's."""
        self.epoch = epoch
        self.process_state, self.pid, self.worker_pid = "UNKNOWN", None, None
        self.stream_online, self.heard = False, False
        self.phase, self.phase_detail, self.phase_since = "starting", None, time.monotonic()
        self._seen_running = False

    def on_polled(self, state: str, pid: int | None) -> None:
        """supervisord's view as polled: taken only when it changed (a repeated RUNNING would otherwise
        give the process a fresh heartbeat timeout on every poll)."""
        if state != self.process_state or pid != self.pid:
            self.on_process_state(state, pid)

    def on_process_state(self, state: str, pid: int | None) -> None:
        """supervisord's view; a RUNNING after a previous RUNNING means the process was restarted."""
        if state == "RUNNING":
            if self._seen_running and pid != self.pid:
                self.restarts += 1
            self._seen_running = True
            self.last_heartbeat = time.monotonic()  # give a fresh process its full heartbeat timeout
        if state in ("STARTING", "BACKOFF") or (state == "RUNNING" and self.pid != pid):
            self.phase, self.phase_detail, self.phase_since = "starting", None, time.monotonic()  # a new process
            self.heard = False
        else:
            self.stream_online = False
        self.process_state, self.pid = state, pid if state == "RUNNING" else None

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heartbeat if self.last_heartbeat is not None else 0.0

    def as_json(self) -> dict[str, object]:
        """The camera as `/cameras` shows it; keys are only ever added, never renamed."""
        return {
            "camera": self.camera_id, "program": self.program, "process_state": self.process_state,
            "pid": self.pid, "online": self.online, "stream_online": self.stream_online,
            "operator_stopped": self.operator_stopped,
            "fps": round(self.fps, 2), "inference_ms": round(self.inference_ms, 2), "reconnects": self.reconnects,
            "stalls": self.stalls, "dropped": self.dropped, "rss_mb": round(self.rss_mb, 1),
            "frames_processed": self.frames_processed, "store_pending": self.store_pending,
            "store_failed": self.store_failed, "store_quota_full": self.store_quota_full,
            "display_errors": self.display_errors, "phase": self.phase, "phase_detail": self.phase_detail,
            "restarts": self.restarts, "hung_restarts": self.hung_restarts, "detections": self.detections,
            "last_error": self.last_error, "heartbeat_age_s": round(self.silent_for(), 1), "host": self.host,
        }
