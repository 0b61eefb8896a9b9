"""What one camera worker runs: its spec, parsed once into typed, validated settings.

The gateway writes a spec file per camera (mode 0600: source URLs may carry credentials, so
they never appear on a command line or in a supervisord file). Hand-run cameras come from an
entry in `cameras.yaml` instead (see `cameras_file.py`); both end up as a `WorkerSpec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from .. import limits
from ..naming import camera_slug
from .base import SpecError, StrictModel, describe_validation_error, read_yaml_file
from .fields import CameraId, ModelId, SubscriptionIdentifier, check_printable, split_subscription_identifier

__all__ = ["SpecError"]  # raised by load_spec


class SourceSettings(StrictModel):
    """Where a camera's frames come from; one per camera, whoever asked for it."""

    kind: Literal["rtsp", "snapshot", "file"]
    url: str = Field(min_length=1, max_length=limits.MAX_URL)
    snapshot_interval_ms: int = Field(5000, ge=limits.MIN_SNAPSHOT_INTERVAL_MS, le=limits.MAX_SNAPSHOT_INTERVAL_MS)
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _printable(cls, value: str) -> str:
        check_printable(value)
        return value

    def same_stream(self, other: SourceSettings) -> bool:
        """One stream per camera: two sources with the same kind and URL are one connection."""
        return (self.kind, self.url) == (other.kind, other.url)


class Crop(StrictModel):
    """The part of the frame to analyse, in pixels. `x2`/`y2` None: to the frame's right/bottom edge
    (the backend's older `cropX`/`cropY` give only the top-left corner)."""

    x1: int = Field(ge=0, le=limits.MAX_CROP_COORD)
    y1: int = Field(ge=0, le=limits.MAX_CROP_COORD)
    x2: int | None = Field(None, gt=0, le=limits.MAX_CROP_COORD)
    y2: int | None = Field(None, gt=0, le=limits.MAX_CROP_COORD)

    @model_validator(mode="after")
    def _ordered(self) -> Crop:
        if (self.x2 is None) != (self.y2 is None):
            raise ValueError("crop needs both x2 and y2, or neither")
        if self.x2 is not None and self.y2 is not None and (self.x2 <= self.x1 or self.y2 <= self.y1):
            raise ValueError("crop needs x1 < x2 and y1 < y2")
        return self

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2); an open edge is past any frame (cropping clips to the frame)."""
        edge = limits.MAX_CROP_COORD + 1
        return (self.x1, self.y1, self.x2 if self.x2 is not None else edge,
                self.y2 if self.y2 is not None else edge)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ModelRef(StrictModel):
    url: str = Field(min_length=1, max_length=limits.MAX_URL)  # .mpta: http(s)://, file:// or a local path
    id: ModelId | None = None  # kept with the type it came with: the backend gets it back as it sent it
    name: str | None = Field(None, max_length=limits.MAX_MODEL_NAME)
    sha256: Sha256 | None = None  # when set, the archive must have exactly this digest (pinned by the operator)
    backend: Literal["onnx", "ultralytics"] | None = None  # this pipeline's own choice; else the worker's


class Subscription(StrictModel):
    """One display watching one camera through one pipeline.

    The same object from the edge where it is parsed (the backend's message, a cameras.yaml
    entry) to the worker that runs it; `source` is what this subscription asked for (the camera's
    worker reads one stream, `WorkerSpec.source`, for all its displays)."""

    subscription_identifier: SubscriptionIdentifier
    source: SourceSettings
    model: ModelRef
    crop: Crop | None = None

    @property
    def display_id(self) -> str:
        return split_subscription_identifier(self.subscription_identifier)[0]

    @property
    def camera_id(self) -> str:
        return split_subscription_identifier(self.subscription_identifier)[1]


class BackoffSettings(StrictModel):
    initial_s: float = Field(0.5, gt=0, le=60)
    max_s: float = Field(30.0, gt=0, le=600)


RUN_DIR = Path(__file__).resolve().parents[2] / "run"  # the project's run/ (0700): sockets, specs
_IPC_PATH_MAX = 100  # the kernel's limit for a unix socket path is 107 bytes


def bus_endpoints(run_dir: Path) -> tuple[str, str]:
    """The gateway's PULL and ROUTER endpoints as unix sockets in `run_dir` (0700: only this user
    can connect, so no other local user can forge a worker's messages or take its identity)."""
    return f"ipc://{run_dir}/bus-results.sock", f"ipc://{run_dir}/bus-control.sock"


