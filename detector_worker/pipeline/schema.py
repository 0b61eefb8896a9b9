"""`pipeline.json` of a `.mpta` archive: the backend's format, validated in full before use.

Every node key of the format is known here; an unknown key, a wrong type, a missing model
file or a template that names an unknown variable or branch is one `PipelineConfigError`
whose message names the key and its path in the tree, e.g.
`pipeline.branches[1].resizeTarget: ...`. A key that means something at one level only (the
root detector's `tracking`, `stabilityThreshold`, `multiClass`, `expectedClasses`; a classifier
branch's `crop`, `cropClass`, `resizeTarget`, `parallel`, `resultRole`) is refused at the other
level rather than silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..config.base import StrictModel, describe_validation_error

DEFAULT_MIN_CONFIDENCE = 0.5
# Variables every action template may use; branch results are `{<modelId>.<field>}`.
CONTEXT_VARIABLES = frozenset({
    "display_id", "session_id", "camera_id", "subscription_id", "timestamp", "filename", "image_key",
    "model_id", "model_name", "track_id", "class", "confidence", "progression_stage",
})
BRANCH_FIELDS = frozenset({"class", "label", "confidence", "brand", "body_type"})
# What a classifier's result means to the backend: `VehicleResult.brand`/`body_type`, and the
# `{<modelId>.brand}`/`{<modelId>.body_type}` template aliases of its class.
ResultRole = Literal["brand", "body_type"]
RESULT_ROLES: tuple[ResultRole, ...] = ("brand", "body_type")
# `{name}` or `{modelId.field}`; other braces (a JSON message template's own) are literal text
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_][A-Za-z0-9_.-]*)\}")


class PipelineConfigError(ValueError):
    """An archive's pipeline.json cannot be used; the message names the key and its path."""


class _Strict(StrictModel):
    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True)  # camelCase keys or our names


class RedisConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    password: str | None = None
    db: int = Field(0, ge=0)


class PostgresConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    database: str
    username: str | None = None
    password: str | None = None


class RedisSaveImage(_Strict):
    type: Literal["redis_save_image"]
    region: str
    key: str = Field(min_length=1)
    expire_seconds: int | None = Field(None, ge=1)
    format: Literal["jpeg", "png"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)


class RedisPublish(_Strict):
    type: Literal["redis_publish"]
    channel: str = Field(min_length=1)
    message: str


class PostgresUpdateCombined(_Strict):
    type: Literal["postgresql_update_combined"]
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    key_field: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    key_value: str
    wait_for_branches: list[str] = Field(default_factory=list, alias="waitForBranches")
    fields: dict[str, str]

    @field_validator("fields")
    @classmethod
    def _column_names(cls, value: dict[str, str]) -> dict[str, str]:
        for column in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", column):
                raise ValueError(f"column name {column!r} is not a plain SQL identifier")
        return value


Action = Annotated[RedisSaveImage | RedisPublish | PostgresUpdateCombined, Field(discriminator="type")]


class Tracking(_Strict):
    """The root node's vehicle tracker. It cannot be turned off: a detection cycle runs once per
    tracked, stable vehicle, so `enabled` is accepted only as true (and `tracking: true` means the
    defaults)."""

    enabled: Literal[True] = True
    iou_threshold: float = Field(0.3, gt=0, lt=1, alias="iouThreshold")
    max_age: int = Field(10, ge=1, alias="maxAge")  # frames a track survives unseen


# Keys that mean something at one level of the tree only: elsewhere they are refused, not ignored.
_ROOT_ONLY = {"stability_threshold": "stabilityThreshold", "multi_class": "multiClass",
              "expected_classes": "expectedClasses", "tracking": "tracking"}
_BRANCH_ONLY = {"crop": "crop", "crop_class": "cropClass", "resize_target": "resizeTarget", "parallel": "parallel",
                "result_role": "resultRole"}


def guess_role(model_id: str) -> ResultRole | None:
    """The role an archive without `resultRole` gets from its modelId's words (the old rule)."""
    lowered = model_id.lower()
    if "brand" in lowered:
        return "brand"
    if "bodytype" in lowered or "body_type" in lowered:
        return "body_type"
    return None


