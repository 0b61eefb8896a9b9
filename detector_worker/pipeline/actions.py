"""Turning a vehicle's cycle into store writes, under the session id it belongs to.

Actions of every node run (the root's and every branch's: the original silently skipped those
on branches), in tree order, `actions` before `parallelActions`, so an image saved by the root
is known as `{image_key}` to the actions after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2

from .engine import VehicleCycle
from .schema import Node, PostgresUpdateCombined, RedisPublish, RedisSaveImage
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


class ActionRunner:
    def __init__(self, root: Node, redis: StoreWriter[object, RedisWrite] | None,
                 postgres: StoreWriter[object, Upsert] | None, log: logging.Logger) -> None:
        self.root = root
        self.redis = redis
        self.postgres = postgres
        self.log = log
        self.failed = 0  # actions that could not be turned into a write (bad template, no crop, ...)

    def write(self, cycle: VehicleCycle, ctx: WriteContext) -> str | None:
        """Queue every action's write for this cycle; returns the saved image's key, if any."""
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
                    self._one(action, cycle, context, branches)
                except (TemplateError, ValueError) as err:
                    self.failed += 1
                    self.log.error("action %s of %s skipped: %s", action.type, node.model_id, err)
        key = context["image_key"]
        return key if isinstance(key, str) else None

    def _one(self, action: RedisSaveImage | RedisPublish | PostgresUpdateCombined, cycle: VehicleCycle,
             context: dict[str, object], branches: dict[str, dict[str, object]]) -> None:
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
            self.redis.submit(SaveImage(key, buf.tobytes(), action.expire_seconds))
            context["image_key"] = key
        elif isinstance(action, RedisPublish):
            if self.redis is None:
                raise ValueError("no Redis configured")
            self.redis.submit(Publish(fill(action.channel, context, branches),
                                      fill_json(action.message, context, branches)))
        else:
            if self.postgres is None:
                raise ValueError("no PostgreSQL configured")
            missing = [b for b in action.wait_for_branches if b not in cycle.branches]
            if missing:
                raise ValueError(f"waits for branches without a result: {', '.join(missing)}")
            fields = {col: fill(tpl, context, branches) or None for col, tpl in action.fields.items()}
            self.postgres.submit(Upsert(action.table, action.key_field, fill(action.key_value, context, branches),
                                        str(context["display_id"]), cycle.captured_at, fields))
