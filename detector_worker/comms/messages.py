"""Every message that crosses the ZeroMQ bus between a camera worker and the gateway.

One module, imported by both sides, so the two can never disagree on a field. Messages are
JSON objects with a `type` tag and a protocol version `v`; unknown types or fields are
rejected (a newer peer must bump `v`, not slip fields in).

Worker → gateway (PUSH → PULL): `hello`, `heartbeat`, `status`, `detection`, `session_result`,
`snapshot`.
supervisord's event listener → gateway (PUSH → PULL): `process_state`.
Gateway → worker (ROUTER → DEALER, addressed by camera): `control` (the full session and
stage state of the camera's displays, idempotent), `reload` and `live` (a dashboard watches).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .. import limits

PROTOCOL_VERSION = 1
Box = tuple[float, float, float, float]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1  # PROTOCOL_VERSION
    camera: str = Field(min_length=1, max_length=limits.MAX_ID)
    sent_at: float  # wall clock (time.time()) at the sender
    # The camera's placement epoch (its spec's `placement_epoch`): after a camera moved to another
    # host, messages of an older epoch come from a stale copy and are dropped (fencing).
    epoch: int = Field(0, ge=0)


class Hello(_Message):
    """A worker (re)started: the gateway answers with the camera's current `control` state."""

    type: Literal["hello"] = "hello"
    pid: int
    started_at: float


WorkerPhase = Literal["starting", "fetching", "converting", "opening", "running"]


class Heartbeat(_Message):
    """Sent from a worker's start: `phase` says whether its pipelines run yet ("running"), or what the
    start is busy with (fetching an archive, converting its models, opening them); `detail` the
    progress (e.g. bytes fetched). Both optional: a heartbeat without them is of a running worker."""

    type: Literal["heartbeat"] = "heartbeat"
    pid: int
    uptime_s: float
    phase: WorkerPhase = "running"
    detail: str | None = Field(default=None, max_length=512)


class Status(_Message):
    """Stream and pipeline health; sent on every online/offline change and periodically."""

    type: Literal["status"] = "status"
    online: bool
    fps: float
    inference_ms: float
    reconnects: int
    stalls: int
    dropped: int  # bus messages this worker could not send (high-water mark reached)
    rss_mb: float
    last_error: str | None = None
    frames_processed: int = 0  # since the worker started: a counter, so rate() works
    store_pending: int = 0  # store writes waiting (queued or retrying), all stores of this worker
    store_failed: int = 0  # store writes given up since the worker started
    store_quota_full: bool = False  # the camera's durable outbox is at its disk quota: new writes are refused
    # displays whose pipeline could not be built (display id → why); the camera's other displays run
    display_errors: dict[str, str] = Field(default_factory=dict, max_length=limits.MAX_DISPLAYS_PER_CAMERA)


class VehicleResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    car_box: Box | None = None
    frontal_box: Box | None = None
    confidence: float
    brand: str | None = None
    brand_confidence: float | None = None
    body_type: str | None = None
    body_type_confidence: float | None = None
    fields: dict[str, Any] = Field(default_factory=dict)  # every branch result, by "<modelId>.<field>"


class DisplayDetection(_Message):
    """One detection cycle's result for one display subscription."""

    type: Literal["detection"] = "detection"
    subscription_identifier: str
    display_id: str
    session_id: int | str | None  # as the backend sent it
    track_id: int
    model_id: int | str | None
    model_name: str | None
    captured_at: float  # when the frame was read from the camera
    inference_ms: float
    vehicle: VehicleResult
    image_key: str | None = None  # where the crop went in Redis, once stored
    thumb_b64: str | None = Field(default=None, max_length=256 * 2**10)  # the vehicle, a small JPEG (dashboard)


class SessionResult(_Message):
    """A vehicle's result was written under a session: the gateway tells the backend (patchSession)."""

    type: Literal["session_result"] = "session_result"
    subscription_identifier: str
    display_id: str
    session_id: int | str  # as the backend sent it
    track_id: int
    image_key: str | None
    vehicle: VehicleResult


class SnapshotTrack(BaseModel):
    """A vehicle the lane's tracker follows in that frame (drawn by the dashboard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    box: Box  # in the frame's own pixels (width × height)
    track_id: int
    still: float = 0.0  # stillness progress: 1.0 = stable (its detection cycle runs)
    fired: bool = False  # its detection cycle ran
    labels: list[str] = Field(default_factory=list, max_length=8)  # brand, body type, once classified


class Snapshot(_Message):
    """The camera's latest frame, small; every `snapshot_interval_s`, or ≥ 2/s while a viewer watches
    (`Live`). `tracks` and `crops` are optional, so older messages still parse."""

    type: Literal["snapshot"] = "snapshot"
    jpeg_b64: str = Field(max_length=4 * 2**20)
    width: int
    height: int
    captured_at: float
    tracks: list[SnapshotTrack] = Field(default_factory=list, max_length=256)
    crops: list[Box] = Field(default_factory=list, max_length=16)  # the subscriptions' crop/ROI boxes
    motion: list[Box] = Field(default_factory=list, max_length=256)  # the last frame's motion boxes (debug view)


class ProcessState(BaseModel):
    """A supervisord PROCESS_STATE event, forwarded by `gateway.supervisor.events`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["process_state"] = "process_state"
    name: str
    group: str
    from_state: str
    to_state: str
    pid: int | None = None
    expected: bool | None = None  # EXITED only: whether the exit code was an expected one
    serial: int | None = None  # supervisord's event serial: a gap means dropped events
    sent_at: float


class DisplayControl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    session_id: int | str | None = None  # as the backend sent it (an integer stays an integer)
    progression_stage: str | None = None


class Control(_Message):
    """The desired per-display state for one camera. Sent whole, so a resend is harmless."""

    type: Literal["control"] = "control"
    displays: dict[str, DisplayControl]


class Reload(_Message):
    """Re-read the worker's spec file and rebuild its pipelines."""

    type: Literal["reload"] = "reload"


class Live(_Message):
    """A viewer watches this camera: send snapshots at `interval_s` for `lease_s` (renewed while watched)."""

    type: Literal["live"] = "live"
    lease_s: float = Field(gt=0, le=60)
    interval_s: float = Field(ge=0.1, le=10)


AnyWorkerMessage = Hello | Heartbeat | Status | DisplayDetection | SessionResult | Snapshot | ProcessState
WorkerMessage = Annotated[AnyWorkerMessage, Field(discriminator="type")]
GatewayMessage = Annotated[Control | Reload | Live, Field(discriminator="type")]

_worker_adapter: TypeAdapter[AnyWorkerMessage] = TypeAdapter(WorkerMessage)
_gateway_adapter: TypeAdapter[Control | Reload | Live] = TypeAdapter(GatewayMessage)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def decode_from_worker(data: bytes) -> AnyWorkerMessage:
    """Parse a worker's message; raises pydantic.ValidationError on anything malformed."""
    return _worker_adapter.validate_json(data)


def decode_from_gateway(data: bytes) -> Control | Reload | Live:
    return _gateway_adapter.validate_json(data)
