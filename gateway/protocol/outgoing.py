"""The gateway's messages to the backend: `imageDetection`, `stateReport`, `patchSession`, `error`.

Built in Python by field name, sent with the backend's camelCase keys. Values that the backend
sent us (modelId, sessionId) go back with the JSON type they came in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, PlainSerializer, model_validator

from detector_worker.config.fields import ModelId, SessionId, SubscriptionIdentifier, check_printable
from detector_worker.config.spec import Subscription
from detector_worker.limits import MAX_MODEL_NAME

from .errors import ErrorCode, ProtocolError


class _Outgoing(BaseModel):
    # Built in Python by field name (car_brand=...), validated from the wire by camelCase alias.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_alias=True, validate_by_name=True,
                              serialize_by_alias=True, allow_inf_nan=False)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def _iso_milliseconds(value: datetime) -> str:
    v = value.astimezone(UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _box(value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = value
    if min(value) < 0:
        raise ValueError("box coordinates must be non-negative")
    if x1 > x2 or y1 > y2:
        raise ValueError("box must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
    return value


# An ISO-8601 UTC instant, sent as "2025-07-14T12:34:56.789Z" (milliseconds, truncated).
UtcTimestamp = Annotated[datetime, AfterValidator(_utc), PlainSerializer(_iso_milliseconds, return_type=str)]
# [x1, y1, x2, y2] in pixels of the full camera frame (not of the crop).
Box = Annotated[tuple[float, float, float, float], AfterValidator(_box)]
Confidence = Annotated[float, Field(ge=0, le=1)]
Percent = Annotated[float, Field(ge=0)]
Label = Annotated[str, Field(max_length=MAX_MODEL_NAME)]


def _omitted_when_none(value: object) -> bool:
    return value is None


class DetectionBody(_Outgoing):
    """The `detection` object of `imageDetection`. The seven declared fields are always sent (null
    when unknown); any further JSON fields (e.g. `carYear`, `licensePlateText`) are sent verbatim."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    car_brand: Label | None = Field(None, alias="carBrand")
    body_type: Label | None = Field(None, alias="bodyType")
    car_brand_confidence: Confidence | None = Field(None, alias="carBrandConfidence")
    body_type_confidence: Confidence | None = Field(None, alias="bodyTypeConfidence")
    car_box: Box | None = Field(None, alias="carBox")
    frontal_box: Box | None = Field(None, alias="frontalBox")
    track_id: int | None = Field(None, alias="trackId", ge=0)

    @model_validator(mode="after")
    def _extra_keys(self) -> DetectionBody:
        names = set(type(self).model_fields)
        for key in self.__pydantic_extra__ or {}:
            if key in names:
                raise ValueError(f"{key!r} is a declared field: give it once, as its camelCase name")
            if not key or len(key) > 128:
                raise ValueError("extra detection field names must be 1 to 128 characters")
            check_printable(key)
        return self


class DetectionData(_Outgoing):
    detection: DetectionBody
    model_id: ModelId | None = Field(None, alias="modelId")  # as the backend sent it
    model_name: Label | None = Field(None, alias="modelName")


class ImageDetection(_Outgoing):
    type: Literal["imageDetection"] = "imageDetection"
    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    timestamp: UtcTimestamp = Field(default_factory=utc_now)
    data: DetectionData


