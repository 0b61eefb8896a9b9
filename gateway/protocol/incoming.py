"""The backend's messages to the gateway, read tolerantly and converted to our own types at once.

Tolerant reader, strict about values: keys we do not know (in the envelope, a payload or a
subscription) are ignored and reported in `ignored`, never refused; JSON null in an optional
field means "not given". What is refused is a value that is unsafe or unusable, and only the
item it belongs to: one bad subscription of a `setSubscriptionList` never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detector_worker.config.fields import (
    CropCoord,
    DisplayId,
    HttpUrl,
    ModelId,
    ModelName,
    ModelUrl,
    NullableSessionId,
    ProgressionStage,
    ResultText,
    RtspUrl,
    SessionId,
    SnapshotInterval,
    SubscriptionIdentifier,
)
from detector_worker.config.spec import Crop, ModelRef, SourceSettings, Subscription

DEFAULT_SNAPSHOT_INTERVAL_MS = 5000


class WireModel(BaseModel):
    """A backend object: unknown keys ignored (reported by the parser), values checked strictly."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, validate_by_alias=True,
                              validate_by_name=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        """An optional field sent as null is a field not sent (older and newer backends do both)."""
        if isinstance(data, dict):
            optional = {f.alias or name for name, f in cls.model_fields.items() if not f.is_required()}
            return {k: v for k, v in data.items() if not (v is None and k in optional)}
        return data

    @classmethod
    def unknown_keys(cls, obj: object) -> list[str]:
        """The keys of a received object that this model does not know (ignored, never refused)."""
        if not isinstance(obj, dict):
            return []
        known = {f.alias or name for name, f in cls.model_fields.items()}
        return sorted(k for k in obj if k not in known)


_CROP_KEYS = ("cropX1", "cropY1", "cropX2", "cropY2")


class WireSubscription(WireModel):
    """One display watching one camera: the payload of `subscribe`, an item of `setSubscriptionList`."""

    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")
    rtsp_url: RtspUrl | None = Field(None, alias="rtspUrl")
    snapshot_url: HttpUrl | None = Field(None, alias="snapshotUrl")
    snapshot_interval: SnapshotInterval = Field(DEFAULT_SNAPSHOT_INTERVAL_MS, alias="snapshotInterval")
    model_url: ModelUrl = Field(alias="modelUrl")
    model_name: ModelName | None = Field(None, alias="modelName")
    model_id: ModelId | None = Field(None, alias="modelId")
    crop_x1: CropCoord | None = Field(None, alias="cropX1")
    crop_y1: CropCoord | None = Field(None, alias="cropY1")
    crop_x2: CropCoord | None = Field(None, alias="cropX2")
    crop_y2: CropCoord | None = Field(None, alias="cropY2")
    crop_x: CropCoord | None = Field(None, alias="cropX")  # older backends: the top-left offset only
    crop_y: CropCoord | None = Field(None, alias="cropY")

    @model_validator(mode="after")
    def _consistent(self) -> WireSubscription:
        if self.rtsp_url is None and self.snapshot_url is None:
            raise ValueError("needs a source: rtspUrl or snapshotUrl")
        box = {"cropX1": self.crop_x1, "cropY1": self.crop_y1, "cropX2": self.crop_x2, "cropY2": self.crop_y2}
        given = [k for k, v in box.items() if v is not None]
        legacy = {"cropX": self.crop_x, "cropY": self.crop_y}
        legacy_given = [k for k, v in legacy.items() if v is not None]
        if given and len(given) != len(box):
            missing = ", ".join(k for k in box if k not in given)
            raise ValueError(f"cropX1, cropY1, cropX2 and cropY2 go together (missing {missing})")
        if not given and legacy_given and len(legacy_given) != len(legacy):
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

    def to_subscription(self) -> Subscription:
        """Our own subscription (the one the worker runs). RTSP wins when both sources are given."""
        if self.rtsp_url is not None:
            source = SourceSettings(kind="rtsp", url=self.rtsp_url)
        else:
            assert self.snapshot_url is not None  # the validator guarantees a source
            source = SourceSettings(kind="snapshot", url=self.snapshot_url, snapshot_interval_ms=self.snapshot_interval)
        crop = None
        if self.crop_x1 is not None:  # the four-corner form wins over a legacy pair sent beside it
            crop = Crop(x1=self.crop_x1, y1=self.crop_y1, x2=self.crop_x2, y2=self.crop_y2)
        elif self.crop_x is not None and self.crop_y is not None:
            crop = Crop(x1=self.crop_x, y1=self.crop_y)
        return Subscription(subscription_identifier=self.subscription_identifier, source=source,
                            model=ModelRef(url=self.model_url, id=self.model_id, name=self.model_name), crop=crop)


