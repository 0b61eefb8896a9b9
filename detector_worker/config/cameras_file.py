"""`cameras.yaml`: statically configured cameras, edited by people.

Parsed once into typed objects; unknown keys are rejected and every error names the camera and
the field (`cameras.cam-001.source.url: ...`). Each camera turns into the same `WorkerSpec` the
gateway writes for the backend's cameras, so a hand-run camera behaves exactly like the rest.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .spec import (
    BackoffSettings,
    BusSettings,
    Crop,
    InferenceSettings,
    LogSettings,
    ModelRef,
    ResourceLimits,
    SourceSettings,
    SpecError,
    StoreOverrides,
    Subscription,
    WorkerSpec,
    describe_validation_error,
    read_yaml_file,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraDefaults(_Strict):
    pipeline: str | None = None  # .mpta path or URL
    model_id: int | str | None = None
    model_name: str | None = None
    max_fps: float | None = Field(None, gt=0, le=120)
    stall_timeout_s: float = Field(10.0, gt=0, le=600)
    backoff: BackoffSettings = BackoffSettings()
    inference: InferenceSettings = InferenceSettings()
    resource_limits: ResourceLimits = ResourceLimits()


class CameraEntry(_Strict):
    source: SourceSettings
    displays: list[str] = Field(min_length=1)
    pipeline: str | None = None
    model_id: int | str | None = None
    model_name: str | None = None
    crop: Crop | None = None
    max_fps: float | None = Field(None, gt=0, le=120)
    stall_timeout_s: float | None = Field(None, gt=0, le=600)
    inference: InferenceSettings | None = None
    resource_limits: ResourceLimits | None = None

    @field_validator("displays")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("display ids must be unique")
        if any(not d or ";" in d for d in value):
            raise ValueError("display ids must be non-empty and contain no ';'")
        return value


class CamerasFile(_Strict):
    defaults: CameraDefaults = CameraDefaults()
    cameras: dict[str, CameraEntry] = Field(default_factory=dict)

    @field_validator("cameras")
    @classmethod
    def _names(cls, value: dict[str, CameraEntry]) -> dict[str, CameraEntry]:
        for name in value:
            if not name or ";" in name or len(name) > 128:
                raise ValueError(f"camera name {name!r} must be 1-128 characters without ';'")
        return value

    def worker_spec(self, name: str, *, bus: BusSettings = BusSettings(), log: LogSettings = LogSettings(),
                    stores: StoreOverrides = StoreOverrides(), model_cache_dir: Path = Path("build/model-cache"),
                    base_dir: Path = Path(".")) -> WorkerSpec:
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
        model = ModelRef(url=pipeline, id=cam.model_id or d.model_id, name=cam.model_name or d.model_name)
        source = cam.source
        if source.kind == "file" and "://" not in source.url and not Path(source.url).is_absolute():
            source = source.model_copy(update={"url": str((base_dir / source.url).resolve())})
        return WorkerSpec(
            camera_id=name, source=source,
            subscriptions=[Subscription(subscription_identifier=f"{display};{name}", display_id=display,
                                        model=model, crop=cam.crop) for display in cam.displays],
            max_fps=cam.max_fps if cam.max_fps is not None else d.max_fps,
            stall_timeout_s=cam.stall_timeout_s or d.stall_timeout_s, backoff=d.backoff, bus=bus,
            inference=cam.inference or d.inference, resource_limits=cam.resource_limits or d.resource_limits,
            log=log, stores=stores, model_cache_dir=model_cache_dir,
        )


def load_cameras_file(path: Path) -> CamerasFile:
    data = read_yaml_file(path) or {}
    try:
        return CamerasFile.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, str(path))) from None