def _endpoint(value: str) -> str:
    if value.startswith("ipc://"):
        if len(value) - len("ipc://") > _IPC_PATH_MAX:
            raise ValueError(f"ipc:// socket path is over {_IPC_PATH_MAX} characters (a unix socket limit)")
    elif not value.startswith("tcp://"):
        raise ValueError("must be an ipc:// or tcp:// endpoint")
    check_printable(value)
    return value


Endpoint = Annotated[str, AfterValidator(_endpoint)]


_Z85_KEY = r"^[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$"  # a CURVE key in Z85 (40 characters)
CurveKey = Annotated[str, Field(pattern=_Z85_KEY)]


class CurveClient(StrictModel):
    """ZeroMQ CURVE for a worker on another host than the gateway (tcp:// endpoints): the gateway's
    public key, and this host's key pair (a 0600 `.key_secret` file of `zmq.auth` on the host). Written
    into specs only by the host's own agent (gateway/hosts/agent.py), from the host's configuration."""

    server_public_key: CurveKey
    secret_key_file: Path


class BusSettings(StrictModel):
    push_endpoint: Endpoint = Field(default_factory=lambda: bus_endpoints(RUN_DIR)[0])  # the gateway's PULL
    control_endpoint: Endpoint = Field(default_factory=lambda: bus_endpoints(RUN_DIR)[1])  # the gateway's ROUTER
    send_hwm: int = Field(1000, ge=1, le=1_000_000)
    heartbeat_interval_s: float = Field(2.0, gt=0, le=60)
    status_interval_s: float = Field(5.0, gt=0, le=300)
    snapshot_interval_s: float = Field(5.0, gt=0, le=3600)  # latest frame to the gateway, as a small JPEG
    curve: CurveClient | None = None  # required on tcp:// (another host); None on ipc://


class InferenceSettings(StrictModel):
    backend: Literal["onnx", "ultralytics"] = "onnx"
    threads: int = Field(1, ge=1, le=64)
    device: Literal["cpu", "cuda"] = "cpu"


class MotionSettings(StrictModel):
    """Motion-gated detection (docs/operations.md, "Motion gating"): the detector runs on frames
    with motion in the ROI, while a vehicle is not yet stable, and on stationary tracked vehicles
    every `recheck_s`; `enabled: false` runs it on every frame."""

    enabled: bool = True
    threshold: int = Field(30, ge=1, le=255)  # grey-level change (after contrast stretch) that is motion
    contour_area: int = Field(10, ge=0, le=100_000)  # smallest motion contour, in small-frame pixels
    frame_height: int = Field(100, ge=16, le=2160)  # the motion detector's small frame height
    frame_alpha: float = Field(0.1, gt=0, le=1)  # background running-average weight per frame (~2 s at 5 fps)
    lightning_threshold: float = Field(0.8, gt=0, le=1)  # ROI share changed at once: recalibrate, no motion
    recheck_s: float = Field(2.0, gt=0, le=600)  # stationary tracked vehicles are re-detected this often
    idle_recheck_s: float = Field(10.0, gt=0, le=3600)  # and the ROI even with no motion and no track


class ResourceLimits(StrictModel):
    memory_per_process_mb: int = Field(2048, ge=64)
    gpu_memory_fraction: float = Field(0.3, gt=0, le=1)


