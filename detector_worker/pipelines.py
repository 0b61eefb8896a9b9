"""Building a worker's pipelines from its subscriptions: archives, models, lanes, displays.

Displays with the same archive share one `PipelineInstance` (its models and branch pool), and
displays with the same archive and crop share one `Lane` (one tracker, one cycle per vehicle).
All of it belongs to this one worker process: nothing here is shared with another camera.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config.spec import Subscription, WorkerSpec
from .gpu import gpu_memory_total_bytes
from .pipeline.actions import ActionRunner
from .pipeline.archive import open_archive
from .pipeline.engine import Lane, PipelineInstance
from .pipeline.export import export_in_subprocess
from .pipeline.outbox import Outbox
from .pipeline.schema import PipelineConfig
from .pipeline.sessions import DisplaySession
from .pipeline.sinks import postgres_dsn, postgres_writer, redis_url, redis_writer
from .pipeline.stores import StoreWriter
from .pipeline.visits import LaneMemory

log = logging.getLogger(__name__)


@dataclass
class LaneGroup:
    lane: Lane
    displays: list[DisplaySession] = field(default_factory=list)
    memory: LaneMemory | None = None  # its fired vehicles, kept in the outbox across reloads and restarts


@dataclass
class Pipelines:
    instances: list[PipelineInstance]
    writers: list[StoreWriter[object, object]]
    groups: list[LaneGroup]
    closed: bool = False

    @property
    def displays(self) -> dict[str, DisplaySession]:
        return {d.display_id: d for g in self.groups for d in g.displays}

    def store_counts(self) -> tuple[int, int]:
        """(writes waiting, writes given up: rejected, or refused at the outbox's quota) of all stores.
        Writes a close left unapplied stay in the outbox: the next writers replay them."""
        stats = [w.stats() for w in self.writers]
        failed = sum(s.rejected + s.refused for s in stats)
        if self.closed:
            return 0, failed
        return sum(s.pending for s in stats), failed

    def quota_full(self) -> bool:
        return any(w.outbox.quota_full for w in self.writers)

    def start(self) -> None:
        """Start the store writers (after the pipelines they replace are closed: one writer per store)."""
        for writer in self.writers:
            writer.start()

    def close(self, flush_s: float = 1.0) -> None:
        deadline = time.monotonic() + flush_s  # one budget for all stores, not one each
        for writer in self.writers:
            writer.close(max(0.05, deadline - time.monotonic()))
        for instance in self.instances:
            instance.close()
        self.closed = True


def prepare_onnx(model_dir: Path) -> None:
    """Export the archive's .pt models to ONNX in a child process: torch never enters this one."""
    if all(p.with_suffix(".onnx").exists() for p in model_dir.glob("*.pt")):
        return
    log.info("exporting the models of %s to ONNX (once per model)", model_dir.name)
    export_in_subprocess(model_dir)


def outbox_path(spec: WorkerSpec) -> Path:
    """The camera's durable outbox: <stores.outbox_dir or log.directory/outbox>/<slug>.sqlite."""
    return (spec.stores.outbox_dir or spec.log.directory / "outbox") / f"{spec.slug}.sqlite"


def open_outbox(spec: WorkerSpec) -> Outbox:
    quota = int(spec.stores.outbox_quota_mb * 2**20)
    return Outbox(outbox_path(spec), quota, logging.getLogger("detector_worker.stores"))


def _store_writers(config: PipelineConfig, spec: WorkerSpec, outbox: Outbox | None,
                   made: dict[str, StoreWriter[object, object]]) -> tuple[StoreWriter[object, object] | None,
                                                                        StoreWriter[object, object] | None]:
    """The worker's one writer per store (targets from the operator only; the archive's own
    `redis`/`postgresql` sections are ignored), made when a pipeline first needs it."""
    actions = [a for node in config.pipeline.walk() for a in (*node.actions, *node.parallel_actions)]
    wants_redis = any(a.type in ("redis_save_image", "redis_publish") for a in actions)
    wants_pg = any(a.type == "postgresql_update_combined" for a in actions)
    if config.redis is not None or config.postgresql is not None:
        log.warning("pipeline %s: the archive's redis/postgresql connection settings are ignored: store targets "
                    "come from the operator (stores.redis_url/database_url, REDIS_URL/DATABASE_URL)",
                    config.pipeline.model_id)
    logger = logging.getLogger("detector_worker.stores")
    start = outbox is None
    if wants_redis and "redis" not in made:
        url = redis_url(spec.stores.redis_url or os.environ.get("REDIS_URL"))
        made["redis"] = redis_writer(url, logger, outbox, start=start)  # type: ignore[assignment]
    if wants_pg and "postgresql" not in made:
        dsn = postgres_dsn(spec.stores.database_url or os.environ.get("DATABASE_URL"))
        made["postgresql"] = postgres_writer(dsn, logger, outbox, start=start)  # type: ignore[assignment]
    return made.get("redis") if wants_redis else None, made.get("postgresql") if wants_pg else None


def build_pipelines(spec: WorkerSpec, outbox: Outbox | None = None) -> Pipelines:
    """With `outbox` (the worker's), store writers start only with `Pipelines.start()`, and session
    and lane state is restored from it."""
    instances: dict[str, tuple[PipelineInstance, ActionRunner]] = {}
    made: dict[str, StoreWriter[object, object]] = {}
    groups: dict[tuple[str, tuple[int, int, int, int] | None], LaneGroup] = {}
    for sub in spec.subscriptions:
        key = f"{sub.model.id}|{sub.model.url}"
        if key not in instances:
            model_dir, config = open_archive(sub.model.url, spec.model_cache_dir, sub.model.id)
            backend = sub.model.backend or spec.inference.backend
            if backend == "onnx":
                prepare_onnx(model_dir)
            providers, gpu_limit = _device(spec)
            instance = PipelineInstance(config, model_dir, backend=backend, threads=spec.inference.threads,
                                        providers=providers, gpu_memory_limit_bytes=gpu_limit)
            redis, pg = _store_writers(config, spec, outbox, made)
            instances[key] = (instance, ActionRunner(config.pipeline, redis, pg,  # type: ignore[arg-type]
                                                     logging.getLogger("detector_worker.actions")))
            log.info("pipeline %s loaded from %s (%s backend)", config.pipeline.model_id, model_dir.name, backend)
        instance, actions = instances[key]
        crop = sub.crop.box if sub.crop else None
        group = groups.get((key, crop))
        if group is None:
            lane = Lane(instance, crop)
            memory = None if outbox is None else LaneMemory(
                outbox, spec.camera_id, f"{sub.model.id}|{sub.model.url}|{crop}", lane,
                logging.getLogger("detector_worker.sessions"))
            group = groups[(key, crop)] = LaneGroup(lane, memory=memory)
        group.displays.append(_display(spec, sub, instance, actions, outbox))
    return Pipelines([i for i, _ in instances.values()], list(made.values()), list(groups.values()))


def _device(spec: WorkerSpec) -> tuple[list[str] | None, int | None]:
    """ONNX Runtime providers and this process's GPU memory share (resource_limits.gpu_memory_fraction)."""
    if spec.inference.device != "cuda":
        return None, None
    total = gpu_memory_total_bytes()
    limit = int(total * spec.resource_limits.gpu_memory_fraction) if total else None
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], limit


def _display(spec: WorkerSpec, sub: Subscription, instance: PipelineInstance, actions: ActionRunner,
             outbox: Outbox | None = None) -> DisplaySession:
    model_id = sub.model.id if sub.model.id is not None else instance.root.model_id  # its type as sent
    return DisplaySession(spec.camera_id, sub.display_id, sub.subscription_identifier, model_id,
                          sub.model.name or instance.root.model_id, actions,
                          logging.getLogger("detector_worker.sessions"), outbox=outbox)
