"""One backend WebSocket frame → one of our incoming messages, or a ProtocolError.

Where the command's data sits is read tolerantly: `setSubscriptionList` carries its list at the
top level (`subscriptions`, as the original worker's documentation shows it), in `payload` as a
list, or in `payload.subscriptions`; other commands carry an object in `payload`, or, when there
is no `payload`, their fields beside `type`. Unknown keys are ignored and reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from detector_worker.config.base import describe_validation_error, format_loc, quote
from detector_worker.config.fields import is_subscription_identifier
from detector_worker.limits import MAX_SUBSCRIPTIONS

from .errors import ErrorCode, ProtocolError
from .incoming import (
    INCOMING_TYPES,
    IncomingMessage,
    PatchSessionResult,
    RefusedItem,
    RequestState,
    SetProgressionStage,
    SetSessionId,
    SetSubscriptionList,
    Subscribe,
    Unsubscribe,
    WireModel,
    WirePatchSessionResult,
    WireProgressionStage,
    WireSessionId,
    WireSubscription,
    WireUnsubscribe,
)

MAX_MESSAGE_BYTES = 1_048_576
OUTGOING_TYPES: frozenset[str] = frozenset({"imageDetection", "stateReport", "patchSession", "error"})
# No object of this protocol has more than 13 keys; newer backends may add some, ignored. This only bounds
# the work an absurd message can cause (the 1 MiB size limit bounds the rest).
_MAX_OBJECT_KEYS = 1024
_JSON_MAX_INT_DIGITS = 400
_ENVELOPE_KEYS = frozenset({"type", "payload"})


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
            raise _JsonRefused(f"duplicate key {quote(key)}")
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


def _text(raw: str | bytes | bytearray | memoryview, max_bytes: int) -> str:
    if isinstance(raw, bytes | bytearray | memoryview):
        size = len(raw)
        if size > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}")
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid UTF-8 (at byte {err.start})") from None
    if isinstance(raw, str):
        if len(raw) > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is over {max_bytes} bytes, the limit")
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}")
        return raw
    raise TypeError(f"expected str or bytes, got {type(raw).__name__}")


def _invalid(err: ValidationError, type_: str, prefix: tuple[str | int, ...],
             subscription_identifier: str | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, describe_validation_error(err, prefix=prefix, top_level=""), type_,
                         subscription_identifier=subscription_identifier)


def _identifier_of(item: object) -> str | None:
    candidate = item.get("subscriptionIdentifier") if isinstance(item, dict) else None
    return candidate if is_subscription_identifier(candidate) else None


def _ignored(model: type[WireModel], obj: object, where: str) -> list[str]:
    return [f"{where}.{key}" if where else key for key in model.unknown_keys(obj)]


def _command_object(data: Mapping[str, Any], type_: str) -> tuple[Any, tuple[str | int, ...], list[str]]:
    """A command's data object: `payload`, or the envelope itself when there is none; with its path and
    the envelope keys that are not part of it (ignored)."""
    if "payload" in data and data["payload"] is not None:
        return data["payload"], ("payload",), [k for k in data if k not in _ENVELOPE_KEYS]
    return {k: v for k, v in data.items() if k not in _ENVELOPE_KEYS}, (), []


def _subscription_list(data: Mapping[str, Any]) -> tuple[Any, tuple[str | int, ...], list[str]]:
    if data.get("subscriptions") is not None:  # null means absent, as everywhere
        return data["subscriptions"], ("subscriptions",), [k for k in data if k not in {"type", "subscriptions"}]
    payload = data.get("payload")
    if isinstance(payload, dict) and payload.get("subscriptions") is not None:
        ignored = [k for k in data if k not in _ENVELOPE_KEYS] + [f"payload.{k}" for k in payload
                                                                   if k != "subscriptions"]
        return payload["subscriptions"], ("payload", "subscriptions"), ignored
    if "payload" in data:
        return payload, ("payload",), [k for k in data if k not in _ENVELOPE_KEYS]
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, "subscriptions: is required (a list of subscriptions, at the top "
                                                   "level or in payload)", "setSubscriptionList")


def _parse_list(data: Mapping[str, Any]) -> SetSubscriptionList:
    items, prefix, ignored = _subscription_list(data)
    where = format_loc(prefix)
    if not isinstance(items, list):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{where}: must be a list of subscriptions",
                            "setSubscriptionList")
    if len(items) > MAX_SUBSCRIPTIONS:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"{where}: {len(items)} subscriptions; the gateway takes at "
                                                      f"most {MAX_SUBSCRIPTIONS} (nothing was changed)",
                            "setSubscriptionList")
    accepted: list[WireSubscription] = []
    indices: list[int] = []
    refused: list[RefusedItem] = []
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        identifier = _identifier_of(raw)
        ignored.extend(f"{where}[].{key}" for key in WireSubscription.unknown_keys(raw))
        try:
            item = WireSubscription.model_validate(raw)
        except ValidationError as err:
            why = describe_validation_error(err, prefix=(*prefix, index), top_level="")
            refused.append(RefusedItem(index, identifier, why))
            continue
        seen = first_seen.setdefault(item.subscription_identifier, index)
        if seen != index:
            refused.append(RefusedItem(index, identifier, f"{format_loc((*prefix, index))}.subscriptionIdentifier: "
                                                          f"duplicate (first at {format_loc((*prefix, seen))})"))
            continue
        accepted.append(item)
        indices.append(index)
    return SetSubscriptionList(tuple(s.to_subscription() for s in accepted), tuple(refused), tuple(indices),
                               ignored=tuple(sorted(set(ignored))))


def _validate(model: type[WireModel], obj: Any, type_: str, prefix: tuple[str | int, ...]) -> WireModel:
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        raise _invalid(err, type_, prefix, _identifier_of(obj)) from None


def parse_incoming(raw: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> IncomingMessage:
    """One backend message (a WebSocket text or binary frame) as one of our messages.

    Raises ProtocolError (and nothing else) for anything that cannot be used at all; a list with
    some bad items comes back with those items in `refused`."""
    data = _decode_json(_text(raw, max_bytes))
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'a message must be a JSON object with a "type"')
    if "type" not in data:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type: is required")
    type_ = data["type"]
    if not isinstance(type_, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type: must be a string")
    if type_ not in INCOMING_TYPES:
        if type_ in OUTGOING_TYPES:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: {quote(type_)} is sent by the gateway, not to it")
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: unknown message type {quote(type_)}; expected one of "
                                                    f"{', '.join(sorted(INCOMING_TYPES))}")
    try:
        return _parse_known(data, type_)
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message is nested too deeply", type_) from None


def _parse_known(data: Mapping[str, Any], type_: str) -> IncomingMessage:
    if type_ == "setSubscriptionList":
        return _parse_list(data)
    if type_ == "requestState":
        return RequestState(ignored=tuple(k for k in data if k not in _ENVELOPE_KEYS))
    obj, prefix, ignored = _command_object(data, type_)
    where = format_loc(prefix)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{where or 'message'}: must be an object", type_)
    model = _COMMAND_MODELS[type_]
    wire = _validate(model, obj, type_, prefix)
    extra = tuple([*ignored, *_ignored(model, obj, where)])
    if isinstance(wire, WireSubscription):
        return Subscribe(wire.to_subscription(), ignored=extra)
    if isinstance(wire, WireUnsubscribe):
        return Unsubscribe(wire.subscription_identifier, ignored=extra)
    if isinstance(wire, WireSessionId):
        return SetSessionId(wire.display_identifier, wire.session_id, ignored=extra)
    if isinstance(wire, WireProgressionStage):
        return SetProgressionStage(wire.display_identifier, wire.progression_stage, ignored=extra)
    assert isinstance(wire, WirePatchSessionResult)
    return PatchSessionResult(wire.session_id, wire.success, wire.message, ignored=extra)


_COMMAND_MODELS: Mapping[str, type[WireModel]] = {
    "subscribe": WireSubscription, "unsubscribe": WireUnsubscribe, "setSessionId": WireSessionId,
    "setProgressionStage": WireProgressionStage, "patchSessionResult": WirePatchSessionResult,
}
