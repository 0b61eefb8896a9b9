"""Building a worker's pipelines from its subscriptions: archives, models, lanes, displays.

Displays with the same archive share one `PipelineInstance` (its models and branch pool), and
displays with the same archive and crop share one `Lane` (one tracker, one cycle per vehicle).
All of it belongs to this one worker process: nothing here is shared with another camera.

Workers run ONNX only (a `.pt` is a pickle: loading one can run code from the archive). An
archive's packed `.onnx` files are used as they are; an archive holding only `.pt` files is
converted (in a confined child with torch's safe loader, `pipeline/export.py`) only where the
operator's `ModelPolicy` allows it. A display whose pipeline cannot be built is its own failure:
the others are built, and its error is reported (`Pipelines.errors`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config.spec import ModelPolicy, ModelRef, Subscription, WorkerSpec
from .gpu import gpu_memory_total_bytes
from .pipeline.actions import ActionRunner
from .pipeline.archive import ArchiveError, CachedArchive, acquire_archive, load_pipeline
from .pipeline.engine import Lane, PipelineInstance
from .pipeline.export import export_in_subprocess
from .pipeline.models import ModelLoadError, onnx_path
from .pipeline.outbox import Outbox
from .pipeline.schema import PipelineConfig, PipelineConfigError
from .pipeline.sessions import DisplaySession
from .pipeline.sinks import postgres_dsn, postgres_writer, redis_url, redis_writer
from .pipeline.stores import StoreWriter
from .pipeline.visits import LaneMemory
from .urls import mask_url

log = logging.getLogger(__name__)
Progress = Callable[[str, str], None]  # (phase, detail), e.g. ("converting", "car.mpta: 3 model(s)")
# What makes one display's pipeline unbuildable; anything else is a bug and stops the worker.
DISPLAY_ERRORS = (ArchiveError, ModelLoadError, PipelineConfigError, ValueError, OSError)


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
    errors: dict[str, str] = field(default_factory=dict)  # display id → why it cannot run
    archives: list[CachedArchive] = field(default_factory=list)  # held in use while these run

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
        for archive in self.archives:
            archive.close()
        self.closed = True


def prepare_onnx(model_dir: Path, config: PipelineConfig | None = None, *, url: str = "", sha256: str = "",
                 policy: ModelPolicy | None = None, on_progress: Progress | None = None) -> None:
    """Make sure every model of the archive has its `.onnx`: packed in the archive (preferred), or
    converted from its `.pt` in a confined child (torch never enters this process) when `policy`
    allows this archive (by URL prefix or digest). ArchiveError, naming what to set, otherwise."""
    config = config or load_pipeline(model_dir)
    models = [model_dir / node.model_file for node in config.pipeline.walk()]
    missing = [m for m in models if not onnx_path(m).is_file()]
    if not missing:
        return
    names = ", ".join(sorted({m.name for m in missing}))
    if policy is not None and not policy.may_convert(url, sha256):
        raise ArchiveError(
            f"{model_dir.name}: holds only .pt model files ({names}) and workers run ONNX only (a .pt is a "
            f"pickle that can run code); pack the .onnx exports into the archive (`make models` does), or let "
            f"workers convert it: add {sha256} to models.convert_pt_sha256 (or a prefix of its URL to "
            f"models.convert_pt_from) in the gateway settings (conf/gateway.yaml)")
    log.info("converting %s of %s to ONNX in a confined child (allowed by the model policy)", names, model_dir.name)
    if on_progress is not None:
        on_progress("converting", f"{model_dir.name}: {names}")
    export_in_subprocess(model_dir, on_progress=(lambda detail: on_progress("converting", detail))
                         if on_progress is not None else None)


def _pin(ref: ModelRef, policy: ModelPolicy) -> str | None:
    pin = ref.sha256 or policy.pinned_sha256.get(ref.url)
    if ref.sha256 and pin != policy.pinned_sha256.get(ref.url, pin):
        raise ArchiveError(f"{ref.url}: two different sha256 pins (the subscription's and models.pinned_sha256)")
    return pin


def _open_instance(spec: WorkerSpec, ref: ModelRef, on_progress: Progress | None
                   ) -> tuple[PipelineConfig, PipelineInstance, CachedArchive]:
    """Fetch (or find cached), check, convert if allowed, and load one archive's models."""
    backend = ref.backend or spec.inference.backend
    if backend != "onnx":
        raise ModelLoadError(f"backend {backend!r} loads .pt files with pickle (code from the archive); "
                             "workers run ONNX only: set inference.backend (and the model's backend) to onnx")
    if on_progress is not None:
        on_progress("fetching", mask_url(ref.url, hide_query=True))  # URLs carry credentials
    archive = acquire_archive(ref.url, spec.model_cache_dir, ref.id, sha256=_pin(ref, spec.model_policy),
                              on_progress=on_progress)
    try:
        config = load_pipeline(archive.directory)
        prepare_onnx(archive.directory, config, url=ref.url, sha256=archive.sha256, policy=spec.model_policy,
                     on_progress=on_progress)
        if on_progress is not None:
            on_progress("opening", config.pipeline.model_id)
        providers, gpu_limit = _device(spec)
        instance = PipelineInstance(config, archive.directory, backend=backend, threads=spec.inference.threads,
                                    providers=providers, gpu_memory_limit_bytes=gpu_limit)
    except BaseException:
        archive.close()
        raise
    log.info("pipeline %s loaded from %s (%s backend)", config.pipeline.model_id, archive.directory.name, backend)
    return config, instance, archive


