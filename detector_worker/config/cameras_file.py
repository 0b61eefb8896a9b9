"""`cameras.yaml`: statically configured cameras, edited by people.

Parsed once into typed objects; unknown keys are rejected and every error names the camera and
the field (`cameras.cam-001.source.url: ...`). Each camera turns into the same `WorkerSpec` the
gateway writes for the backend's cameras, so a hand-run camera behaves exactly like the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator

from .. import limits
from .base import SpecError, StrictModel, describe_validation_error, read_yaml_file
from .fields import CameraId, DisplayId, ModelId
from .spec import (
    BackoffSettings,
    BusSettings,
    Crop,
    InferenceSettings,
    LogSettings,
    ModelPolicy,
    ModelRef,
    MotionSettings,
    ResourceLimits,
    Sha256,
    SourceSettings,
    StoreOverrides,
    Subscription,
    WorkerSpec,
)


class CameraDefaults(StrictModel):
    pipeline: str | None = None  # .mpta path or URL
    pipeline_sha256: Sha256 | None = None  # pin: the archive must have this digest
    model_id: ModelId | None = None
    model_name: str | None = None
    max_fps: float | None = Field(None, gt=0, le=120)
    stall_timeout_s: float = Field(10.0, gt=0, le=600)
    backoff: BackoffSettings = BackoffSettings()
    inference: InferenceSettings = InferenceSettings()
    motion: MotionSettings = MotionSettings()
    resource_limits: ResourceLimits = ResourceLimits()


class CameraEntry(StrictModel):
    source: SourceSettings
    displays: list[DisplayId] = Field(min_length=1, max_length=limits.MAX_DISPLAYS_PER_CAMERA)
    pipeline: str | None = None
    pipeline_sha256: Sha256 | None = None
    model_id: ModelId | None = None
    model_name: str | None = None
    crop: Crop | None = None
    max_fps: float | None = Field(None, gt=0, le=120)
    stall_timeout_s: float | None = Field(None, gt=0, le=600)
    inference: InferenceSettings | None = None
    motion: MotionSettings | None = None  # the whole block replaces defaults.motion
    resource_limits: ResourceLimits | None = None
    # With several worker hosts: the labels the camera's host must have (e.g. [gpu]); gateway/hosts
    host_labels: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]] = Field(default_factory=list,
                                                                                          max_length=32)

    @field_validator("displays")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("display ids must be unique")
        return value


class CamerasFile(StrictModel):
    defaults: CameraDefaults = CameraDefaults()
    cameras: dict[CameraId, CameraEntry] = Field(default_factory=dict)

    def worker_spec(self, name: str, *, bus: BusSettings = BusSettings(), log: LogSettings = LogSettings(),
                    stores: StoreOverrides = StoreOverrides(), model_cache_dir: Path = Path("build/model-cache"),
                    model_policy: ModelPolicy | None = None, base_dir: Path = Path(".")) -> WorkerSpec:
        """The spec of camera `name`, defaults applied; relative pipeline paths resolve against base_dir."""
        try:
            cam = self.cameras[name]
        except KeyError:
            raise SpecError(f"cameras.yaml: no camera named {name!r}") from None
        d = self.defaults
        pipeline = cam.pipeline or d.pipeline
        if pipeline is None:
            raise SpecError(f"cameras.{name}.pipeline: required (here or in defaults.pipeline)")
        if "://" not in pipeline and not Path(pipeline).is_absolute():
            pipeline = str((base_dir / pipeline).resolve())
        # a camera's own pipeline takes its own pin only; the defaults' pin goes with the defaults' pipeline
        pin = cam.pipeline_sha256 if cam.pipeline else d.pipeline_sha256
        model = ModelRef(url=pipeline, id=cam.model_id or d.model_id, name=cam.model_name or d.model_name, sha256=pin)
        source = cam.source
        if source.kind == "file" and "://" not in source.url and not Path(source.url).is_absolute():
            source = source.model_copy(update={"url": str((base_dir / source.url).resolve())})
        return WorkerSpec(
            camera_id=name, source=source,
            subscriptions=[Subscription(subscription_identifier=f"{display};{name}", source=source,
                                        model=model, crop=cam.crop) for display in cam.displays],
            max_fps=cam.max_fps if cam.max_fps is not None else d.max_fps,
            stall_timeout_s=cam.stall_timeout_s or d.stall_timeout_s, backoff=d.backoff, bus=bus,
            inference=cam.inference or d.inference, motion=cam.motion or d.motion,
            resource_limits=cam.resource_limits or d.resource_limits,
            log=log, stores=stores, model_cache_dir=model_cache_dir, model_policy=model_policy or ModelPolicy(),
        )


def load_cameras_file(path: Path) -> CamerasFile:
    data = read_yaml_file(path) or {}
    try:
        return CamerasFile.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, str(path))) from None
