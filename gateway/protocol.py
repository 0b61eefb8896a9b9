"""Every message between the controlling backend and the gateway (its existing WebSocket protocol).

One module, so the gateway's receiving and sending sides can never disagree on a field. The
wire format is the backend's: one JSON object per WebSocket message, camelCase keys, a `type`
tag and, for commands, a `payload`. The rules, the examples and every decision taken where the
backend's public record is silent are in docs/protocol.md.

Backend → gateway (`parse_incoming`): `setSubscriptionList`, `subscribe`, `unsubscribe`,
`requestState`, `setSessionId`, `setProgressionStage`, `patchSessionResult`.
Gateway → backend (`dump_outgoing`): `imageDetection`, `stateReport`, `patchSession`, `error`.

What we receive is validated strictly (no type coercion, unknown fields rejected) except where
the record shows older or newer backend variants: `setSubscriptionList`'s payload may be a list
or `{"subscriptions": [...]}`, and a subscription may carry the older `cropX`/`cropY`. Every
rejection is one `ProtocolError` whose message names the field path
(`payload[2].rtspUrl: URL scheme must be rtsp or rtsps`) and never quotes more than a few dozen
characters of the input (and never a URL: source URLs carry credentials).

The module holds no mutable state: the models are frozen and the lookup tables read-only.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_MESSAGE_BYTES = 1_048_576
MAX_ID_PART = 256  # each of <displayId> and <cameraId>, and a displayIdentifier
MAX_URL = 4096
MAX_MODEL_NAME = 256
MAX_MODEL_ID = 128
MAX_SESSION_ID = 256
MAX_STAGE = 256
MAX_RESULT_MESSAGE = 16_384
MAX_CROP_COORD = 100_000
MAX_MODEL_ID_INT = 2**63 - 1
DEFAULT_SNAPSHOT_INTERVAL_MS = 5000

_ECHO_CHARS = 60  # the most of any input string a ProtocolError message quotes
_MAX_OBJECT_KEYS = 64  # no object of this protocol has more than 13; bounds the work spent on a bad message
_JSON_MAX_INT_DIGITS = 400
_IDENTIFIER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ErrorCode(StrEnum):
    """The `code` of an `error` message (docs/protocol.md#errors)."""

    INVALID_JSON = "invalid_json"  # not UTF-8, not JSON, or JSON we refuse (NaN, duplicate keys, too deep)
    UNKNOWN_TYPE = "unknown_type"  # a JSON object whose `type` we do not accept
    INVALID_MESSAGE = "invalid_message"  # a known type whose fields break a rule
    TOO_LARGE = "too_large"  # the message is over the size limit
    LIMIT_EXCEEDED = "limit_exceeded"  # valid, but over a gateway limit (raised by the gateway)
    CONFLICT = "conflict"  # valid, but its camera is already watched through another source (the gateway)
    UNAUTHORIZED = "unauthorized"  # the connection is not allowed (raised by the gateway)
    INTERNAL = "internal"  # the gateway failed; not the backend's fault (raised by the gateway)


class ProtocolError(Exception):
    """A message the gateway cannot accept. `message` is one human line naming the field."""

    def __init__(self, code: ErrorCode | str, message: str, request_type: str | None = None, *,
                 subscription_identifier: str | None = None) -> None:
        super().__init__(code, message, request_type)
        self.code = ErrorCode(code)
        self.message = message
        self.request_type = request_type
        self.subscription_identifier = subscription_identifier

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def to_message(self) -> ErrorMessage:
        """The `error` message that tells the backend about this."""
        return ErrorMessage.from_error(self)


# ---------------------------------------------------------------------------------------------
# Text rules shared by the fields


def _quote(text: str, limit: int = _ECHO_CHARS) -> str:
    """`text` as an ASCII-only, JSON-quoted string of at most `limit` characters between the quotes
    (then "…"): safe to put in a log line or a message, whatever `text` holds."""
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = json.dumps(char)[1:-1]  # escapes quotes, backslashes, controls, non-ASCII, lone surrogates
        if used + len(piece) > limit:
            return '"' + "".join(pieces) + '"…'
        pieces.append(piece)
        used += len(piece)
    return '"' + "".join(pieces) + '"'


def _check_printable(value: str, *, allow: str = "") -> None:
    """No control, format, separator (other than ' '), private-use, unassigned or surrogate code points."""
    if value.isprintable():
        return
    for index, char in enumerate(value):
        if not char.isprintable() and char not in allow:
            if 0xD800 <= ord(char) <= 0xDFFF:
                raise ValueError(f"must be valid Unicode text (lone surrogate U+{ord(char):04X} at position {index})")
            raise ValueError(f"must not contain control or invisible characters "
                             f"(U+{ord(char):04X} at position {index})")


def _check_identifier(value: str, what: str, limit: int) -> None:
    """Non-empty, at most `limit` characters, printable, no leading or trailing whitespace."""
    subject = f"{what} " if what else ""
    if not value:
        raise ValueError(f"{subject}must not be empty")
    if len(value) > limit:
        raise ValueError(f"{subject}must be at most {limit} characters (got {len(value)})")
    _check_printable(value)
    if value != value.strip():
        raise ValueError(f"{subject}must not start or end with whitespace")


def _display_identifier(value: str) -> str:
    _check_identifier(value, "", MAX_ID_PART)
    if ";" in value:
        raise ValueError('must not contain ";" (it is the display part of a subscriptionIdentifier)')
    return value


def split_subscription_identifier(value: str) -> tuple[str, str]:
    """`"<displayId>;<cameraId>"` → `(display_id, camera_id)`; ValueError when malformed."""
    _check_printable(value)  # first, so a reported position counts from the start of the whole identifier
    if value.count(";") != 1:
        raise ValueError('must be "<displayId>;<cameraId>" with exactly one ";"')
    display_id, camera_id = value.split(";")
    _check_identifier(display_id, 'display id (before ";")', MAX_ID_PART)
    _check_identifier(camera_id, 'camera id (after ";")', MAX_ID_PART)
    return display_id, camera_id


def _subscription_identifier(value: str) -> str:
    split_subscription_identifier(value)
    return value


def _is_subscription_identifier(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 2 * MAX_ID_PART + 1:
        return False
    try:
        split_subscription_identifier(value)
    except ValueError:
        return False
    return True


def _url_checker(schemes: tuple[str, ...], *, file_urls: bool = False) -> Callable[[str], str]:
    """A validator for URLs with one of `schemes` (case-insensitive; the text itself is kept as sent)."""
    expected = " or ".join(schemes) if len(schemes) < 3 else f"{', '.join(schemes[:-1])} or {schemes[-1]}"

    def check(value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        _check_printable(value)
        if " " in value:
            raise ValueError("must not contain spaces (percent-encode them as %20)")
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            raise ValueError("is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in schemes:
            if not parts.scheme and file_urls:
                raise ValueError(f"must be a URL with scheme {expected}, not a plain path (use file:///absolute/path)")
            raise ValueError(f"URL scheme must be {expected}")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError("file:// URL must name this host (file:///path or file://localhost/path)")
            if not parts.path.startswith("/"):
                raise ValueError("file:// URL must name an absolute path")
            return value
        if not parts.hostname:
            raise ValueError("URL must name a host")
        try:
            parts.port  # noqa: B018 (property access validates the port)
        except ValueError:
            raise ValueError("URL port must be a number from 0 to 65535") from None
        return value

    return check


def _model_id(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer or a string")
    if isinstance(value, int):
        if not 0 <= value <= MAX_MODEL_ID_INT:
            raise ValueError(f"must be between 0 and {MAX_MODEL_ID_INT}")
        return value
    _check_identifier(value, "", MAX_MODEL_ID)
    return value


def _session_id_text(value: object) -> str:
    """A session id as text: strings as sent, integers as their decimal string."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a string or an integer")
    text = str(value) if isinstance(value, int) else value
    _check_identifier(text, "", MAX_SESSION_ID)
    return text


def _nullable_session_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a string, an integer or null")
    return _session_id_text(value)


def _line_text(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(value)})")
        _check_printable(value)
        return value

    return check


def _free_text(value: str) -> str:
    if len(value) > MAX_RESULT_MESSAGE:
        raise ValueError(f"must be at most {MAX_RESULT_MESSAGE} characters (got {len(value)})")
    _check_printable(value, allow="\t\n\r")
    return value


SubscriptionIdentifier = Annotated[str, Field(max_length=2 * MAX_ID_PART + 1),
                                   AfterValidator(_subscription_identifier)]
DisplayIdentifier = Annotated[str, Field(max_length=MAX_ID_PART), AfterValidator(_display_identifier)]
RtspUrl = Annotated[str, Field(max_length=MAX_URL), AfterValidator(_url_checker(("rtsp", "rtsps")))]
SnapshotUrl = Annotated[str, Field(max_length=MAX_URL), AfterValidator(_url_checker(("http", "https")))]
ModelUrl = Annotated[str, Field(max_length=MAX_URL),
                     AfterValidator(_url_checker(("http", "https", "file"), file_urls=True))]
ModelName = Annotated[str, Field(max_length=MAX_MODEL_NAME), AfterValidator(_line_text(MAX_MODEL_NAME))]
ModelId = Annotated[int | str, PlainValidator(_model_id, json_schema_input_type=int | str)]
SessionId = Annotated[str, PlainValidator(_session_id_text, json_schema_input_type=int | str)]
NullableSessionId = Annotated[str | None, PlainValidator(_nullable_session_id, json_schema_input_type=int | str | None)]
ProgressionStage = Annotated[str, Field(max_length=MAX_STAGE), AfterValidator(_line_text(MAX_STAGE))]
ResultText = Annotated[str, Field(max_length=MAX_RESULT_MESSAGE), AfterValidator(_free_text)]
CropCoord = Annotated[int, Field(ge=0, le=MAX_CROP_COORD)]
SnapshotInterval = Annotated[int, Field(ge=100, le=3_600_000)]


# ---------------------------------------------------------------------------------------------
# Backend → gateway

class _Incoming(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_by_alias=True,
                              validate_by_name=False, serialize_by_alias=True, allow_inf_nan=False)


class Crop(BaseModel):
    """The region of the frame to process, in pixels. `x2`/`y2` None: to the frame's right/bottom edge
    (only from the older `cropX`/`cropY` form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    x1: int
    y1: int
    x2: int | None
    y2: int | None

    @property
    def legacy(self) -> bool:
        """True when it came from the older `cropX`/`cropY` (top-left offset only)."""
        return self.x2 is None


_CROP_KEYS = ("cropX1", "cropY1", "cropX2", "cropY2")
# Optional subscription keys for which JSON null means "not given".
_NULLABLE_SUBSCRIPTION_KEYS = frozenset({"rtspUrl", "snapshotUrl", "snapshotInterval", "modelName",
                                         *_CROP_KEYS, "cropX", "cropY"})


class Subscription(_Incoming):
    """One display watching one camera: the payload of `subscribe`, an item of `setSubscriptionList`."""

    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    rtsp_url: RtspUrl | None = Field(None, alias="rtspUrl")
    snapshot_url: SnapshotUrl | None = Field(None, alias="snapshotUrl")
    snapshot_interval: SnapshotInterval = Field(DEFAULT_SNAPSHOT_INTERVAL_MS, alias="snapshotInterval")
    model_url: ModelUrl = Field(alias="modelUrl")
    model_name: ModelName | None = Field(None, alias="modelName")
    model_id: ModelId = Field(alias="modelId")
    crop_x1: CropCoord | None = Field(None, alias="cropX1")
    crop_y1: CropCoord | None = Field(None, alias="cropY1")
    crop_x2: CropCoord | None = Field(None, alias="cropX2")
    crop_y2: CropCoord | None = Field(None, alias="cropY2")
    crop_x: CropCoord | None = Field(None, alias="cropX")  # older backends: top-left offset only
    crop_y: CropCoord | None = Field(None, alias="cropY")

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _NULLABLE_SUBSCRIPTION_KEYS)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Subscription:
        if self.rtsp_url is None and self.snapshot_url is None:
            raise ValueError("needs a source: rtspUrl or snapshotUrl")
        box = {"cropX1": self.crop_x1, "cropY1": self.crop_y1, "cropX2": self.crop_x2, "cropY2": self.crop_y2}
        given = [k for k, v in box.items() if v is not None]
        legacy = {"cropX": self.crop_x, "cropY": self.crop_y}
        legacy_given = [k for k, v in legacy.items() if v is not None]
        if given and legacy_given:
            raise ValueError("give either cropX1/cropY1/cropX2/cropY2 or the older cropX/cropY, not both")
        if given and len(given) != len(box):
            missing = ", ".join(k for k in box if k not in given)
            raise ValueError(f"cropX1, cropY1, cropX2 and cropY2 go together (missing {missing})")
        if legacy_given and len(legacy_given) != len(legacy):
            missing = ", ".join(k for k in legacy if k not in legacy_given)
            raise ValueError(f"cropX and cropY go together (missing {missing})")
        if given:
            assert self.crop_x1 is not None and self.crop_x2 is not None  # for mypy: all four are set
            assert self.crop_y1 is not None and self.crop_y2 is not None
            if self.crop_x1 >= self.crop_x2:
                raise ValueError("cropX1 must be less than cropX2")
            if self.crop_y1 >= self.crop_y2:
                raise ValueError("cropY1 must be less than cropY2")
        return self

    @property
    def display_id(self) -> str:
        return self.subscription_identifier.split(";")[0]

    @property
    def camera_id(self) -> str:
        return self.subscription_identifier.split(";")[1]

    @property
    def source_kind(self) -> Literal["rtsp", "snapshot"]:
        """RTSP wins when both are given (the record's own example carries both)."""
        return "rtsp" if self.rtsp_url is not None else "snapshot"

    @property
    def source_url(self) -> str:
        url = self.rtsp_url if self.rtsp_url is not None else self.snapshot_url
        assert url is not None  # the validator guarantees a source
        return url

    @property
    def crop(self) -> Crop | None:
        if self.crop_x1 is not None:
            return Crop(x1=self.crop_x1, y1=cast(int, self.crop_y1), x2=self.crop_x2, y2=self.crop_y2)
        if self.crop_x is not None:
            return Crop(x1=self.crop_x, y1=cast(int, self.crop_y), x2=None, y2=None)
        return None


class _SubscriptionListObject(_Incoming):
    """The `{"subscriptions": [...]}` form of `setSubscriptionList`'s payload (items checked one by one)."""

    subscriptions: list[Any]


def _relocated(err: ValidationError, prefix: tuple[str | int, ...], title: str) -> ValidationError:
    """`err` with `prefix` put before every location (each message already in its final, human form)."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("relocated", _describe(e)), loc=(*prefix, *e["loc"]), input=None)
        for e in err.errors(include_url=False, include_input=False)
    ])


class SetSubscriptionList(_Incoming):
    """Declarative: the full set of subscriptions wanted now; anything not listed is removed.

    `payload` is always the list: the `{"subscriptions": [...]}` form is unwrapped on parsing.
    Validation stops at the first subscription that breaks a rule (one clear error, bounded work)."""

    type: Literal["setSubscriptionList"]
    payload: list[Subscription]

    @field_validator("payload", mode="plain")
    @classmethod
    def _either_shape(cls, value: Any) -> list[Subscription]:
        if isinstance(value, dict) and "subscriptions" in value:
            raw_items: list[Any] = _SubscriptionListObject.model_validate(value).subscriptions
            prefix: tuple[str | int, ...] = ("subscriptions",)
        elif isinstance(value, list):
            raw_items, prefix = value, ()
        else:
            raise ValueError('must be a list of subscriptions (or {"subscriptions": [...]})')
        items: list[Subscription] = []
        first_seen: dict[str, int] = {}
        for index, raw in enumerate(raw_items):
            try:
                item = Subscription.model_validate(raw)
            except ValidationError as err:
                raise _relocated(err, (*prefix, index), cls.__name__) from None
            seen = first_seen.setdefault(item.subscription_identifier, index)
            if seen != index:
                error = PydanticCustomError("duplicate_subscription",
                                            "duplicate subscriptionIdentifier (first at {where})",
                                            {"where": _format_loc(("payload", *prefix, seen))})
                raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(
                    type=error, loc=(*prefix, index, "subscriptionIdentifier"), input=item.subscription_identifier)])
            items.append(item)
        return items


class Subscribe(_Incoming):
    """Add one subscription (older backends)."""

    type: Literal["subscribe"]
    payload: Subscription


class UnsubscribePayload(_Incoming):
    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")

    @property
    def display_id(self) -> str:
        return self.subscription_identifier.split(";")[0]

    @property
    def camera_id(self) -> str:
        return self.subscription_identifier.split(";")[1]


class Unsubscribe(_Incoming):
    type: Literal["unsubscribe"]
    payload: UnsubscribePayload


class RequestState(_Incoming):
    """Ask for an immediate `stateReport`. The payload may be absent, null or `{}`."""

    type: Literal["requestState"]
    payload: None = None

    @field_validator("payload", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> None:
        if value is None or value == {}:
            return None
        raise ValueError("must be absent, null or {} (requestState takes no parameters)")


class SetSessionIdPayload(_Incoming):
    display_identifier: DisplayIdentifier = Field(alias="displayIdentifier")
    session_id: NullableSessionId = Field(alias="sessionId")  # integers arrive as their decimal string


class SetSessionId(_Incoming):
    """Bind a session to a display; `sessionId: null` clears it."""

    type: Literal["setSessionId"]
    payload: SetSessionIdPayload


class SetProgressionStagePayload(_Incoming):
    display_identifier: DisplayIdentifier = Field(alias="displayIdentifier")
    progression_stage: ProgressionStage | None = Field(alias="progressionStage")


class SetProgressionStage(_Incoming):
    type: Literal["setProgressionStage"]
    payload: SetProgressionStagePayload


class PatchSessionResultPayload(_Incoming):
    session_id: SessionId = Field(alias="sessionId")
    success: bool
    message: ResultText | None = None


class PatchSessionResult(_Incoming):
    """The backend's answer to our `patchSession`."""

    type: Literal["patchSessionResult"]
    payload: PatchSessionResultPayload


IncomingMessage = Annotated[
    SetSubscriptionList | Subscribe | Unsubscribe | RequestState | SetSessionId | SetProgressionStage
    | PatchSessionResult,
    Field(discriminator="type"),
]

_INCOMING_BY_TYPE: Mapping[str, type[_Incoming]] = MappingProxyType({
    "setSubscriptionList": SetSubscriptionList,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "requestState": RequestState,
    "setSessionId": SetSessionId,
    "setProgressionStage": SetProgressionStage,
    "patchSessionResult": PatchSessionResult,
})
INCOMING_TYPES: frozenset[str] = frozenset(_INCOMING_BY_TYPE)


# ---------------------------------------------------------------------------------------------
# Gateway → backend

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


class Detection(_Outgoing):
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
    def _extra_keys(self) -> Detection:
        names = set(type(self).model_fields)
        for key in self.__pydantic_extra__ or {}:
            if key in names:
                raise ValueError(f"{key!r} is a declared field: give it once, as its camelCase name")
            if not key or len(key) > 128:
                raise ValueError("extra detection field names must be 1 to 128 characters")
            _check_printable(key)
        return self


class DetectionData(_Outgoing):
    detection: Detection
    model_id: ModelId = Field(alias="modelId")
    model_name: Label | None = Field(None, alias="modelName")


class ImageDetection(_Outgoing):
    type: Literal["imageDetection"] = "imageDetection"
    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    timestamp: UtcTimestamp = Field(default_factory=utc_now)
    data: DetectionData


class CameraConnection(_Outgoing):
    """One entry of `stateReport.cameraConnections`: one subscription (display × camera).

    The four fields of the record are always sent; the crop is sent when the subscription has one;
    `fps`, `inferenceMs`, `reconnects` and `restarts` (ours) are sent when known."""

    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    model_id: ModelId = Field(alias="modelId")
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

    @classmethod
    def from_subscription(cls, subscription: Subscription, *, online: bool, fps: float | None = None,
                          inference_ms: float | None = None, reconnects: int | None = None,
                          restarts: int | None = None) -> CameraConnection:
        crop = subscription.crop
        return cls(
            subscription_identifier=subscription.subscription_identifier,
            model_id=subscription.model_id, model_name=subscription.model_name, online=online,
            crop_x1=crop.x1 if crop else None, crop_y1=crop.y1 if crop else None,
            crop_x2=crop.x2 if crop else None, crop_y2=crop.y2 if crop else None,
            fps=fps, inference_ms=inference_ms, reconnects=reconnects, restarts=restarts,
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
    session_id: SessionId = Field(alias="sessionId")
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


class ErrorMessage(_Outgoing):
    """Ours (not in the record): why a backend message was refused or failed."""

    type: Literal["error"] = "error"
    error: ErrorDetails

    @classmethod
    def from_error(cls, err: ProtocolError) -> ErrorMessage:
        """Never fails: an over-long message is cut at 2000 characters, other fields at 600."""
        message = err.message if len(err.message) <= 2000 else err.message[:1999] + "…"
        return cls(error=ErrorDetails(code=err.code, message=message, request_type=_cut(err.request_type),
                                      subscription_identifier=_cut(err.subscription_identifier)))


def _cut(value: str | None, limit: int = 600) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


OutgoingMessage = Annotated[ImageDetection | StateReport | PatchSession | ErrorMessage, Field(discriminator="type")]
_OUTGOING_CLASSES = (ImageDetection, StateReport, PatchSession, ErrorMessage)
OUTGOING_TYPES: frozenset[str] = frozenset({"imageDetection", "stateReport", "patchSession", "error"})


def dump_outgoing(msg: ImageDetection | StateReport | PatchSession | ErrorMessage) -> str:
    """The message as compact JSON text with the backend's camelCase keys."""
    if not isinstance(msg, _OUTGOING_CLASSES):
        raise TypeError(f"not an outgoing message: {type(msg).__name__}")
    return msg.model_dump_json(by_alias=True)


# ---------------------------------------------------------------------------------------------
# Parsing


class _JsonRefused(ValueError):
    """Valid-looking JSON we refuse: duplicate keys, NaN/Infinity, absurd numbers."""


class _TooManyKeys(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > _MAX_OBJECT_KEYS:
        raise _TooManyKeys(f"an object has {len(pairs)} fields; no object of this protocol has more than "
                           f"{_MAX_OBJECT_KEYS}")
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonRefused(f"duplicate key {_quote(key)}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _JsonRefused("a number is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _JSON_MAX_INT_DIGITS:
        raise _JsonRefused("a number has too many digits")
    return int(text)


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant,
                          parse_float=_finite_float, parse_int=_bounded_int)
    except _TooManyKeys as err:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(err)) from None
    except json.JSONDecodeError as err:
        raise ProtocolError(ErrorCode.INVALID_JSON,
                            f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except _JsonRefused as err:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON: {err}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON: nested too deeply") from None
    except ValueError:  # e.g. an integer over Python's digit limit
        raise ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON: a value is out of range") from None


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part, 40)}]"
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    match kind:
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "is not a known field"
        case "string_type":
            return "must be a string"
        case "string_unicode":
            return "must be valid Unicode text (no lone surrogates)"
        case "int_type" | "int_from_float":
            return "must be an integer"
        case "bool_type":
            return "must be true or false"
        case "float_type":
            return "must be a number"
        case "list_type":
            return "must be a list"
        case "model_type" | "model_attributes_type" | "dict_type":
            return "must be an object"
        case "string_too_long":
            return f"must be at most {ctx['max_length']} characters"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "literal_error":
            return f"must be {ctx['expected']}"
        case "value_error":
            return str(ctx["error"])
    return str(error["msg"])


def _subscription_hint(type_: str, data: Mapping[str, Any], loc: tuple[str | int, ...]) -> str | None:
    """The subscriptionIdentifier of the subscription an error is in, when that identifier is valid."""
    payload = data.get("payload")
    item: Any = None
    if type_ in ("subscribe", "unsubscribe"):
        item = payload
    elif type_ == "setSubscriptionList" and len(loc) >= 2:
        if isinstance(payload, list) and isinstance(loc[1], int) and loc[1] < len(payload):
            item = payload[loc[1]]
        elif (isinstance(payload, dict) and loc[1] == "subscriptions" and len(loc) >= 3
              and isinstance(loc[2], int) and isinstance(payload.get("subscriptions"), list)
              and loc[2] < len(payload["subscriptions"])):
            item = payload["subscriptions"][loc[2]]
    if isinstance(item, dict):
        candidate = item.get("subscriptionIdentifier")
        if _is_subscription_identifier(candidate):
            return cast(str, candidate)
    return None


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def parse_incoming(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> IncomingMessage:
    """One backend message (a WebSocket text or binary frame) as a validated model.

    Raises ProtocolError (and nothing else) for anything that is not an acceptable message."""
    if isinstance(text, bytes | bytearray | memoryview):
        size = len(text)
        if size > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}")
        try:
            decoded = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid UTF-8 (at byte {err.start})") from None
    elif isinstance(text, str):
        if len(text) > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is over {max_bytes} bytes, the limit")
        size = _utf8_size(text)
        if size > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}")
        decoded = text
    else:
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")

    data = _decode_json(decoded)
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'a message must be a JSON object with a "type"')
    if "type" not in data:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type: is required")
    type_ = data["type"]
    if not isinstance(type_, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type: must be a string")
    model = _INCOMING_BY_TYPE.get(type_)
    if model is None:
        if type_ in OUTGOING_TYPES:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: {_quote(type_)} is sent by the gateway, not to it")
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: unknown message type {_quote(type_)}; expected one of "
                                                    f"{', '.join(sorted(INCOMING_TYPES))}")
    try:
        message = model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False)
        first = errors[0]
        loc = tuple(first["loc"])
        where = _format_loc(loc)
        text_ = f"{where}: {_describe(first)}" if where else _describe(first)
        if len(errors) > 1:
            text_ += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, text_, type_,
                            subscription_identifier=_subscription_hint(type_, data, loc)) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message is nested too deeply", type_) from None
    return cast(IncomingMessage, message)