def outbox_path(spec: WorkerSpec) -> Path:
    """The camera's durable outbox: <stores.outbox_dir or log.directory/outbox>/<slug>.sqlite."""
    return (spec.stores.outbox_dir or spec.log.directory / "outbox") / f"{spec.slug}.sqlite"


def open_outbox(spec: WorkerSpec) -> Outbox:
    """The camera's outbox; on one of several hosts (a placement epoch), mirrored to Redis and, after a
    move, taken over from the previous host (pipeline/handover.py). Raises `Fenced` for a stale copy."""
    logger = logging.getLogger("detector_worker.stores")
    outbox = Outbox(outbox_path(spec), int(spec.stores.outbox_quota_mb * 2**20), logger)
    url = spec.stores.redis_url or os.environ.get("REDIS_URL")
    if not spec.placement_epoch or not spec.fleet_id or not url:
        return outbox
    from .pipeline.handover import Fenced, OutboxReplica

    replica = OutboxReplica(url, spec.fleet_id, spec.slug, spec.placement_epoch, logger)
    try:
        moved = replica.claim()
    except Fenced:
        outbox.close()
        raise
    except Exception as err:  # Redis unreachable: start from the local outbox; the mirror catches up later
        logger.warning("outbox mirror: cannot claim this camera in Redis (%s): starting from the local outbox", err)
    else:
        if moved is not None:
            outbox.adopt(moved)
    outbox.replica = replica
    replica.attach(outbox)
    return outbox


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


def build_pipelines(spec: WorkerSpec, outbox: Outbox | None = None, on_progress: Progress | None = None) -> Pipelines:
    """With `outbox` (the worker's), store writers start only with `Pipelines.start()`, and session
    and lane state is restored from it. A display whose pipeline cannot be built is left out, its
    error in `Pipelines.errors` (logged once); when no display can run, the first error is raised
    (the worker then cannot start). `on_progress(phase, detail)` hears of fetches and conversions."""
    instances: dict[str, tuple[PipelineInstance, ActionRunner]] = {}
    failed: dict[str, Exception] = {}
    archives: list[CachedArchive] = []
    made: dict[str, StoreWriter[object, object]] = {}
    groups: dict[tuple[str, tuple[int, int, int, int] | None], LaneGroup] = {}
    errors: dict[str, str] = {}
    for sub in spec.subscriptions:
        key = f"{sub.model.id}|{sub.model.url}"
        if key not in instances and key not in failed:
            try:
                config, instance, archive = _open_instance(spec, sub.model, on_progress)
            except DISPLAY_ERRORS as err:
                failed[key] = err
            else:
                archives.append(archive)
                redis, pg = _store_writers(config, spec, outbox, made)
                instances[key] = (instance, ActionRunner(config.pipeline, redis, pg,  # type: ignore[arg-type]
                                                         logging.getLogger("detector_worker.actions")))
        if key in failed:
            errors[sub.display_id] = str(failed[key])
            continue
        instance, actions = instances[key]
        crop = sub.crop.box if sub.crop else None
        group = groups.get((key, crop))
        if group is None:
            lane = Lane(instance, crop, motion=spec.motion)
            memory = None if outbox is None else LaneMemory(
                outbox, spec.camera_id, f"{sub.model.id}|{sub.model.url}|{crop}", lane,
                logging.getLogger("detector_worker.sessions"))
            group = groups[(key, crop)] = LaneGroup(lane, memory=memory)
        group.displays.append(_display(spec, sub, instance, actions, outbox))
    if failed and not instances:
        for archive in archives:
            archive.close()
        raise next(iter(failed.values()))  # the worker's one "cannot start" line
    for display_id, error in errors.items():
        log.error("display %s cannot start: %s (the camera's other displays run)", display_id, error)
    return Pipelines([i for i, _ in instances.values()], list(made.values()), list(groups.values()), errors=errors,
                     archives=archives)


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