class WireUnsubscribe(WireModel):
    subscription_identifier: SubscriptionIdentifier = Field(alias="subscriptionIdentifier")


class WireSessionId(WireModel):
    display_identifier: DisplayId = Field(alias="displayIdentifier")
    session_id: NullableSessionId = Field(alias="sessionId")  # null clears; int or str kept as sent


class WireProgressionStage(WireModel):
    display_identifier: DisplayId = Field(alias="displayIdentifier")
    progression_stage: ProgressionStage | None = Field(None, alias="progressionStage")


class WirePatchSessionResult(WireModel):
    session_id: SessionId = Field(alias="sessionId")
    success: bool
    message: ResultText | None = None


# ---------------------------------------------------------------------------------------------
# What parse_incoming returns: plain values of our own types, plus what was ignored.


@dataclass(frozen=True)
class RefusedItem:
    """One item of a list that could not be used; the rest of the list was."""

    index: int
    subscription_identifier: str | None  # when the item carried a valid one
    message: str  # "subscriptions[2].rtspUrl: URL scheme must be rtsp or rtsps"


@dataclass(frozen=True)
class _Message:
    ignored: tuple[str, ...] = field(default=(), kw_only=True)  # unknown keys, as paths without indices


@dataclass(frozen=True)
class SetSubscriptionList(_Message):
    """Declarative: the full list wanted now. `subscriptions` holds the usable items (at `indices` in the
    list); `refused` the rest (an existing subscription whose new definition was refused keeps running)."""

    subscriptions: tuple[Subscription, ...]
    refused: tuple[RefusedItem, ...] = ()
    indices: tuple[int, ...] = ()
    type: Literal["setSubscriptionList"] = "setSubscriptionList"


@dataclass(frozen=True)
class Subscribe(_Message):
    subscription: Subscription
    type: Literal["subscribe"] = "subscribe"


@dataclass(frozen=True)
class Unsubscribe(_Message):
    subscription_identifier: str
    type: Literal["unsubscribe"] = "unsubscribe"


@dataclass(frozen=True)
class RequestState(_Message):
    type: Literal["requestState"] = "requestState"


@dataclass(frozen=True)
class SetSessionId(_Message):
    display_identifier: str
    session_id: int | str | None
    type: Literal["setSessionId"] = "setSessionId"


@dataclass(frozen=True)
class SetProgressionStage(_Message):
    display_identifier: str
    progression_stage: str | None
    type: Literal["setProgressionStage"] = "setProgressionStage"


@dataclass(frozen=True)
class PatchSessionResult(_Message):
    session_id: int | str
    success: bool
    message: str | None
    type: Literal["patchSessionResult"] = "patchSessionResult"


IncomingMessage = (SetSubscriptionList | Subscribe | Unsubscribe | RequestState | SetSessionId
                   | SetProgressionStage | PatchSessionResult)
INCOMING_TYPES: frozenset[str] = frozenset({"setSubscriptionList", "subscribe", "unsubscribe", "requestState",
                                            "setSessionId", "setProgressionStage", "patchSessionResult"})
