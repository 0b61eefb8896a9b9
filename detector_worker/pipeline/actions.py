"""Turning a vehicle's cycle into store writes, under the session id it belongs to.

Actions of every node run (the root's and every branch's: the original silently skipped those
on branches), in tree order, `actions` before `parallelActions`, so an image saved by the root
is known as `{image_key}` to the actions after it.

Each write gets an idempotency key derived from (camera, display, session, vehicle visit, action):
the outbox never holds it twice, and a publish is sent at most once per key, so a replay
changes nothing. The archive only names tables, columns and key templates (`check_targets`);
which servers they live on is the operator's choice (sinks.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2

from .engine import VehicleCycle
from .schema import CONTEXT_VARIABLES, Node, PipelineConfigError, PostgresUpdateCombined, RedisPublish, RedisSaveImage
from .schema import placeholders as template_placeholders
from .sinks import Publish, RedisWrite, SaveImage, Upsert
from .stores import StoreWriter
from .templates import TemplateError, fill, fill_json


@dataclass(frozen=True)
class WriteContext:
    camera_id: str
    display_id: str
    subscription_id: str
    session_id: int | str  # as the backend sent it; templates get its text
    model_id: int | str
    model_name: str
    progression_stage: str | None


def compact_timestamp(epoch: float) -> str:
    """UTC time safe inside a Redis key: 20250714T123456789Z."""
    t = datetime.fromtimestamp(epoch, UTC)
    return t.strftime("%Y%m%dT%H%M%S") + f"{t.microsecond // 1000:03d}Z"


def visit_id(cycle: VehicleCycle) -> str:
    """The vehicle visit a cycle belongs to: when it became stable, and its track then."""
    return f"{compact_timestamp(cycle.captured_at)}-{cycle.track_id}"


SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_targets(root: Node) -> None:
    """What an archive may name in the stores: plain lower-case tables and columns, and key,
    channel and message templates made only of known placeholders. Raises PipelineConfigError."""
    for node in root.walk():
        for i, action in enumerate([*node.actions, *node.parallel_actions]):
            where = f"{node.model_id}: action {i} ({action.type})"
            if isinstance(action, PostgresUpdateCombined):
                for what, name in [("table", action.table), ("key_field", action.key_field),
                                   *(("column", c) for c in action.fields)]:
                    if not SQL_NAME.fullmatch(name):
                        raise PipelineConfigError(f"{where}: {what} {name!r} must match [a-z_][a-z0-9_]{{0,62}}")
                templates = [action.key_value, *action.fields.values()]
            elif isinstance(action, RedisSaveImage):
                templates = [action.key]
            else:
                templates = [action.channel, action.message]
            for template in templates:
                for name in template_placeholders(template):
                    if "." not in name and name not in CONTEXT_VARIABLES:
                        raise PipelineConfigError(f"{where}: unknown placeholder {{{name}}}")


@dataclass(frozen=True)
class Staged:
    """One store write of a cycle, with its idempotency key, not yet in the outbox."""

    writer: StoreWriter[object, object]
    write: object
    ikey: str


class ActionRunner:
    def __init__(self, root: Node, redis: StoreWriter[object, RedisWrite] | None,
                 postgres: StoreWriter[object, Upsert] | None, log: logging.Logger) -> None:
        check_targets(root)
        self.root = root
        self.redis = redis
        self.postgres = postgres
        self.log = log
        self.failed = 0  # actions that could not be turned into a write (bad template, no crop, ...)

    def write(self, cycle: VehicleCycle, ctx: WriteContext) -> str | None:
        """Append every action's write for this cycle to the outbox; returns the saved image's key, if any."""
        key, staged = self.plan(cycle, ctx)
        for s in staged:
            if not s.writer.submit(s.write, s.ikey):
                self.failed += 1
        return key

    def plan(self, cycle: VehicleCycle, ctx: WriteContext) -> tuple[str | None, list[Staged]]:
        """Every action's write for this cycle, in order, keyed by (camera, display, session, visit, action)."""
        prefix = f"{ctx.camera_id}/{ctx.display_id}/{ctx.session_id}/{visit_id(cycle)}"
        staged: list[Staged] = []
        stamp = compact_timestamp(cycle.captured_at)
        context: dict[str, object] = {
            "camera_id": ctx.camera_id, "display_id": ctx.display_id, "subscription_id": ctx.subscription_id,
            "session_id": str(ctx.session_id), "model_id": str(ctx.model_id), "model_name": ctx.model_name,
            "progression_stage": ctx.progression_stage, "timestamp": stamp, "track_id": cycle.track_id,
            "filename": f"{cycle.track_id}_{stamp}.jpg", "image_key": None,
            "class": cycle.vehicle_class, "confidence": round(cycle.detections[cycle.vehicle_class].confidence, 4),
        }
        branches = cycle.field_values()
        for node in self.root.walk():
            if node is not self.root and node.model_id not in cycle.branches:
                continue  # a branch that did not run has no actions to run
            for action in [*node.actions, *node.parallel_actions]:
                try:
                    made = self._one(action, cycle, context, branches, f"{prefix}/{len(staged)}")
                    if made is not None:
                        staged.append(made)
                except (TemplateError, ValueError) as err:
                    self.failed += 1
                    self.log.error("action %s of %s skipped: %s", action.type, node.model_id, err)
        key = context["image_key"]
        return (key if isinstance(key, str) else None), staged

    def _one(self, action: RedisSaveImage | RedisPublish | PostgresUpdateCombined, cycle: VehicleCycle,
             context: dict[str, object], branches: dict[str, dict[str, object]], ikey: str) -> Staged:
        writer: StoreWriter[object, object]
        if isinstance(action, RedisSaveImage):
            if self.redis is None:
                raise ValueError("no Redis configured")
            image = cycle.crops.get(action.region)
            if image is None or image.size == 0:
                raise ValueError(f"no {action.region!r} region in this cycle")
            if action.format == "jpeg":
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, action.quality])
            else:
                ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            if not ok:
                raise ValueError("image encoding failed")
            if action.format == "png":
                context["filename"] = str(context["filename"]).removesuffix(".jpg") + ".png"
            key = fill(action.key, context, branches)
            context["image_key"] = key
            writer = self.redis  # type: ignore[assignment]
            return Staged(writer, SaveImage(key, buf.tobytes(), action.expire_seconds), ikey)
        if isinstance(action, RedisPublish):
            if self.redis is None:
                raise ValueError("no Redis configured")
            writer = self.redis  # type: ignore[assignment]
            return Staged(writer, Publish(fill(action.channel, context, branches),
                                          fill_json(action.message, context, branches), ikey), ikey)
        else:
            if self.postgres is None:
                raise ValueError("no PostgreSQL configured")
            missing = [b for b in action.wait_for_branches if b not in cycle.branches]
            if missing:
                raise ValueError(f"waits for branches without a result: {', '.join(missing)}")
            fields = {col: fill(tpl, context, branches) or None for col, tpl in action.fields.items()}
            writer = self.postgres  # type: ignore[assignment]
            return Staged(writer, Upsert(action.table, action.key_field, fill(action.key_value, context, branches),
                                         str(context["display_id"]), cycle.captured_at, fields), ikey)
