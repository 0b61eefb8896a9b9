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
from .pipeline.schema import PipelineConfig
from .pipeline.sessions import DisplaySession
from .pipeline.sinks import postgres_dsn, postgres_writer, redis_url, redis_writer
from .pipeline.stores import StoreWriter

log = logging.getLogger(__name__)


@dataclass
class LaneGroup:
    lane: Lane
    displays: list[DisplaySession] = field(default_factory=list)


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
        """(writes waiting, writes given up: rejected, dropped, or left unapplied by a close) of all stores."""
        stats = [w.stats() for w in self.writers]
        failed = sum(s.rejected + s.dropped for s in stats)
        if self.closed:
            return 0, failed + sum(s.pending for s in stats)
        return sum(s.pending for s in stats), failed

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


def _store_writers(config: PipelineConfig, spec: WorkerSpec) -> tuple[StoreWriter[object, object] | None,
                                                                      StoreWriter[object, object] | None]:
    actions = [a for node in config.pipeline.walk() for a in (*node.actions, *node.parallel_actions)]
    wants_redis = any(a.type in ("redis_save_image", "redis_publish") for a in actions)
    wants_pg = any(a.type == "postgresql_update_combined" for a in actions)
    redis_override = spec.stores.redis_url or os.environ.get("REDIS_URL")
    pg_override = spec.stores.database_url or os.environ.get("DATABASE_URL")
    logger = logging.getLogger("detector_worker.stores")
    redis = redis_writer(redis_url(config.redis, redis_override), logger) if wants_redis else None
    pg = postgres_writer(postgres_dsn(config.postgresql, pg_override), logger) if wants_pg else None
    return redis, pg  # type: ignore[return-value]


def build_pipelines(spec: WorkerSpec) -> Pipelines:
    instances: dict[str, tuple[PipelineInstance, ActionRunner]] = {}
    writers: list[StoreWriter[object, object]] = []
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
            redis, pg = _store_writers(config, spec)
            writers.extend(w for w in (redis, pg) if w is not None)
            instances[key] = (instance, ActionRunner(config.pipeline, redis, pg,  # type: ignore[arg-type]
                                                     logging.getLogger("detector_worker.actions")))
            log.info("pipeline %s loaded from %s (%s backend)", config.pipeline.model_id, model_dir.name, backend)
        instance, actions = instances[key]
        crop = sub.crop.box if sub.crop else None
        group = groups.get((key, crop))
        if group is None:
            group = groups[(key, crop)] = LaneGroup(Lane(instance, crop))
        group.displays.append(_display(spec, sub, instance, actions))
    return Pipelines([i for i, _ in instances.values()], writers, list(groups.values()))


def _device(spec: WorkerSpec) -> tuple[list[str] | None, int | None]:
    """ONNX Runtime providers and this process's GPU memory share (resource_limits.gpu_memory_fraction)."""
    if spec.inference.device != "cuda":
        return None, None
    total = gpu_memory_total_bytes()
    limit = int(total * spec.resource_limits.gpu_memory_fraction) if total else None
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], limit


def _display(spec: WorkerSpec, sub: Subscription, instance: PipelineInstance, actions: ActionRunner) -> DisplaySession:
    model_id = sub.model.id if sub.model.id is not None else instance.root.model_id  # its type as sent
    return DisplaySession(spec.camera_id, sub.display_id, sub.subscription_identifier, model_id,
                          sub.model.name or instance.root.model_id, actions,
                          logging.getLogger("detector_worker.sessions"))
