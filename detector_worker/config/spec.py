"""What one camera worker runs: its spec, parsed once into typed, validated settings.

The gateway writes a spec file per camera (mode 0600: source URLs may carry credentials, so
they never appear on a command line or in a supervisord file). Hand-run cameras come from an
entry in `cameras.yaml` instead (see `cameras_file.py`); both end up as a `WorkerSpec`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..naming import camera_slug


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(_Strict):
    kind: Literal["rtsp", "snapshot", "file"]
    url: str = Field(min_length=1, max_length=4096)
    snapshot_interval_ms: int = Field(5000, ge=100, le=3_600_000)
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters")
        return value


class Crop(_Strict):
    x1: int = Field(ge=0)
    y1: int = Field(ge=0)
    x2: int = Field(gt=0)
    y2: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Crop:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("crop needs x1 < x2 and y1 < y2")
        return self


class ModelRef(_Strict):
    url: str = Field(min_length=1, max_length=4096)  # .mpta: http(s)://, file:// or a local path
    id: int | str | None = None
    name: str | None = Field(None, max_length=256)
    backend: Literal["onnx", "ultralytics"] | None = None  # this pipeline's own choice; else the worker's


class Subscription(_Strict):
    """One display watching this camera."""

    subscription_identifier: str = Field(min_length=1, max_length=512)
    display_id: str = Field(min_length=1, max_length=256)
    model: ModelRef
    crop: Crop | None = None


class BackoffSettings(_Strict):
    initial_s: float = Field(0.5, gt=0, le=60)
    max_s: float = Field(30.0, gt=0, le=600)


class BusSettings(_Strict):
    push_endpoint: str = "tcp://127.0.0.1:5601"  # the gateway's PULL socket
    control_endpoint: str = "tcp://127.0.0.1:5602"  # the gateway's ROUTER socket
    send_hwm: int = Field(1000, ge=1, le=1_000_000)
    heartbeat_interval_s: float = Field(2.0, gt=0, le=60)
    status_interval_s: float = Field(5.0, gt=0, le=300)
    snapshot_interval_s: float = Field(5.0, gt=0, le=3600)  # latest frame to the gateway, as a small JPEG


class InferenceSettings(_Strict):
    backend: Literal["onnx", "ultralytics"] = "onnx"
    threads: int = Field(1, ge=1, le=64)
    device: Literal["cpu", "cuda"] = "cpu"


class ResourceLimits(_Strict):
    memory_per_process_mb: int = Field(2048, ge=64)
    gpu_memory_fraction: float = Field(0.3, gt=0, le=1)


class LogSettings(_Strict):
    directory: Path = Path("logs")
    max_mb: float = Field(100, gt=0)
    backups: int = Field(5, ge=0, le=100)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class StoreOverrides(_Strict):
    """Deployment-side connection settings that win over an archive's own (no secrets in archives)."""

    redis_url: str | None = None
    database_url: str | None = None


class WorkerSpec(_Strict):
    camera_id: str = Field(min_length=1, max_length=256)
    source: SourceSettings
    subscriptions: list[Subscription] = Field(default_factory=list)
    max_fps: float | None = Field(None, gt=0, le=120)
    stall_timeout_s: float = Field(10.0, gt=0, le=600)
    backoff: BackoffSettings = BackoffSettings()
    bus: BusSettings = BusSettings()
    inference: InferenceSettings = InferenceSettings()
    resource_limits: ResourceLimits = ResourceLimits()
    log: LogSettings = LogSettings()
    stores: StoreOverrides = StoreOverrides()
    model_cache_dir: Path = Path("build/model-cache")

    @property
    def slug(self) -> str:
        return camera_slug(self.camera_id)

    @model_validator(mode="after")
    def _unique_displays(self) -> WorkerSpec:
        ids = [s.subscription_identifier for s in self.subscriptions]
        if len(ids) != len(set(ids)):
            raise ValueError("subscription identifiers must be unique")
        return self


class SpecError(Exception):
    """A spec that cannot be used; the message is one line naming the file and the field."""


def describe_validation_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {where}: {first['msg']}{more}"


def read_yaml_file(path: Path) -> Any:
    """A YAML (or JSON) file's content; SpecError with one line naming the file when it can't be read."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None


def load_spec(path: Path) -> WorkerSpec:
    """Read a spec file (JSON or YAML) written by the gateway."""
    data = read_yaml_file(path)
    try:
        return WorkerSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, str(path))) from None
