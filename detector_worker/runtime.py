"""The worker's main loop: latest frame → lanes → detections and writes; control in; health out.

Signal handlers only set flags; the loop notices them within one tick (≤ 0.1 s) and then
finishes the frame in hand, flushes the stores briefly, closes its sockets and returns, well
inside supervisord's stop timeout.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import cv2
import numpy as np
import psutil

from .comms.bus import WorkerBus
from .comms.messages import (
    Control,
    DisplayDetection,
    Heartbeat,
    Live,
    Reload,
    SessionResult,
    Snapshot,
    SnapshotTrack,
    Status,
    VehicleResult,
)
from .config.spec import WorkerSpec
from .logs import CameraContext
from .pipeline.archive import ArchiveError
from .pipeline.engine import VehicleCycle
from .pipeline.handover import Fenced
from .pipeline.models import ModelLoadError
from .pipeline.schema import PipelineConfigError
from .pipeline.sessions import DisplaySession, Written
from .pipelines import Pipelines, build_pipelines, open_outbox
from .startup import StartupBeats
from .video.backoff import Backoff
from .video.reader import LatestFrameReader
from .video.sources import SourceSpec, make_source

log = logging.getLogger("detector_worker")
TICK_S = 0.1
MIRROR_WAIT_S = 0.5  # longest a detection waits for the outbox mirror (several hosts only)
EXIT_OK, EXIT_CANNOT_START, EXIT_MEMORY = 0, 1, 3


@dataclass
class Flags:
    stop: bool = False
    reload: bool = False


def _install_signals(flags: Flags) -> None:
    def on_stop(signum: int, _frame: FrameType | None) -> None:
        flags.stop = True

    def on_hup(signum: int, _frame: FrameType | None) -> None:
        flags.reload = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)


def vehicle_result(cycle: VehicleCycle) -> VehicleResult:
    det = cycle.detections
    car, front = det.get("Car"), det.get("Frontal")
    fields = {f"{m}.{k}": v for m, values in cycle.field_values().items() for k, v in values.items()}
    brand, body = cycle.with_role("brand"), cycle.with_role("body_type")
    return VehicleResult(
        car_box=car.box if car else None, frontal_box=front.box if front else None,
        confidence=det[cycle.vehicle_class].confidence,
        brand=brand.label if brand else None, brand_confidence=brand.confidence if brand else None,
        body_type=body.label if body else None, body_type_confidence=body.confidence if body else None,
        fields=fields)


def _reader_settings(spec: WorkerSpec) -> tuple[object, ...]:
    """What the frame reader is made from: a change to any of it means a new reader."""
    return spec.source, spec.max_fps, spec.stall_timeout_s, spec.backoff


def _pipeline_settings(spec: WorkerSpec) -> tuple[object, ...]:
    """What the pipelines are made from: a change to any of it means rebuilding them (a subscription's
    own `source` is not: the worker reads `spec.source`)."""
    subscriptions = [(s.subscription_identifier, s.model, s.crop) for s in spec.subscriptions]
    return subscriptions, spec.inference, spec.resource_limits, spec.stores, spec.model_cache_dir


def _restart_settings(spec: WorkerSpec) -> tuple[object, ...]:
    """What only a restart applies (the bus intervals and the log level apply at once)."""
    return (spec.bus.push_endpoint, spec.bus.control_endpoint, spec.bus.send_hwm, spec.bus.curve,
            spec.placement_epoch, spec.log.directory,
            spec.log.max_mb, spec.log.backups)


class Worker:
    def __init__(self, spec: WorkerSpec, flags: Flags, reload_spec: Callable[[], WorkerSpec] | None = None) -> None:
        self.spec = spec
        self.flags = flags
        self._reload_spec = reload_spec  # returns a fresh WorkerSpec, for SIGHUP/reload
        self.bus = WorkerBus.for_camera(spec.camera_id, spec.slug, spec.bus, epoch=spec.placement_epoch,
                                        log=logging.getLogger("detector_worker.bus"))
        self.status_events: queue.SimpleQueue[tuple[bool, str]] = queue.SimpleQueue()
        self.started = time.monotonic()
        # heartbeats (phase "starting", "fetching", ...) from here on: a long fetch is not a hang
        try:
            self.reader = self._start_reader()  # the stream opens while the models load, not after them
            with StartupBeats(self.bus, spec.camera_id, self.started, spec.bus.heartbeat_interval_s) as beats:
                self.outbox = open_outbox(spec)  # the camera's durable store writes and session state
                self.pipelines: Pipelines = self._build(spec, beats.progress)
        except BaseException:
            # a worker that cannot start must still exit: an open ZeroMQ context blocks the interpreter's exit
            if getattr(self, "reader", None) is not None:
                self.reader.stop(timeout=0.3)
            if getattr(self, "outbox", None) is not None:
                self.outbox.close()
            self.bus.close()
            raise
        self.control_state: dict[str, tuple[int | str | None, str | None]] = {}
        self._last_seq: int | None = None  # the current reader's last frame taken
        self._past_reconnects = self._past_stalls = 0  # of readers replaced by a reload
        self._past_store_failed = 0  # of pipelines replaced by a reload
        self.process = psutil.Process()
        self.online = False
        self.last_error: str | None = None
        self._processed = self._fps_count = 0
        self._fps_since = time.monotonic()
        self.live_until, self.live_interval_s = 0.0, 0.4  # a dashboard watches (Live lease): snapshots faster
        self.live_kick = False  # a new lease: the next frame's snapshot goes at once

    def _build(self, spec: WorkerSpec, on_progress: Callable[[str, str], None] | None = None) -> Pipelines:
        if on_progress is None:  # a reload: heartbeats go on while a new archive is fetched or converted
            with StartupBeats(self.bus, spec.camera_id, self.started, spec.bus.heartbeat_interval_s) as beats:
                return self._build(spec, beats.progress)
        pipelines = build_pipelines(spec, self.outbox, on_progress=on_progress)
        for display in pipelines.displays.values():
            display.make_notice = self._session_result  # sent once the session's writes are committed
        return pipelines

    def _session_result(self, display: DisplaySession, written: Written) -> str:
        return SessionResult(
            camera=self.spec.camera_id, sent_at=0.0, subscription_identifier=display.subscription_id,
            display_id=display.display_id, session_id=written.session_id, track_id=written.track_id,
            image_key=written.image_key, vehicle=vehicle_result(written.cycle)).model_dump_json()

    def _send_committed_results(self) -> None:
        """session_result (→ patchSession) of the sessions whose writes are all committed, once each."""
        for payload in self.outbox.take_ready_notices():
            with contextlib.suppress(ValueError):
                msg = SessionResult.model_validate_json(payload)
                self.bus.send(msg.model_copy(update={"sent_at": time.time()}))

    def _start_reader(self) -> LatestFrameReader:
        s = self.spec.source
        source_spec = SourceSpec(kind=s.kind, url=s.url, snapshot_interval_ms=s.snapshot_interval_ms,
                                 open_timeout_s=s.open_timeout_s, read_timeout_s=s.read_timeout_s)
        self.source_description = make_source(source_spec).describe()  # credentials masked
        backoff = Backoff(self.spec.backoff.initial_s, self.spec.backoff.max_s, jitter="decorrelated")
        return LatestFrameReader(lambda: make_source(source_spec), backoff=backoff,
                                 stall_timeout_s=self.spec.stall_timeout_s, max_fps=self.spec.max_fps,
                                 on_status=lambda online, why: self.status_events.put((online, why)),
                                 name=f"video-{self.spec.slug}").start()

    def sessions_text(self) -> str:
        displays = self.pipelines.displays
        return ",".join(f"{d}={'-' if s.session_id is None else s.session_id}" for d, s in displays.items()) or "-"

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        log.info("worker started (pid %d): %d subscription(s), source %s", os.getpid(),
                 len(self.spec.subscriptions), self.source_description)
        next_hello = next_beat = next_status = next_snapshot = 0.0
        try:
            while not self.flags.stop:
                now = time.monotonic()
                if not self.bus.answered and now >= next_hello:
                    self.bus.hello()
                    next_hello = now + 1.0
                for msg in self.bus.poll_control(0):
                    self._on_control(msg)
                if self.flags.reload:
                    self.flags.reload = False
                    self._reload()
                self._send_committed_results()
                if now >= next_beat:
                    self.bus.send(Heartbeat(camera=self.spec.camera_id, sent_at=time.time(), pid=os.getpid(),
                                            uptime_s=now - self.started))
                    next_beat = now + self.spec.bus.heartbeat_interval_s
                frame = self.reader.latest(after_seq=self._last_seq, timeout=TICK_S)
                changed = self._drain_status()  # told before the frame is processed (the first one is slow)
                if changed:  # the camera's first word (frame or failure) starts the stores; a no-op after that
                    self.pipelines.start()  # until then what an earlier run left waits in the outbox, durable
                if changed or now >= next_status:
                    self._send_status()
                    next_status = now + self.spec.bus.status_interval_s
                    if self._over_memory():
                        return EXIT_MEMORY
                if frame is not None:
                    self._last_seq = frame.seq
                    self._process(frame.image, frame.seq, frame.captured_at)
                    if now >= next_snapshot or self.live_kick:
                        self.live_kick = False
                        self._send_snapshot(frame.image, frame.captured_at)
                        live = now < self.live_until
                        next_snapshot = now + (self.live_interval_s if live else self.spec.bus.snapshot_interval_s)
        finally:
            self.close()
        return EXIT_OK

    def _process(self, image: object, seq: int, captured_at: float) -> None:
        self._processed += 1
        for group in self.pipelines.groups:
            cycles = group.lane.process(image, captured_at)  # type: ignore[arg-type]
            if group.memory is not None:
                # before the displays: a fired vehicle never fires again; the cycle of a vehicle that had
                # its cycle before a reload/restart is dropped here (visits.py: the visit rule)
                cycles = group.memory.observe(cycles)
            log.debug("frame %d: %d track(s), %d new cycle(s), %.1f ms, detector on %d of %d frame(s)", seq,
                      len(group.lane.tracker.tracks), len(cycles), group.lane.stats.inference_ms,
                      group.lane.stats.detected, group.lane.stats.frames)
            for cycle in cycles:
                result = vehicle_result(cycle)
                for display in group.displays:
                    display.on_cycle(cycle)  # writes now if a session is bound
                # on several hosts: the vehicle's fired state and writes reach the outbox's mirror before the
                # gateway hears of it, so a host lost in between leaves no reported vehicle unknown to the
                # copy that takes over (it would fire again: a second session). A few ms; bounded when
                # Redis is away (the detection goes out then, as on one host).
                if not self.outbox.wait_mirrored(MIRROR_WAIT_S):
                    log.warning("vehicle %d: its state is not mirrored yet (Redis slow or away): reported anyway",
                                cycle.track_id)
                for display in group.displays:
                    self._send_detection(display, cycle, result)

    def _send_snapshot(self, image: np.ndarray, captured_at: float) -> None:
        h, w = image.shape[:2]
        scale = min(1.0, 640 / max(w, 1))
        small = image if scale >= 1 else cv2.resize(image, (int(w * scale), int(h * scale)),
                                                    interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        if ok:
            groups = self.pipelines.groups
            tracks = [SnapshotTrack(box=box, track_id=tid, still=still, fired=fired, labels=labels)
                      for g in groups for box, tid, still, fired, labels in g.lane.overlay()]
            crops = [tuple(map(float, g.lane.crop_box)) for g in groups if g.lane.crop_box is not None]
            motion = [tuple(map(float, b)) for g in groups for b in g.lane.motion_boxes()]
            self.bus.send(Snapshot(camera=self.spec.camera_id, sent_at=time.time(), captured_at=captured_at,
                                   jpeg_b64=base64.b64encode(buf.tobytes()).decode(), width=w, height=h,
                                   tracks=tracks[:256], crops=crops[:16], motion=motion[:256]))

    @staticmethod
    def _thumbnail(cycle: VehicleCycle) -> str | None:
        """The vehicle's crop as a small JPEG for the dashboard's recent detections."""
        image = cycle.crops.get(cycle.vehicle_class)
        if image is None or image.size == 0:
            return None
        h, w = image.shape[:2]
        scale = min(1.0, 160 / max(w, h, 1))
        small = image if scale >= 1 else cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))),
                                                    interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        return base64.b64encode(buf.tobytes()).decode() if ok else None

    def _send_detection(self, display: DisplaySession, cycle: VehicleCycle, result: VehicleResult) -> None:
        written = display.written[-1] if display.written and display.written[-1].track_id == cycle.track_id else None
        self.bus.send(DisplayDetection(
            camera=self.spec.camera_id, sent_at=time.time(), subscription_identifier=display.subscription_id,
            display_id=display.display_id, session_id=written.session_id if written else None,
            track_id=cycle.track_id, model_id=display.model_id, model_name=display.model_name,
            captured_at=cycle.captured_at, inference_ms=cycle.inference_ms, vehicle=result,
            image_key=written.image_key if written else None, thumb_b64=self._thumbnail(cycle)))
        log.info("detection: display %s vehicle %d %s %s", display.display_id, cycle.track_id, result.brand,
                 result.body_type)

    def _on_control(self, msg: Control | Reload | Live) -> None:
        if isinstance(msg, Reload):
            self._reload()
            return
        if isinstance(msg, Live):
            self.live_kick = self.live_kick or time.monotonic() >= self.live_until
            self.live_until = time.monotonic() + msg.lease_s
            self.live_interval_s = msg.interval_s
            return
        displays = self.pipelines.displays
        for display_id, state in msg.displays.items():
            self.control_state[display_id] = (state.session_id, state.progression_stage)
            display = displays.get(display_id)
            if display is None:
                continue  # a display this worker does not (yet) serve; kept for a reload
            display.set_stage(state.progression_stage)
            display.set_session(state.session_id)

    def _reload(self) -> None:
        """Apply a fresh spec: a new reader if the source settings changed, new pipelines if the
        subscriptions (or what models run with) changed; the process (and its pid) stays."""
        if self._reload_spec is None:
            return
        try:
            spec = self._reload_spec()
            if spec.camera_id != self.spec.camera_id:
                raise ValueError(f"the spec is now of camera {spec.camera_id!r}, not {self.spec.camera_id!r}")
            pipelines = self._build(spec) if _pipeline_settings(spec) != _pipeline_settings(self.spec) else None
        except Exception as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            return
        old_spec, self.spec = self.spec, spec
        log.info("reloading: %d subscription(s)%s%s", len(spec.subscriptions),
                 ", new pipelines" if pipelines is not None else "",
                 ", new source settings" if _reader_settings(spec) != _reader_settings(old_spec) else "")
        if spec.log.level != old_spec.log.level:
            logging.getLogger().setLevel(spec.log.level)
        if _restart_settings(spec) != _restart_settings(old_spec):
            log.warning("bus endpoints and log file settings take effect at the next restart of this camera")
        if _reader_settings(spec) != _reader_settings(old_spec):
            self._restart_reader()
        if pipelines is None and spec.motion != old_spec.motion:
            for group in self.pipelines.groups:
                group.lane.set_motion(spec.motion)
        if pipelines is not None:
            old, self.pipelines = self.pipelines, pipelines
            old.close(flush_s=0.5)
            self.pipelines.start()  # what the old writers left in the outbox is replayed by the new ones
            self._past_store_failed += old.store_counts()[1]
            for display_id, (session_id, stage) in self.control_state.items():
                display = self.pipelines.displays.get(display_id)
                if display is not None:
                    display.set_stage(stage)
                    display.set_session(session_id)

    def _restart_reader(self) -> None:
        old = self.reader.stats()
        self.reader.stop(timeout=0.3)  # a thread stuck in OpenCV is left to its read timeout (daemon)
        self._past_reconnects += old.reconnects
        self._past_stalls += old.stalls
        self.reader = self._start_reader()
        self._last_seq = None
        log.info("reading from %s", self.source_description)

    def _drain_status(self) -> bool:
        changed = False
        while True:
            try:
                online, why = self.status_events.get_nowait()
            except queue.Empty:
                return changed
            # A camera that never came online still has a reason to show (its first failure).
            first_failure = not online and self.last_error is None
            if online != self.online or first_failure:
                changed = True
                self.online = online
                if not online:
                    self.last_error = why
                log.log(logging.INFO if online else logging.WARNING, "camera %s: %s",
                        "online" if online else "offline", why)

    def _processed_fps(self) -> float:
        """Frames the pipeline processed per second since the last status (the reader's own rate
        stays at the camera's while an overloaded pipeline skips frames)."""
        now = time.monotonic()
        elapsed = now - self._fps_since
        fps = (self._processed - self._fps_count) / elapsed if elapsed > 0 else 0.0
        self._fps_since, self._fps_count = now, self._processed
        return fps

    def _send_status(self) -> None:
        stats = self.reader.stats()
        inference = max((g.lane.stats.inference_ms for g in self.pipelines.groups), default=0.0)
        store_pending, store_failed = self.pipelines.store_counts()
        self.bus.send(Status(camera=self.spec.camera_id, sent_at=time.time(), online=self.online,
                             fps=self._processed_fps() if self.online else 0.0,
                             inference_ms=inference, reconnects=self._past_reconnects + stats.reconnects,
                             stalls=self._past_stalls + stats.stalls,
                             dropped=self.bus.dropped, rss_mb=self.process.memory_info().rss / 2**20,
                             last_error=self.last_error, frames_processed=self._processed,
                             store_pending=store_pending, store_failed=self._past_store_failed + store_failed,
                             store_quota_full=self.outbox.quota_full, display_errors=self.pipelines.errors))

    def _over_memory(self) -> bool:
        rss_mb = self.process.memory_info().rss / 2**20
        limit = self.spec.resource_limits.memory_per_process_mb
        if rss_mb > limit:
            log.error("memory %.0f MB is over the %d MB ceiling: exiting so supervisord restarts this camera",
                      rss_mb, limit)
            return True
        return False

    def close(self) -> None:
        # 1.2 s in all, well inside the 2 s promise: a store that is down keeps its unwritten results
        # in the log, not the camera's stop waiting
        deadline = time.monotonic() + 1.2
        self.reader.stop(timeout=0.3)
        self.pipelines.close(flush_s=max(0.1, deadline - time.monotonic()))
        self._send_committed_results()
        self._send_status_final()
        self.bus.close()
        self.outbox.close()
        log.info("worker stopped")

    def _send_status_final(self) -> None:
        self.online = False
        self.last_error = "worker stopped"
        with contextlib.suppress(Exception):  # best effort on the way out
            self._send_status()


def run_worker(spec: WorkerSpec, reload_spec: Callable[[], WorkerSpec] | None = None,
               log_context: CameraContext | None = None) -> int:
    flags = Flags()
    _install_signals(flags)
    threading.current_thread().name = f"camera-{spec.slug}"
    try:
        worker = Worker(spec, flags, reload_spec)
    except (ArchiveError, ModelLoadError, PipelineConfigError, Fenced, ValueError, OSError) as err:
        # one clear line instead of a traceback; supervisord retries (a model server may be back)
        log.error("cannot start: %s", err)
        return EXIT_CANNOT_START
    if log_context is not None:
        log_context.sessions = worker.sessions_text
    return worker.run()