class CameraConnection(_Outgoing):
    """One entry of `stateReport.cameraConnections`: one subscription (display × camera).

    The four fields the original worker sends are always sent; the crop is sent when the subscription has one;
    `fps`, `inferenceMs`, `reconnects` and `restarts` (ours) are sent when known."""

    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    model_id: ModelId | None = Field(None, alias="modelId")  # as the backend sent it
    model_name: Label | None = Field(None, alias="modelName")
    online: bool
    crop_x1: int | None = Field(None, alias="cropX1", ge=0, exclude_if=_omitted_when_none)
    crop_y1: int | None = Field(None, alias="cropY1", ge=0, exclude_if=_omitted_when_none)
    crop_x2: int | None = Field(None, alias="cropX2", ge=0, exclude_if=_omitted_when_none)
    crop_y2: int | None = Field(None, alias="cropY2", ge=0, exclude_if=_omitted_when_none)
    fps: float | None = Field(None, ge=0, exclude_if=_omitted_when_none)
    inference_ms: float | None = Field(None, alias="inferenceMs", ge=0, exclude_if=_omitted_when_none)
    reconnects: int | None = Field(None, ge=0, exclude_if=_omitted_when_none)
    restarts: int | None = Field(None, ge=0, exclude_if=_omitted_when_none)
    error: str | None = Field(None, max_length=600, exclude_if=_omitted_when_none)  # this display's pipeline failed
    store_quota_full: bool | None = Field(None, alias="storeQuotaFull", exclude_if=_omitted_when_none)

    @classmethod
    def from_subscription(cls, subscription: Subscription, *, online: bool, fps: float | None = None,
                          inference_ms: float | None = None, reconnects: int | None = None,
                          restarts: int | None = None, error: str | None = None,
                          store_quota_full: bool | None = None) -> CameraConnection:
        crop = subscription.crop
        return cls(
            subscription_identifier=subscription.subscription_identifier,
            model_id=subscription.model.id, model_name=subscription.model.name, online=online,
            crop_x1=crop.x1 if crop else None, crop_y1=crop.y1 if crop else None,
            crop_x2=crop.x2 if crop else None, crop_y2=crop.y2 if crop else None,
            fps=fps, inference_ms=inference_ms, reconnects=reconnects, restarts=restarts,
            error=error if error is None or len(error) <= 600 else error[:599] + "…",
            store_quota_full=store_quota_full,
        )


class StateReport(_Outgoing):
    """The heartbeat. Usages are percentages (0 when there is no GPU)."""

    type: Literal["stateReport"] = "stateReport"
    cpu_usage: Percent = Field(alias="cpuUsage")
    memory_usage: Percent = Field(alias="memoryUsage")
    gpu_usage: Percent = Field(alias="gpuUsage")
    gpu_memory_usage: Percent = Field(alias="gpuMemoryUsage")
    camera_connections: list[CameraConnection] = Field(default_factory=list, alias="cameraConnections")


class PatchSessionPayload(_Outgoing):
    session_id: SessionId = Field(alias="sessionId")  # as the backend sent it in setSessionId
    data: dict[str, JsonValue]


class PatchSession(_Outgoing):
    """Ask the backend to change data of a session; it answers with `patchSessionResult`."""

    type: Literal["patchSession"] = "patchSession"
    payload: PatchSessionPayload


class ErrorDetails(_Outgoing):
    code: ErrorCode
    message: str
    request_type: str | None = Field(None, alias="requestType")  # the refused message's type, when known
    subscription_identifier: str | None = Field(None, alias="subscriptionIdentifier")  # when known and valid
    index: int | None = Field(None, exclude_if=_omitted_when_none)  # the refused item's place in a list


class ErrorMessage(_Outgoing):
    """Ours (the original worker had none): why a backend message, or one item of it, was refused."""

    type: Literal["error"] = "error"
    error: ErrorDetails

    @classmethod
    def from_error(cls, err: ProtocolError) -> ErrorMessage:
        """Never fails: an over-long message is cut at 2000 characters, other fields at 600."""
        message = err.message if len(err.message) <= 2000 else err.message[:1999] + "…"
        return cls(error=ErrorDetails(code=err.code, message=message, request_type=_cut(err.request_type),
                                      subscription_identifier=_cut(err.subscription_identifier), index=err.index))


def _cut(value: str | None, limit: int = 600) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


OutgoingMessage = Annotated[ImageDetection | StateReport | PatchSession | ErrorMessage, Field(discriminator="type")]
_OUTGOING_CLASSES = (ImageDetection, StateReport, PatchSession, ErrorMessage)


def error_message(err: ProtocolError) -> ErrorMessage:
    """The `error` message that tells the backend about `err`."""
    return ErrorMessage.from_error(err)


def dump_outgoing(msg: ImageDetection | StateReport | PatchSession | ErrorMessage) -> str:
    """The message as compact JSON text with the backend's camelCase keys."""
    if not isinstance(msg, _OUTGOING_CLASSES):
        raise TypeError(f"not an outgoing message: {type(msg).__name__}")
    return msg.model_dump_json(by_alias=True)