class Node(_Strict):
    model_id: str = Field(alias="modelId", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    model_file: str = Field(alias="modelFile", min_length=1, max_length=256)
    crop: bool
    trigger_classes: list[str] = Field(alias="triggerClasses")
    branches: list[Node]
    min_confidence: float | None = Field(None, ge=0, le=1, alias="minConfidence")
    multi_class: bool = Field(False, alias="multiClass")
    expected_classes: list[str] = Field(default_factory=list, alias="expectedClasses")
    actions: list[Action] = Field(default_factory=list)
    parallel_actions: list[Action] = Field(default_factory=list, alias="parallelActions")
    crop_class: str | None = Field(None, alias="cropClass")
    resize_target: tuple[int, int] | None = Field(None, alias="resizeTarget")
    parallel: bool = False
    tracking: Tracking | None = None  # the root's only (see _check_semantics)
    result_role: ResultRole | None = Field(None, alias="resultRole")
    stability_threshold: int | None = Field(None, ge=1, le=10_000, alias="stabilityThreshold")

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            raise ValueError("tracking cannot be turned off: a detection cycle runs once per tracked vehicle "
                             "(remove the key, or give {\"iouThreshold\": ..., \"maxAge\": ...})")
        return value

    @field_validator("model_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith(".") or "\x00" in value:
            raise ValueError("must be a plain file name inside the archive")
        return value

    @field_validator("resize_target")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(1 <= v <= 4096 for v in value):
            raise ValueError("both sizes must be between 1 and 4096")
        return value

    @property
    def confidence_floor(self) -> float:
        """minConfidence, where a missing or null value means the default (never a crash)."""
        return DEFAULT_MIN_CONFIDENCE if self.min_confidence is None else self.min_confidence

    def walk(self) -> list[Node]:
        nodes = [self]
        for branch in self.branches:
            nodes.extend(branch.walk())
        return nodes


class PipelineConfig(_Strict):
    redis: RedisConfig | None = None
    postgresql: PostgresConfig | None = None
    pipeline: Node

    def result_roles(self) -> dict[str, tuple[ResultRole, bool]]:
        """modelId → (role, guessed) of every classifier branch that has a result role.

        A node's `resultRole` decides; a node without one (archives made before the key) gets the
        role its modelId's words suggest, unless another node claims that role explicitly.
        """
        branches = self.pipeline.walk()[1:]
        roles = {n.model_id: (n.result_role, False) for n in branches if n.result_role is not None}
        claimed = {role for role, _ in roles.values()}
        for node in branches:
            guess = guess_role(node.model_id) if node.result_role is None else None
            if guess is not None and guess not in claimed:
                roles[node.model_id] = (guess, True)
        return roles


# union member tags pydantic adds to error locations: not keys of pipeline.json
_UNION_TAGS = frozenset({"redis_save_image", "redis_publish", "postgresql_update_combined", "Node", "Tracking"})


def placeholders(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


def _templates(action: RedisSaveImage | RedisPublish | PostgresUpdateCombined) -> dict[str, str]:
    if isinstance(action, RedisSaveImage):
        return {"key": action.key}
    if isinstance(action, RedisPublish):
        return {"channel": action.channel, "message": action.message}
    return {"key_value": action.key_value, **{f"fields.{k}": v for k, v in action.fields.items()}}


def _check_semantics(config: PipelineConfig, model_dir: Path | None) -> None:
    nodes = config.pipeline.walk()
    ids = [n.model_id for n in nodes]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise PipelineConfigError(f"pipeline: modelId {sorted(dupes)[0]!r} is used by more than one node")
    known = set(ids)
    for name, key in _BRANCH_ONLY.items():  # the root detector sees the whole (lane's) frame, always first
        if getattr(config.pipeline, name) not in (None, False):
            raise PipelineConfigError(f"pipeline.{key}: the root node is the detector; {key} is for classifier "
                                      f"branches (remove it here)")
    for role in RESULT_ROLES:
        holders = [n.model_id for n in nodes if n.result_role == role]
        if len(holders) > 1:
            raise PipelineConfigError(f"pipeline: resultRole {role!r} is given to more than one node "
                                      f"({', '.join(holders)})")
    roles = {model_id: role for model_id, (role, _) in config.result_roles().items()}

    def check(node: Node, where: str) -> None:
        if model_dir is not None and not (model_dir / node.model_file).is_file():
            raise PipelineConfigError(f"{where}.modelFile: {node.model_file!r} is not in the archive")
        if where != "pipeline":
            for name, key in _ROOT_ONLY.items():
                if getattr(node, name) not in (None, False, []):
                    raise PipelineConfigError(f"{where}.{key}: only the root node tracks vehicles and decides when "
                                              f"they are stable; remove it here")
        if node.crop and node.crop_class is None and where != "pipeline":
            raise PipelineConfigError(f"{where}.cropClass: required when crop is true")
        for group in ("actions", "parallelActions"):
            for i, action in enumerate(node.actions if group == "actions" else node.parallel_actions):
                for key, template in _templates(action).items():
                    for name in placeholders(template):
                        if "." in name:
                            branch, _, field = name.rpartition(".")
                            if branch not in known:
                                raise PipelineConfigError(
                                    f"{where}.{group}[{i}].{key}: template names unknown branch {branch!r}")
                            if field not in BRANCH_FIELDS:
                                raise PipelineConfigError(
                                    f"{where}.{group}[{i}].{key}: unknown field {field!r} of branch {branch!r} "
                                    f"(known: {', '.join(sorted(BRANCH_FIELDS))})")
                            if field in RESULT_ROLES and roles.get(branch) != field:
                                raise PipelineConfigError(
                                    f"{where}.{group}[{i}].{key}: {{{name}}} needs branch {branch!r} to have "
                                    f"\"resultRole\": \"{field}\"")
                        elif name not in CONTEXT_VARIABLES:
                            raise PipelineConfigError(f"{where}.{group}[{i}].{key}: unknown template variable "
                                                      f"{{{name}}} (known: {', '.join(sorted(CONTEXT_VARIABLES))})")
                if isinstance(action, PostgresUpdateCombined):
                    for branch in action.wait_for_branches:
                        if branch not in known:
                            raise PipelineConfigError(
                                f"{where}.{group}[{i}].waitForBranches: unknown branch {branch!r}")
        for j, child in enumerate(node.branches):
            check(child, f"{where}.branches[{j}]")

    check(config.pipeline, "pipeline")


def parse_pipeline(data: Any, model_dir: Path | None = None) -> PipelineConfig:
    """Validate a decoded pipeline.json; with `model_dir`, also that every modelFile exists there."""
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise PipelineConfigError(describe_validation_error(err, skip=_UNION_TAGS)) from None
    _check_semantics(config, model_dir)
    return config