class LogSettings(StrictModel):
    directory: Path = Path("logs")
    max_mb: float = Field(100, gt=0)
    backups: int = Field(5, ge=0, le=100)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class StoreOverrides(StrictModel):
    """The operator's stores: the only place store targets come from (archives name only tables
    and keys), else REDIS_URL/DATABASE_URL; and the camera's durable outbox."""

    redis_url: str | None = None
    database_url: str | None = None
    outbox_dir: Path | None = None  # None: <log.directory>/outbox; one SQLite file per camera slug
    outbox_quota_mb: float = Field(512, gt=0, le=1_000_000)


class ModelPolicy(StrictModel):
    """What the operator trusts of model archives. Archives are untrusted input: a `.pt` file is a
    pickle that can run code when loaded, so workers run ONNX only, and an archive holding only
    `.pt` files is converted (in a confined child, with torch's safe loader) only when named here."""

    # Model URLs the backend may name; file:// only inside `model_dirs` (checked by the gateway).
    allowed_url_prefixes: list[str] = Field(default_factory=lambda: ["http://", "https://"])
    model_dirs: list[Path] = Field(default_factory=lambda: [RUN_DIR.parent / "models"])
    convert_pt_from: list[str] = Field(default_factory=list)  # URL prefixes whose .pt-only archives may convert
    convert_pt_sha256: list[Sha256] = Field(default_factory=list)  # archive digests that may convert
    pinned_sha256: dict[str, Sha256] = Field(default_factory=dict)  # model URL → the digest it must have

    def may_convert(self, url: str, sha256: str) -> bool:
        return sha256 in self.convert_pt_sha256 or any(url.startswith(p) for p in self.convert_pt_from)


class WorkerSpec(StrictModel):
    camera_id: CameraId
    source: SourceSettings
    subscriptions: list[Subscription] = Field(default_factory=list, max_length=limits.MAX_DISPLAYS_PER_CAMERA)
    max_fps: float | None = Field(None, gt=0, le=120)
    # up to a snapshot camera's longest interval plus its read timeout: the gateway derives it from both
    stall_timeout_s: float = Field(10.0, gt=0, le=limits.MAX_SNAPSHOT_INTERVAL_MS / 1000 + 300)
    backoff: BackoffSettings = BackoffSettings()
    bus: BusSettings = BusSettings()
    inference: InferenceSettings = InferenceSettings()
    motion: MotionSettings = MotionSettings()
    resource_limits: ResourceLimits = ResourceLimits()
    log: LogSettings = LogSettings()
    stores: StoreOverrides = StoreOverrides()
    model_cache_dir: Path = Path("build/model-cache")
    model_policy: ModelPolicy = ModelPolicy()
    # Which placement of the camera this is (gateway/hosts): stamped on every bus message, so the
    # gateway drops a stale copy's messages after the camera moved hosts. 0: one host, no placement.
    placement_epoch: int = Field(0, ge=0)
    # The fleet that placed it (gateway/hosts; random, kept with the placements): names the camera's
    # state in shared stores, so fleets sharing a Redis never take each other's camera state.
    fleet_id: str | None = Field(None, pattern=r"^[a-z0-9]{1,32}$")

    @property
    def slug(self) -> str:
        return camera_slug(self.camera_id)

    @model_validator(mode="after")
    def _displays_of_this_camera(self) -> WorkerSpec:
        displays = [s.display_id for s in self.subscriptions]
        if len(displays) != len(set(displays)):
            raise ValueError("display ids must be unique")
        if any(s.camera_id != self.camera_id for s in self.subscriptions):
            raise ValueError("every subscription must be of this camera")
        return self


def load_spec(path: Path) -> WorkerSpec:
    """Read a spec file (JSON or YAML) written by the gateway."""
    data = read_yaml_file(path)
    try:
        return WorkerSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, str(path))) from None
