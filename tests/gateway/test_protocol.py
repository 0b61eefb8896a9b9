"""The backend protocol: the original worker's documented examples, the tolerant reader's accepted forms, every refusal
rule (whole message or one item), the outgoing messages, and property tests on hostile input.

The per-item property test against an independent oracle is in test_protocol_properties.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from detector_worker import limits
from detector_worker.config.spec import Crop, ModelRef, SourceSettings, Subscription
from gateway.protocol import (
    INCOMING_TYPES,
    MAX_MESSAGE_BYTES,
    CameraConnection,
    DetectionBody,
    DetectionData,
    ErrorCode,
    ErrorMessage,
    ImageDetection,
    PatchSession,
    PatchSessionPayload,
    PatchSessionResult,
    ProtocolError,
    RefusedItem,
    RequestState,
    SetProgressionStage,
    SetSessionId,
    SetSubscriptionList,
    StateReport,
    Subscribe,
    Unsubscribe,
    dump_outgoing,
    error_message,
    parse_incoming,
    split_subscription_identifier,
)

# database=None: no .hypothesis/ directory in the shared tree; failures print their reproducing example.
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])

# ---------------------------------------------------------------------------------------------
# The messages as the original worker's documentation shows them (docs/protocol.md)

RECORD_SUBSCRIPTION: dict[str, Any] = {
    "subscriptionIdentifier": "display-001;cam-001",
    "rtspUrl": "rtsp://user:pass@host:554/stream",
    "snapshotUrl": "http://host/snapshot/1",
    "snapshotInterval": 5000,
    "modelUrl": "http://storage/models/pipeline.mpta",
    "modelName": "Car Frontal Pipeline",
    "modelId": 102,
    "cropX1": 100, "cropY1": 200, "cropX2": 740, "cropY2": 680,
}
RECORD_SPEC = Subscription(
    subscription_identifier="display-001;cam-001",
    source=SourceSettings(kind="rtsp", url="rtsp://user:pass@host:554/stream", snapshot_interval_ms=5000),
    model=ModelRef(url="http://storage/models/pipeline.mpta", id=102, name="Car Frontal Pipeline"),
    crop=Crop(x1=100, y1=200, x2=740, y2=680),
)
RECORD_IMAGE_DETECTION: dict[str, Any] = {
    "type": "imageDetection",
    "subscriptionIdentifier": "display-001;cam-001",
    "timestamp": "2025-07-14T12:34:56.789Z",
    "data": {"detection": {"carBrand": "Honda", "carYear": 2023, "bodyType": "Sedan",
                           "licensePlateText": "ABCD1234", "licensePlateConfidence": 0.95},
             "modelId": 101, "modelName": "US-LPR-and-Vehicle-ID"},
}
RECORD_STATE_REPORT: dict[str, Any] = {
    "type": "stateReport",
    "cpuUsage": 12.5, "memoryUsage": 40.1, "gpuUsage": 0, "gpuMemoryUsage": 25.1,
    "cameraConnections": [{"subscriptionIdentifier": "display-001;cam-001",
                           "modelId": 101, "modelName": "General Object Detection",
                           "online": True}],
}

S = "subscribe"
L = "setSubscriptionList"
INVALID = ErrorCode.INVALID_MESSAGE


def sub(**changes: Any) -> dict[str, Any]:
    """The record's subscription with `changes` (a value of ... removes the key)."""
    result = copy.deepcopy(RECORD_SUBSCRIPTION)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def no_crop(**changes: Any) -> dict[str, Any]:
    return sub(cropX1=..., cropY1=..., cropX2=..., cropY2=..., **changes)


def parse(obj: Any) -> Any:
    return parse_incoming(obj if isinstance(obj, str | bytes) else json.dumps(obj))


def reject(obj: Any, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_incoming(obj if isinstance(obj, str | bytes) else json.dumps(obj), **kwargs)
    return info.value


def one_subscription(obj: Any) -> Subscription:
    msg = parse(obj)
    assert isinstance(msg, Subscribe), msg
    return msg.subscription


# The three shapes of setSubscriptionList: (build the message from a list, the path of its items)
LIST_SHAPES: dict[str, tuple[Callable[[list[Any]], dict[str, Any]], str]] = {
    "top-level": (lambda items: {"type": L, "subscriptions": items}, "subscriptions"),
    "payload list": (lambda items: {"type": L, "payload": items}, "payload"),
    "payload object": (lambda items: {"type": L, "payload": {"subscriptions": items}}, "payload.subscriptions"),
}


def as_list(shape: str, items: list[Any]) -> dict[str, Any]:
    return LIST_SHAPES[shape][0](items)


def test_record_subscription_parses_in_every_shape_into_our_subscription() -> None:
    one = one_subscription({"type": S, "payload": RECORD_SUBSCRIPTION})
    assert one == RECORD_SPEC  # RTSP wins when both sources are given (as the documented example does)
    assert (one.display_id, one.camera_id) == ("display-001", "cam-001")
    assert one_subscription({"type": S, **RECORD_SUBSCRIPTION}) == one  # fields beside `type`
    for shape in LIST_SHAPES:
        msg = parse(as_list(shape, [RECORD_SUBSCRIPTION]))
        assert isinstance(msg, SetSubscriptionList)
        assert msg == SetSubscriptionList(subscriptions=(one,), refused=(), indices=(0,), ignored=()), shape


def test_record_image_detection_round_trips() -> None:
    msg = ImageDetection.model_validate(RECORD_IMAGE_DETECTION)
    out = json.loads(dump_outgoing(msg))
    # Our seven detection fields are always sent (null when unknown); everything the example has is kept.
    expected = copy.deepcopy(RECORD_IMAGE_DETECTION)
    expected["data"]["detection"] |= {"carBrandConfidence": None, "bodyTypeConfidence": None, "carBox": None,
                                      "frontalBox": None, "trackId": None}
    assert out == expected
    assert ImageDetection.model_validate(out) == msg


def test_record_state_report_round_trips_exactly() -> None:
    msg = StateReport.model_validate(RECORD_STATE_REPORT)
    assert json.loads(dump_outgoing(msg)) == RECORD_STATE_REPORT
    assert StateReport.model_validate_json(dump_outgoing(msg)) == msg


def test_parsed_messages_are_frozen() -> None:
    msg = parse({"type": L, "subscriptions": [RECORD_SUBSCRIPTION, sub(rtspUrl="x")]})
    with pytest.raises(AttributeError):
        msg.subscriptions = ()
    with pytest.raises(AttributeError):
        msg.refused[0].index = 5
    with pytest.raises(ValidationError):
        msg.subscriptions[0].subscription_identifier = "a;b"


# ---------------------------------------------------------------------------------------------
# Every accepted form


def test_subscription_defaults_and_snapshot_source() -> None:
    s = one_subscription({"type": S, "payload": no_crop(rtspUrl=..., snapshotInterval=..., modelName=...)})
    assert s.source == SourceSettings(kind="snapshot", url="http://host/snapshot/1", snapshot_interval_ms=5000)
    assert s.crop is None and s.model == ModelRef(url="http://storage/models/pipeline.mpta", id=102)
    s = one_subscription({"type": S, "payload": no_crop(rtspUrl=..., snapshotInterval=250)})
    assert s.source.snapshot_interval_ms == 250


def test_model_id_is_optional() -> None:
    s = one_subscription({"type": S, "payload": sub(modelId=...)})
    assert s.model.id is None
    conn = json.loads(CameraConnection.from_subscription(s, online=True).model_dump_json())
    assert conn["modelId"] is None  # always sent, null when the backend gave none


def test_null_optional_fields_mean_absent() -> None:
    nulls = {k: None for k in ("snapshotUrl", "snapshotInterval", "modelName", "modelId", "cropX1", "cropY1",
                               "cropX2", "cropY2", "cropX", "cropY")}
    s = one_subscription({"type": S, "payload": sub(**nulls)})
    assert s.source == SourceSettings(kind="rtsp", url=RECORD_SUBSCRIPTION["rtspUrl"])
    assert s.model == ModelRef(url=RECORD_SUBSCRIPTION["modelUrl"]) and s.crop is None
    s = one_subscription({"type": S, "payload": no_crop(rtspUrl=None)})
    assert s.source.kind == "snapshot"
    for shape in LIST_SHAPES:
        msg = parse(as_list(shape, [sub(**nulls)]))
        assert msg.subscriptions == (one_subscription({"type": S, "payload": sub(**nulls)}),) and not msg.refused
    # commands: a null payload is no payload (the fields beside `type` are read); null optional fields
    assert parse({"type": "unsubscribe", "payload": None, "subscriptionIdentifier": "d;c"}) == Unsubscribe("d;c")
    assert parse({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": None}}) \
        == SetProgressionStage("d", None)
    assert parse({"type": "setProgressionStage", "payload": {"displayIdentifier": "d"}}) == SetProgressionStage("d",
                                                                                                               None)
    assert parse({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": None}}) \
        == PatchSessionResult("s", True, None)


def test_legacy_crop_is_a_top_left_offset() -> None:
    s = one_subscription({"type": S, "payload": no_crop(cropX=10, cropY=20)})
    assert s.crop == Crop(x1=10, y1=20) and s.crop.x2 is None and s.crop.y2 is None
    conn = CameraConnection.from_subscription(s, online=True)
    assert json.loads(conn.model_dump_json()) == {"subscriptionIdentifier": "display-001;cam-001", "modelId": 102,
                                                  "modelName": "Car Frontal Pipeline", "online": True,
                                                  "cropX1": 10, "cropY1": 20}


def test_the_four_corner_crop_wins_over_a_legacy_pair_beside_it() -> None:
    # Was refused ("give either ... not both"); a tolerant reader takes the complete form.
    s = one_subscription({"type": S, "payload": sub(cropX=1, cropY=2)})
    assert s.crop == Crop(x1=100, y1=200, x2=740, y2=680)


@pytest.mark.parametrize("url", ["http://storage/m.mpta", "HTTPS://s:8443/a/b.mpta?sig=x%20y", "file:///srv/m.mpta",
                                 "file://localhost/srv/m.mpta"])
def test_model_url_forms(url: str) -> None:
    assert one_subscription({"type": S, "payload": sub(modelUrl=url)}).model.url == url


@pytest.mark.parametrize("model_id", [0, 102, 2**63 - 1, "car_frontal_detection_v1", "x" * limits.MAX_MODEL_ID,
                                      "102"])
def test_model_id_forms_keep_their_type(model_id: int | str) -> None:
    got = one_subscription({"type": S, "payload": sub(modelId=model_id)}).model.id
    assert got == model_id and type(got) is type(model_id)


@pytest.mark.parametrize("shape", list(LIST_SHAPES))
def test_empty_subscription_list_is_valid(shape: str) -> None:
    assert parse(as_list(shape, [])) == SetSubscriptionList(subscriptions=())


def test_the_top_level_list_wins_over_a_payload_beside_it() -> None:
    msg = parse({"type": L, "subscriptions": [sub()], "payload": [sub(subscriptionIdentifier="d;other")]})
    assert [s.subscription_identifier for s in msg.subscriptions] == ["display-001;cam-001"]
    assert msg.ignored == ("payload",)


def test_unsubscribe() -> None:
    msg = parse({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "display-001;cam-001"}})
    assert msg == Unsubscribe(subscription_identifier="display-001;cam-001")
    assert split_subscription_identifier(msg.subscription_identifier) == ("display-001", "cam-001")


@pytest.mark.parametrize("text", ['{"type":"requestState"}', '{"type":"requestState","payload":null}',
                                  '{"type":"requestState","payload":{}}', b'{"type": "requestState"}',
                                  '{"type":"requestState","payload":{"full":true}}',
                                  '{"type":"requestState","payload":[]}'])
def test_request_state_forms(text: str | bytes) -> None:
    # whatever comes with it is ignored (was: anything but absent/null/{} refused)
    msg = parse_incoming(text)
    assert isinstance(msg, RequestState)
    assert msg.ignored in ((), ("payload",))


@pytest.mark.parametrize("given", ["s-1", 12345, 0, -1, -(2**63), 2**63 - 1, None, "ünïcödé 会话", "12345",
                                   "s" * limits.MAX_SESSION_ID])
def test_set_session_id_keeps_the_type_it_came_with(given: Any) -> None:
    msg = parse({"type": "setSessionId", "payload": {"displayIdentifier": "display-001", "sessionId": given}})
    assert msg == SetSessionId(display_identifier="display-001", session_id=given)
    assert type(msg.session_id) is type(given)  # 12345 stays an integer, "12345" a string


@pytest.mark.parametrize("stage", ["fueling", "car_wait_staff", "", None, "x" * limits.MAX_STAGE])
def test_set_progression_stage(stage: str | None) -> None:
    msg = parse({"type": "setProgressionStage", "payload": {"displayIdentifier": "d1", "progressionStage": stage}})
    assert msg == SetProgressionStage(display_identifier="d1", progression_stage=stage)


def test_patch_session_result() -> None:
    msg = parse({"type": "patchSessionResult", "payload": {"sessionId": 7, "success": False,
                                                            "message": "row locked\nretry later"}})
    assert msg == PatchSessionResult(session_id=7, success=False, message="row locked\nretry later")
    assert type(msg.session_id) is int
    assert parse({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True}}).message is None


COMMANDS_WITHOUT_PAYLOAD: list[tuple[dict[str, Any], Any]] = [
    ({"type": S, **RECORD_SUBSCRIPTION}, Subscribe(RECORD_SPEC)),
    ({"type": "unsubscribe", "subscriptionIdentifier": "d;c"}, Unsubscribe("d;c")),
    ({"type": "setSessionId", "displayIdentifier": "d", "sessionId": 12345}, SetSessionId("d", 12345)),
    ({"type": "setSessionId", "displayIdentifier": "d", "sessionId": None}, SetSessionId("d", None)),
    ({"type": "setProgressionStage", "displayIdentifier": "d", "progressionStage": "fueling"},
     SetProgressionStage("d", "fueling")),
    ({"type": "patchSessionResult", "sessionId": "s", "success": True}, PatchSessionResult("s", True, None)),
]


@pytest.mark.parametrize(("message", "expected"), COMMANDS_WITHOUT_PAYLOAD,
                         ids=[m["type"] + str(i) for i, (m, _) in enumerate(COMMANDS_WITHOUT_PAYLOAD)])
def test_commands_without_payload_take_the_fields_beside_type(message: dict[str, Any], expected: Any) -> None:
    assert parse(message) == expected
    fields = {k: v for k, v in message.items() if k != "type"}
    assert parse({"type": message["type"], "payload": fields}) == expected  # the same in `payload`
    assert parse({**message, "payload": None}) == expected  # a null payload is no payload
    # with a payload, the fields beside `type` are not read (they are ignored, and reported)
    beside = parse({**message, "payload": fields | {"extra": 1}})
    assert beside.ignored[: len(fields)] == tuple(fields) and beside.ignored[-1] == "payload.extra"


def test_commands_without_payload_report_paths_without_prefix() -> None:
    err = reject({"type": S, **sub(rtspUrl="http://cam/x")})
    assert err.message == "rtspUrl: URL scheme must be rtsp or rtsps"
    assert err.subscription_identifier == "display-001;cam-001"
    assert reject({"type": "unsubscribe"}).message == "subscriptionIdentifier: is required"
    assert reject({"type": "setSessionId", "displayIdentifier": "d"}).message == "sessionId: is required"


# ---------------------------------------------------------------------------------------------
# Unknown keys: ignored everywhere, and reported


IGNORED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("envelope", {"type": "requestState", "requestId": 1}, ("requestId",)),
    ("list envelope", {"type": L, "subscriptions": [], "requestId": 1, "version": "2"}, ("requestId", "version")),
    ("list item", {"type": L, "subscriptions": [sub(displayName="Pump 1")]}, ("subscriptions[].displayName",)),
    ("list items, reported once", {"type": L, "payload": [sub(displayName="a", subscriptionIdentifier="d;1"),
                                                          sub(displayName="b", zone=2, subscriptionIdentifier="d;2")]},
     ("payload[].displayName", "payload[].zone")),
    ("payload object", {"type": L, "payload": {"subscriptions": [sub(x=1)], "replace": True}, "requestId": 7},
     ("payload.replace", "payload.subscriptions[].x", "requestId")),
    ("subscribe payload", {"type": S, "payload": sub(cameraIdentifier="x"), "requestId": 1},
     ("requestId", "payload.cameraIdentifier")),
    ("subscribe envelope", {"type": S, **sub(cameraIdentifier="x")}, ("cameraIdentifier",)),
    ("snake_case spelling", {"type": S, "payload": sub(rtsp_url="rtsp://other/x")}, ("payload.rtsp_url",)),
    ("unsubscribe", {"type": "unsubscribe", "payload": {"subscriptionIdentifier": "d;c", "force": True}},
     ("payload.force",)),
    ("setSessionId", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": 1, "ts": 0}},
     ("payload.ts",)),
    ("setProgressionStage", {"type": "setProgressionStage", "displayIdentifier": "d", "progressionStage": "p",
                             "at": "now"}, ("at",)),
    ("patchSessionResult", {"type": "patchSessionResult", "payload": {"sessionId": 1, "success": True, "code": 0}},
     ("payload.code",)),
    ("hostile key", {"type": "requestState", "a\nb": 1, "": 2, "%(here)s": 3}, ("", "%(here)s", "a\nb")),
]


@pytest.mark.parametrize(("message", "ignored"), [i[1:] for i in IGNORED], ids=[i[0] for i in IGNORED])
def test_unknown_keys_are_ignored_and_reported(message: dict[str, Any], ignored: tuple[str, ...]) -> None:
    msg = parse(message)
    assert sorted(msg.ignored) == sorted(ignored)
    assert not getattr(msg, "refused", ())


def test_a_snake_case_spelling_is_not_read_as_the_field() -> None:
    s = one_subscription({"type": S, "payload": sub(rtsp_url="rtsp://other/x", model_id=5)})
    assert s.source.url == RECORD_SUBSCRIPTION["rtspUrl"] and s.model.id == 102
    err = reject({"type": S, "payload": sub(rtspUrl=..., snapshotUrl=..., rtsp_url="rtsp://other/x")})
    assert err.message == "payload: needs a source: rtspUrl or snapshotUrl"


def test_ignored_keys_of_a_refused_item_do_not_change_its_refusal() -> None:
    msg = parse({"type": L, "subscriptions": [sub(rtspUrl="http://x/", extra=1)]})
    assert msg.subscriptions == () and [r.message for r in msg.refused] == [
        "subscriptions[0].rtspUrl: URL scheme must be rtsp or rtsps"]


# ---------------------------------------------------------------------------------------------
# Refusals of a whole message: the right code, and a message that starts with the field path

REJECTIONS: list[tuple[str, Any, ErrorCode, str, str | None]] = [
    # (id, message, code, message starts with, request type)
    ("not json", "{nope", ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("not utf8", b'{"type": "\xff"}', ErrorCode.INVALID_JSON, "not valid UTF-8", None),
    ("overlong utf8", b'{"type": "requestState", "x": "\xc0\xaf"}', ErrorCode.INVALID_JSON, "not valid UTF-8", None),
    ("NaN", '{"type": "subscribe", "payload": NaN}', ErrorCode.INVALID_JSON, "not valid JSON: NaN", None),
    ("NaN in an ignored key", '{"type": "requestState", "x": NaN}', ErrorCode.INVALID_JSON, "not valid JSON: NaN",
     None),
    ("infinity", '{"type": 1e999}', ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("duplicate key", '{"type": "requestState", "type": "subscribe"}', ErrorCode.INVALID_JSON,
     'not valid JSON: duplicate key "type"', None),
    ("duplicate key in an item", '{"type": "setSubscriptionList", "subscriptions": [{"a": 1, "a": 2}]}',
     ErrorCode.INVALID_JSON, 'not valid JSON: duplicate key "a"', None),
    ("deep", "[" * 50_000 + "]" * 50_000, ErrorCode.INVALID_JSON, "not valid JSON: nested too deeply", None),
    ("huge int", '{"type": ' + "9" * 5000 + "}", ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("array", [1, 2], INVALID, "a message must be a JSON object", None),
    ("no type", {"payload": {}}, INVALID, "type: is required", None),
    ("type not str", {"type": 3}, INVALID, "type: must be a string", None),
    ("type null", {"type": None}, INVALID, "type: must be a string", None),
    ("unknown type", {"type": "subscribeAll"}, ErrorCode.UNKNOWN_TYPE, 'type: unknown message type "subscribeAll"',
     None),
    ("our own type", {"type": "stateReport"}, ErrorCode.UNKNOWN_TYPE, 'type: "stateReport" is sent by the gateway',
     None),
    ("no fields", {"type": S}, INVALID, "subscriptionIdentifier: is required (and 1 more problem)", S),
    ("payload not object", {"type": S, "payload": [RECORD_SUBSCRIPTION]}, INVALID, "payload: must be an object", S),
    # subscriptionIdentifier
    ("id missing", {"type": S, "payload": sub(subscriptionIdentifier=...)}, INVALID,
     "payload.subscriptionIdentifier: is required", S),
    ("id null", {"type": S, "payload": sub(subscriptionIdentifier=None)}, INVALID,
     "payload.subscriptionIdentifier: must be a string", S),
    ("id no ;", {"type": S, "payload": sub(subscriptionIdentifier="display-001")}, INVALID,
     'payload.subscriptionIdentifier: must be "<displayId>;<cameraId>" with exactly one ";"', S),
    ("id two ;", {"type": S, "payload": sub(subscriptionIdentifier="a;b;c")}, INVALID,
     "payload.subscriptionIdentifier: must be", S),
    ("id empty display", {"type": S, "payload": sub(subscriptionIdentifier=";cam")}, INVALID,
     'payload.subscriptionIdentifier: display id (before ";") must not be empty', S),
    ("id empty camera", {"type": S, "payload": sub(subscriptionIdentifier="d;")}, INVALID,
     'payload.subscriptionIdentifier: camera id (after ";") must not be empty', S),
    ("id long display", {"type": S, "payload": sub(subscriptionIdentifier="d" * (limits.MAX_ID + 1) + ";c")},
     INVALID, f'payload.subscriptionIdentifier: display id (before ";") must be at most {limits.MAX_ID} characters',
     S),
    ("id long camera", {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * (limits.MAX_ID + 1))},
     INVALID, f'payload.subscriptionIdentifier: camera id (after ";") must be at most {limits.MAX_ID} characters', S),
    ("id over the total", {"type": S, "payload": sub(subscriptionIdentifier="d" * limits.MAX_ID + ";"
                                                     + "c" * limits.MAX_ID + "c")}, INVALID,
     f"payload.subscriptionIdentifier: must be at most {limits.MAX_SUBSCRIPTION_ID} characters", S),
    ("id far too long", {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * 10_000)}, INVALID,
     f"payload.subscriptionIdentifier: must be at most {limits.MAX_SUBSCRIPTION_ID} characters", S),
    ("id control", {"type": S, "payload": sub(subscriptionIdentifier="d;c\n")}, INVALID,
     "payload.subscriptionIdentifier: must not contain control or invisible characters (U+000A", S),
    ("id NUL", {"type": S, "payload": sub(subscriptionIdentifier="d\x00;c")}, INVALID,
     "payload.subscriptionIdentifier: must not contain control", S),
    ("id bidi", {"type": S, "payload": sub(subscriptionIdentifier="d\u202e;c")}, INVALID,
     "payload.subscriptionIdentifier: must not contain control or invisible characters (U+202E", S),
    ("id padded", {"type": S, "payload": sub(subscriptionIdentifier="d ;c")}, INVALID,
     'payload.subscriptionIdentifier: display id (before ";") must not start or end with whitespace', S),
    ("id not str", {"type": S, "payload": sub(subscriptionIdentifier=["d", "c"])}, INVALID,
     "payload.subscriptionIdentifier: must be a string", S),
    # sources
    ("no source", {"type": S, "payload": sub(rtspUrl=..., snapshotUrl=...)}, INVALID,
     "payload: needs a source: rtspUrl or snapshotUrl", S),
    ("null sources", {"type": S, "payload": sub(rtspUrl=None, snapshotUrl=None)}, INVALID,
     "payload: needs a source: rtspUrl or snapshotUrl", S),
    ("rtsp scheme", {"type": S, "payload": sub(rtspUrl="http://cam/stream")}, INVALID,
     "payload.rtspUrl: URL scheme must be rtsp or rtsps", S),
    ("snapshot scheme", {"type": S, "payload": sub(snapshotUrl="rtsp://cam/x")}, INVALID,
     "payload.snapshotUrl: URL scheme must be http or https", S),
    ("url spaces", {"type": S, "payload": sub(rtspUrl="rtsp://cam/a stream")}, INVALID,
     "payload.rtspUrl: must not contain spaces", S),
    ("url newline", {"type": S, "payload": sub(snapshotUrl="http://cam/a\nb")}, INVALID,
     "payload.snapshotUrl: must not contain control", S),
    ("url too long", {"type": S, "payload": sub(rtspUrl="rtsp://cam/" + "a" * 4090)}, INVALID,
     f"payload.rtspUrl: must be at most {limits.MAX_URL} characters", S),
    ("url no host", {"type": S, "payload": sub(rtspUrl="rtsp:///stream")}, INVALID,
     "payload.rtspUrl: URL must name a host", S),
    ("url bad port", {"type": S, "payload": sub(rtspUrl="rtsp://cam:99999/x")}, INVALID,
     "payload.rtspUrl: URL port must be a number", S),
    ("url broken", {"type": S, "payload": sub(rtspUrl="rtsp://[::1/x")}, INVALID,
     "payload.rtspUrl: is not a valid URL", S),
    ("url empty", {"type": S, "payload": sub(rtspUrl="")}, INVALID, "payload.rtspUrl: must not be empty", S),
    ("url not str", {"type": S, "payload": sub(rtspUrl=5)}, INVALID, "payload.rtspUrl: must be a string", S),
    ("interval low", {"type": S, "payload": sub(snapshotInterval=99)}, INVALID,
     "payload.snapshotInterval: must be at least 100", S),
    ("interval high", {"type": S, "payload": sub(snapshotInterval=3_600_001)}, INVALID,
     "payload.snapshotInterval: must be at most 3600000", S),
    ("interval str", {"type": S, "payload": sub(snapshotInterval="5000")}, INVALID,
     "payload.snapshotInterval: must be an integer", S),
    ("interval float", {"type": S, "payload": sub(snapshotInterval=5000.0)}, INVALID,
     "payload.snapshotInterval: must be an integer", S),
    ("interval bool", {"type": S, "payload": sub(snapshotInterval=True)}, INVALID,
     "payload.snapshotInterval: must be an integer", S),
    # model
    ("model url missing", {"type": S, "payload": sub(modelUrl=...)}, INVALID, "payload.modelUrl: is required", S),
    ("model url null", {"type": S, "payload": sub(modelUrl=None)}, INVALID, "payload.modelUrl: must be a string", S),
    ("model url path", {"type": S, "payload": sub(modelUrl="/srv/models/m.mpta")}, INVALID,
     "payload.modelUrl: must be a URL with scheme http, https or file, not a plain path", S),
    ("model url ftp", {"type": S, "payload": sub(modelUrl="ftp://h/m.mpta")}, INVALID,
     "payload.modelUrl: URL scheme must be http, https or file", S),
    ("model url other host", {"type": S, "payload": sub(modelUrl="file://nas/m.mpta")}, INVALID,
     "payload.modelUrl: file:// URL must name this host", S),
    ("model name long", {"type": S, "payload": sub(modelName="n" * (limits.MAX_MODEL_NAME + 1))}, INVALID,
     f"payload.modelName: must be at most {limits.MAX_MODEL_NAME} characters", S),
    ("model name control", {"type": S, "payload": sub(modelName="a\tb")}, INVALID,
     "payload.modelName: must not contain control", S),
    ("model id bool", {"type": S, "payload": sub(modelId=True)}, INVALID,
     "payload.modelId: must be an integer or a string", S),
    ("model id float", {"type": S, "payload": sub(modelId=1.5)}, INVALID,
     "payload.modelId: must be an integer or a string", S),
    ("model id negative", {"type": S, "payload": sub(modelId=-1)}, INVALID, "payload.modelId: must be between", S),
    ("model id over 64 bits", {"type": S, "payload": sub(modelId=2**63)}, INVALID,
     "payload.modelId: must be between", S),
    ("model id long", {"type": S, "payload": sub(modelId="m" * (limits.MAX_MODEL_ID + 1))}, INVALID,
     f"payload.modelId: must be at most {limits.MAX_MODEL_ID} characters", S),
    ("model id empty", {"type": S, "payload": sub(modelId="")}, INVALID, "payload.modelId: must not be empty", S),
    # crop
    ("crop partial", {"type": S, "payload": sub(cropY2=...)}, INVALID,
     "payload: cropX1, cropY1, cropX2 and cropY2 go together (missing cropY2)", S),
    ("crop partial null", {"type": S, "payload": sub(cropX2=None)}, INVALID,
     "payload: cropX1, cropY1, cropX2 and cropY2 go together (missing cropX2)", S),
    ("crop x order", {"type": S, "payload": sub(cropX1=740, cropX2=100)}, INVALID,
     "payload: cropX1 must be less than cropX2", S),
    ("crop y equal", {"type": S, "payload": sub(cropY1=680)}, INVALID, "payload: cropY1 must be less than cropY2", S),
    ("crop negative", {"type": S, "payload": sub(cropX1=-1)}, INVALID, "payload.cropX1: must be at least 0", S),
    ("crop float", {"type": S, "payload": sub(cropY1=200.5)}, INVALID, "payload.cropY1: must be an integer", S),
    ("crop absurd", {"type": S, "payload": sub(cropX2=10**12)}, INVALID,
     f"payload.cropX2: must be at most {limits.MAX_CROP_COORD}", S),
    ("legacy half", {"type": S, "payload": no_crop(cropX=1)}, INVALID,
     "payload: cropX and cropY go together (missing cropY)", S),
    ("legacy half null", {"type": S, "payload": no_crop(cropX=None, cropY=3)}, INVALID,
     "payload: cropX and cropY go together (missing cropX)", S),
    ("legacy absurd", {"type": S, "payload": no_crop(cropX=1, cropY=limits.MAX_CROP_COORD + 1)}, INVALID,
     f"payload.cropY: must be at most {limits.MAX_CROP_COORD}", S),
    # setSubscriptionList as a whole: where the list should be, there is none
    ("no list", {"type": L}, INVALID, "subscriptions: is required (a list of subscriptions, at the top level or in "
                                      "payload)", L),
    ("payload scalar", {"type": L, "payload": "all"}, INVALID, "payload: must be a list of subscriptions", L),
    ("payload null", {"type": L, "payload": None}, INVALID, "payload: must be a list of subscriptions", L),
    ("object without list", {"type": L, "payload": {"items": []}}, INVALID,
     "payload: must be a list of subscriptions", L),
    ("object list scalar", {"type": L, "payload": {"subscriptions": "all"}}, INVALID,
     "payload.subscriptions: must be a list of subscriptions", L),
    ("top-level scalar", {"type": L, "subscriptions": {"d;c": {}}}, INVALID,
     "subscriptions: must be a list of subscriptions", L),
    ("too many items", {"type": L, "subscriptions": [0] * (limits.MAX_SUBSCRIPTIONS + 1)},
     ErrorCode.LIMIT_EXCEEDED, f"subscriptions: {limits.MAX_SUBSCRIPTIONS + 1} subscriptions; the gateway takes at "
                               f"most {limits.MAX_SUBSCRIPTIONS} (nothing was changed)", L),
    # unsubscribe
    ("unsubscribe empty", {"type": "unsubscribe", "payload": {}}, INVALID,
     "payload.subscriptionIdentifier: is required", "unsubscribe"),
    ("unsubscribe bad id", {"type": "unsubscribe", "payload": {"subscriptionIdentifier": "all"}}, INVALID,
     "payload.subscriptionIdentifier: must be", "unsubscribe"),
    ("unsubscribe scalar", {"type": "unsubscribe", "payload": "d;c"}, INVALID, "payload: must be an object",
     "unsubscribe"),
    # setSessionId
    ("session missing", {"type": "setSessionId", "payload": {"displayIdentifier": "d"}}, INVALID,
     "payload.sessionId: is required", "setSessionId"),
    ("session bool", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": False}}, INVALID,
     "payload.sessionId: must be a string or an integer", "setSessionId"),
    ("session float", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": 1.0}}, INVALID,
     "payload.sessionId: must be a string or an integer", "setSessionId"),
    ("session over 64 bits", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": 2**63}},
     INVALID, "payload.sessionId: must fit in 64 bits", "setSessionId"),
    ("session empty", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": ""}}, INVALID,
     "payload.sessionId: must not be empty", "setSessionId"),
    ("session long", {"type": "setSessionId", "payload": {"displayIdentifier": "d",
                                                          "sessionId": "s" * (limits.MAX_SESSION_ID + 1)}},
     INVALID, f"payload.sessionId: must be at most {limits.MAX_SESSION_ID} characters", "setSessionId"),
    ("session object", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": {"id": 1}}},
     INVALID, "payload.sessionId: must be a string or an integer", "setSessionId"),
    ("display ;", {"type": "setSessionId", "payload": {"displayIdentifier": "d;c", "sessionId": "s"}}, INVALID,
     'payload.displayIdentifier: must not contain ";"', "setSessionId"),
    ("display long", {"type": "setSessionId", "payload": {"displayIdentifier": "d" * (limits.MAX_ID + 1),
                                                          "sessionId": "s"}}, INVALID,
     f"payload.displayIdentifier: must be at most {limits.MAX_ID} characters", "setSessionId"),
    ("display missing", {"type": "setSessionId", "payload": {"sessionId": "s"}}, INVALID,
     "payload.displayIdentifier: is required", "setSessionId"),
    ("display null", {"type": "setSessionId", "payload": {"displayIdentifier": None, "sessionId": "s"}}, INVALID,
     "payload.displayIdentifier: must be a string", "setSessionId"),
    ("session camelCase only", {"type": "setSessionId", "payload": {"display_identifier": "d", "sessionId": "s"}},
     INVALID, "payload.displayIdentifier: is required", "setSessionId"),
    # setProgressionStage
    ("stage int", {"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": 3}},
     INVALID, "payload.progressionStage: must be a string", "setProgressionStage"),
    ("stage newline", {"type": "setProgressionStage",
                       "payload": {"displayIdentifier": "d", "progressionStage": "a\nb"}},
     INVALID, "payload.progressionStage: must not contain control", "setProgressionStage"),
    ("stage long", {"type": "setProgressionStage",
                    "payload": {"displayIdentifier": "d", "progressionStage": "x" * (limits.MAX_STAGE + 1)}},
     INVALID, f"payload.progressionStage: must be at most {limits.MAX_STAGE} characters", "setProgressionStage"),
    # patchSessionResult
    ("result success str", {"type": "patchSessionResult", "payload": {"sessionId": "s", "success": "true"}},
     INVALID, "payload.success: must be true or false", "patchSessionResult"),
    ("result no session", {"type": "patchSessionResult", "payload": {"sessionId": None, "success": True}},
     INVALID, "payload.sessionId: must be a string or an integer", "patchSessionResult"),
    ("result NUL", {"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "\x00"}},
     INVALID, "payload.message: must not contain control", "patchSessionResult"),
    ("result long", {"type": "patchSessionResult", "payload": {
        "sessionId": "s", "success": True, "message": "m" * (limits.MAX_RESULT_MESSAGE + 1)}},
     INVALID, f"payload.message: must be at most {limits.MAX_RESULT_MESSAGE} characters", "patchSessionResult"),
]


@pytest.mark.parametrize(("message", "code", "starts", "request_type"), [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejections(message: Any, code: ErrorCode, starts: str, request_type: str | None) -> None:
    err = reject(message)
    assert err.code == code
    assert err.message.startswith(starts), err.message
    assert err.request_type == request_type
    assert err.index is None  # the message as a whole
    assert len(err.message) < 300 and "\n" not in err.message


SUBSCRIPTION_REJECTIONS = [r for r in REJECTIONS if r[4] == S and isinstance(r[1], dict) and "payload" in r[1]
                           and isinstance(r[1]["payload"], dict)]


def _item_message(subscribe_message: str, path: str) -> str:
    """A subscribe payload's refusal, as it reads for the same object at `path` (`payload...` → path)."""
    assert subscribe_message.startswith("payload")
    return path + subscribe_message.removeprefix("payload")


@pytest.mark.parametrize("message", [r[1] for r in SUBSCRIPTION_REJECTIONS],
                         ids=[r[0] for r in SUBSCRIPTION_REJECTIONS])
def test_a_subscription_is_judged_the_same_in_every_shape(message: dict[str, Any]) -> None:
    item = message["payload"]
    as_subscribe = reject(message)
    candidate = item.get("subscriptionIdentifier")
    identifier = as_subscribe.subscription_identifier
    assert identifier == (candidate if isinstance(candidate, str) and identifier is not None else None)
    # fields beside `type`: the same rule, the path without the `payload` prefix
    beside = reject({"type": S, **item})
    rest = as_subscribe.message.removeprefix("payload")
    assert beside.message == (rest.removeprefix(".") if rest.startswith(".") else rest.removeprefix(": ")), \
        (beside.message, as_subscribe.message)
    assert beside.subscription_identifier == identifier
    # an item of a list: refused alone, with its index, identifier and path; the valid item beside it applies
    good = sub(subscriptionIdentifier="other;cam")
    for shape, (_, path) in LIST_SHAPES.items():
        msg = parse(as_list(shape, [good, item]))
        assert isinstance(msg, SetSubscriptionList)
        assert [s.subscription_identifier for s in msg.subscriptions] == ["other;cam"], shape
        assert msg.refused == (RefusedItem(1, identifier, _item_message(as_subscribe.message, f"{path}[1]")),), \
            (shape, msg.refused)


def test_some_bad_items_refuse_only_themselves() -> None:
    items: list[Any] = [
        sub(subscriptionIdentifier="d;1"),
        sub(subscriptionIdentifier="d;2", rtspUrl="http://cam/x"),  # bad value: refused, identifier known
        "display-001;cam-002",  # not an object
        sub(subscriptionIdentifier="d;3", displayName="x"),  # unknown key: accepted
        sub(subscriptionIdentifier="d;1", modelId=5),  # duplicate of item 0
        sub(subscriptionIdentifier="d;4;x"),  # bad identifier: refused, no identifier to name
        None,
        sub(subscriptionIdentifier="d;5", cropX1=None),  # incomplete crop
        sub(subscriptionIdentifier="d;6", modelId=None, modelName=None),
    ]
    for shape, (_, path) in LIST_SHAPES.items():
        msg = parse(as_list(shape, items))
        assert [s.subscription_identifier for s in msg.subscriptions] == ["d;1", "d;3", "d;6"]
        assert msg.subscriptions[0].model.id == 102  # the first of the duplicates is the one kept
        assert msg.refused == (
            RefusedItem(1, "d;2", f"{path}[1].rtspUrl: URL scheme must be rtsp or rtsps"),
            RefusedItem(2, None, f"{path}[2]: must be an object"),
            RefusedItem(4, "d;1", f"{path}[4].subscriptionIdentifier: duplicate (first at {path}[0])"),
            RefusedItem(5, None, f'{path}[5].subscriptionIdentifier: must be "<displayId>;<cameraId>" with exactly '
                                 'one ";"'),
            RefusedItem(6, None, f"{path}[6]: must be an object"),
            RefusedItem(7, "d;5", f"{path}[7]: cropX1, cropY1, cropX2 and cropY2 go together (missing cropX1)"),
        ), shape
        assert msg.ignored == (f"{path}[].displayName",)


@pytest.mark.parametrize("shape", list(LIST_SHAPES))
def test_a_duplicate_identifier_is_refused_as_an_item(shape: str) -> None:
    path = LIST_SHAPES[shape][1]
    msg = parse(as_list(shape, [sub(), sub(subscriptionIdentifier="d;x"), sub(modelId=5), sub()]))
    assert [s.subscription_identifier for s in msg.subscriptions] == ["display-001;cam-001", "d;x"]
    assert msg.subscriptions[0].model.id == 102
    assert msg.refused == tuple(
        RefusedItem(i, "display-001;cam-001", f"{path}[{i}].subscriptionIdentifier: duplicate (first at {path}[0])")
        for i in (2, 3))


def test_a_duplicate_of_a_refused_item_is_not_a_duplicate() -> None:
    """Only usable items claim an identifier: after a refused one, the next valid one with its
    identifier is the subscription (what the backend can only have meant)."""
    msg = parse({"type": L, "subscriptions": [sub(rtspUrl="http://x/"), sub()]})
    assert [s.subscription_identifier for s in msg.subscriptions] == ["display-001;cam-001"]
    assert [(r.index, r.subscription_identifier) for r in msg.refused] == [(0, "display-001;cam-001")]


def test_identifiers_up_to_the_limits_are_accepted_and_one_past_refused() -> None:
    d, c = "d" * limits.MAX_ID, "c" * limits.MAX_ID
    longest = f"{d};{c}"
    assert len(longest) == limits.MAX_SUBSCRIPTION_ID
    items = [sub(subscriptionIdentifier=longest), sub(subscriptionIdentifier=f"{d}d;c"),
             sub(subscriptionIdentifier=f"d;{c}c"), sub(subscriptionIdentifier=f"{longest}c")]
    msg = parse({"type": L, "subscriptions": items})
    assert [s.subscription_identifier for s in msg.subscriptions] == [longest]
    assert (msg.subscriptions[0].display_id, msg.subscriptions[0].camera_id) == (d, c)
    assert [(r.index, r.subscription_identifier) for r in msg.refused] == [(1, None), (2, None), (3, None)]
    assert parse({"type": "setSessionId", "payload": {"displayIdentifier": d, "sessionId": 1}}).display_identifier \
        == d


def test_the_item_limit() -> None:
    items = [sub(subscriptionIdentifier=f"d{i};c") for i in range(limits.MAX_SUBSCRIPTIONS)]
    msg = parse({"type": L, "subscriptions": items})
    assert len(msg.subscriptions) == limits.MAX_SUBSCRIPTIONS and not msg.refused
    err = reject({"type": L, "payload": {"subscriptions": [*items, sub()]}})
    assert err.code == ErrorCode.LIMIT_EXCEEDED and err.message.startswith("payload.subscriptions: 1001 subscriptions")


def test_many_unknown_keys_are_ignored_and_only_absurd_objects_refused_as_a_whole() -> None:
    msg = parse({"type": L, "subscriptions": [sub(), sub(subscriptionIdentifier="d;c",
                                                         **{f"k{i}": 0 for i in range(60)})]})
    assert isinstance(msg, SetSubscriptionList) and len(msg.subscriptions) == 2 and not msg.refused
    err = reject({"type": "requestState", **{f"k{i}": 0 for i in range(1100)}})
    assert err.code == INVALID and err.message.startswith("an object has 1101 fields")


def test_rejection_names_the_subscription_when_its_identifier_is_valid() -> None:
    assert reject({"type": S, "payload": sub(rtspUrl="x")}).subscription_identifier == "display-001;cam-001"
    assert reject({"type": S, "payload": sub(subscriptionIdentifier="bad")}).subscription_identifier is None
    assert reject({"type": S, **sub(cropX1=-5)}).subscription_identifier == "display-001;cam-001"
    assert reject({"type": L, "payload": "x"}).subscription_identifier is None
    assert reject({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "d;c;x"}}).subscription_identifier \
        is None


def test_errors_never_echo_secrets_or_long_input() -> None:
    err = reject({"type": S, "payload": sub(rtspUrl="http://admin:s3cr3t@cam/stream")})
    assert "s3cr3t" not in err.message and "admin" not in err.message
    (item,) = parse({"type": L, "subscriptions": [sub(rtspUrl="http://admin:s3cr3t@cam/stream")]}).refused
    assert "s3cr3t" not in item.message and "admin" not in item.message
    long_key = "k" * 10_000
    for message in ({"type": "x" * 10_000}, {long_key: 1},
                    {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * 10_000)}):
        err = reject(message)
        assert len(err.message) < 300, err.message
        assert "k" * 61 not in err.message and "x" * 61 not in err.message and "c" * 61 not in err.message
    (item,) = parse({"type": L, "subscriptions": [sub(subscriptionIdentifier="d;" + "c" * 10_000)]}).refused
    assert len(item.message) < 300 and "c" * 61 not in item.message


def test_oversize_is_too_large_before_anything_else() -> None:
    assert reject("x" * (MAX_MESSAGE_BYTES + 1)).code == ErrorCode.TOO_LARGE
    assert reject(b"{" * (MAX_MESSAGE_BYTES + 1)).code == ErrorCode.TOO_LARGE
    # The limit is in UTF-8 bytes, not characters.
    text = json.dumps({"type": "requestState"}, ensure_ascii=False)
    padded = text[:-1] + " " * (100 - len(text)) + "}"
    assert isinstance(parse_incoming(padded, max_bytes=100), RequestState)
    assert reject(padded.replace(" ", "é", 1), max_bytes=100).code == ErrorCode.TOO_LARGE


def test_error_message_shape() -> None:
    err = reject({"type": S, "payload": sub(rtspUrl="http://x/")})
    out = json.loads(dump_outgoing(error_message(err)))
    assert out == {"type": "error", "error": {"code": "invalid_message",
                                              "message": "payload.rtspUrl: URL scheme must be rtsp or rtsps",
                                              "requestType": "subscribe",
                                              "subscriptionIdentifier": "display-001;cam-001"}}  # no index
    assert error_message(err) == ErrorMessage.from_error(err)
    # one item of a list: what the gateway sends for a RefusedItem
    (item,) = parse({"type": L, "subscriptions": [sub(), sub(subscriptionIdentifier="d;2", snapshotInterval=1)]}
                    ).refused
    per_item = ProtocolError(INVALID, item.message, L, subscription_identifier=item.subscription_identifier,
                             index=item.index)
    assert json.loads(dump_outgoing(error_message(per_item))) == {
        "type": "error", "error": {"code": "invalid_message",
                                   "message": "subscriptions[1].snapshotInterval: must be at least 100",
                                   "requestType": L, "subscriptionIdentifier": "d;2", "index": 1}}
    gateway_side = ErrorMessage.from_error(ProtocolError("limit_exceeded", "m" * 5000, "x" * 5000,
                                                         subscription_identifier="s" * 5000))
    assert len(gateway_side.error.message) == 2000 and gateway_side.error.code == ErrorCode.LIMIT_EXCEEDED
    assert len(gateway_side.error.request_type or "") == 600
    assert len(gateway_side.error.subscription_identifier or "") == 600
    assert json.loads(dump_outgoing(ErrorMessage.from_error(ProtocolError("internal", "x"))))["error"] == {
        "code": "internal", "message": "x", "requestType": None, "subscriptionIdentifier": None}
    assert ErrorMessage.model_validate_json(dump_outgoing(error_message(per_item))) == error_message(per_item)
    with pytest.raises(ValueError):
        ProtocolError("not_a_code", "x")
    assert str(ProtocolError(ErrorCode.TOO_LARGE, "big")) == "too_large: big"


# ---------------------------------------------------------------------------------------------
# What we send


def detection_message(**changes: Any) -> ImageDetection:
    detection = DetectionBody(car_brand="Aurex", body_type="Sedan", car_brand_confidence=0.97,
                              body_type_confidence=0.9, car_box=(10, 20, 300, 240), frontal_box=(50.5, 60, 200, 230),
                              track_id=4, **{"carYear": 2023, "licensePlateText": "ABCD1234"})
    fields: dict[str, Any] = {"subscription_identifier": "display-001;cam-001",
                              "timestamp": datetime(2025, 7, 14, 12, 34, 56, 789999, tzinfo=UTC),
                              "data": DetectionData(detection=detection, model_id=101, model_name="Pipeline")}
    return ImageDetection(**(fields | changes))


def test_dump_is_compact_camel_case_json() -> None:
    text = dump_outgoing(detection_message())
    assert " " not in text.replace("display-001;cam-001", "")
    assert json.loads(text) == {
        "type": "imageDetection", "subscriptionIdentifier": "display-001;cam-001",
        "timestamp": "2025-07-14T12:34:56.789Z",
        "data": {"detection": {"carBrand": "Aurex", "bodyType": "Sedan", "carBrandConfidence": 0.97,
                               "bodyTypeConfidence": 0.9, "carBox": [10, 20, 300, 240],
                               "frontalBox": [50.5, 60, 200, 230], "trackId": 4, "carYear": 2023,
                               "licensePlateText": "ABCD1234"},
                 "modelId": 101, "modelName": "Pipeline"}}
    # sub-millisecond digits are truncated on the way out: what comes back is the instant as sent
    assert ImageDetection.model_validate_json(text) == detection_message(
        timestamp=datetime(2025, 7, 14, 12, 34, 56, 789000, tzinfo=UTC))


@pytest.mark.parametrize(("when", "sent"), [
    (datetime(2025, 7, 14, 14, 34, 56, 1000, tzinfo=timezone(timedelta(hours=2))), "2025-07-14T12:34:56.001Z"),
    (datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00.000Z"),
    ("2025-07-14T12:34:56.789Z", "2025-07-14T12:34:56.789Z"),
])
def test_timestamps_are_utc_with_milliseconds(when: Any, sent: str) -> None:
    assert json.loads(dump_outgoing(detection_message(timestamp=when)))["timestamp"] == sent


def test_default_timestamp_is_now() -> None:
    msg = ImageDetection(subscription_identifier="d;c", data=DetectionData(detection=DetectionBody(), model_id=1))
    sent = json.loads(dump_outgoing(msg))["timestamp"]
    assert sent.endswith("Z") and len(sent) == 24
    assert abs(datetime.fromisoformat(sent) - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize("bad", [
    {"timestamp": datetime(2025, 1, 1)},  # naive: ambiguous
    {"subscription_identifier": "no-separator"},
    {"subscription_identifier": "d;" + "c" * (limits.MAX_ID + 1)},
])
def test_outgoing_rejects_bad_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        detection_message(**bad)


@pytest.mark.parametrize("fields", [
    {"car_brand_confidence": 1.5}, {"car_box": (10, 10, 5, 20)}, {"car_box": (-1, 0, 1, 1)},
    {"track_id": -1}, {"carYear": float("nan")}, {"notJson": object()}, {"car_brand": "A", "carBrand": "B"},
    {"": 1}, {"k" * 129: 1}, {"a\nb": 1},
])
def test_detection_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DetectionBody.model_validate(fields)


def test_detection_extras_are_sent_verbatim() -> None:
    extras = {"carYear": 2023, "licensePlate": {"text": "AB 12", "confidence": 0.9}, "tags": ["x", None]}
    out = json.loads(DetectionBody.model_validate(extras).model_dump_json())
    assert {k: out[k] for k in extras} == extras


def test_state_report_with_our_fields() -> None:
    subscription = one_subscription({"type": S, "payload": RECORD_SUBSCRIPTION})
    report = StateReport(cpu_usage=3, memory_usage=20.5, gpu_usage=0, gpu_memory_usage=0, camera_connections=[
        CameraConnection.from_subscription(subscription, online=False, fps=9.5, inference_ms=31.2, reconnects=2,
                                           restarts=0)])
    assert json.loads(dump_outgoing(report))["cameraConnections"] == [{
        "subscriptionIdentifier": "display-001;cam-001", "modelId": 102, "modelName": "Car Frontal Pipeline",
        "online": False, "cropX1": 100, "cropY1": 200, "cropX2": 740, "cropY2": 680, "fps": 9.5,
        "inferenceMs": 31.2, "reconnects": 2, "restarts": 0}]
    assert StateReport.model_validate_json(dump_outgoing(report)) == report
    with pytest.raises(ValidationError):
        StateReport(cpu_usage=-1, memory_usage=0, gpu_usage=0, gpu_memory_usage=0)


def test_patch_session() -> None:
    msg = PatchSession(payload=PatchSessionPayload(session_id="s-9", data={"carBrand": "Aurex", "n": [1, 2.5]}))
    assert dump_outgoing(msg) == ('{"type":"patchSession","payload":{"sessionId":"s-9",'
                                  '"data":{"carBrand":"Aurex","n":[1,2.5]}}}')
    assert PatchSession.model_validate_json(dump_outgoing(msg)) == msg
    with pytest.raises(ValidationError):
        PatchSessionPayload(session_id="s", data={"x": float("inf")})
    for bad in (True, 1.5, "", None, 2**63):
        with pytest.raises(ValidationError):
            PatchSessionPayload(session_id=bad, data={})


@pytest.mark.parametrize("model_id", [0, 102, 2**63 - 1, "102", "car-v1", None])
def test_model_id_goes_back_with_the_json_type_it_came_with(model_id: int | str | None) -> None:
    raw = sub(modelId=model_id) if model_id is not None else sub(modelId=...)
    for msg in (parse({"type": S, "payload": raw}), parse({"type": L, "subscriptions": [raw]})):
        s = msg.subscription if isinstance(msg, Subscribe) else msg.subscriptions[0]
        conn = json.loads(dump_outgoing(StateReport(cpu_usage=0, memory_usage=0, gpu_usage=0, gpu_memory_usage=0,
                                                    camera_connections=[CameraConnection.from_subscription(
                                                        s, online=True)])))["cameraConnections"][0]
        detection = json.loads(dump_outgoing(ImageDetection(
            subscription_identifier=s.subscription_identifier,
            data=DetectionData(detection=DetectionBody(), model_id=s.model.id, model_name=s.model.name))))
        for sent in (conn["modelId"], detection["data"]["modelId"]):
            assert sent == model_id and type(sent) is type(model_id), (sent, model_id)
        assert CameraConnection.model_validate(conn) == CameraConnection.from_subscription(s, online=True)


@pytest.mark.parametrize("session_id", [12345, 0, -7, 2**63 - 1, -(2**63), "12345", "8f3c2a"])
def test_session_id_goes_back_with_the_json_type_it_came_with(session_id: int | str) -> None:
    for message in ({"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": session_id}},
                    {"type": "setSessionId", "displayIdentifier": "d", "sessionId": session_id}):
        got = parse(message)
        assert isinstance(got, SetSessionId) and got.session_id is not None
        text = dump_outgoing(PatchSession(payload=PatchSessionPayload(session_id=got.session_id, data={})))
        sent = json.loads(text)["payload"]["sessionId"]
        assert sent == session_id and type(sent) is type(session_id)
        assert f'"sessionId":{json.dumps(session_id)}' in text
        assert PatchSession.model_validate_json(text).payload.session_id == session_id
        # and the backend's answer about it parses to the same value
        result = parse({"type": "patchSessionResult", "payload": {"sessionId": sent, "success": True}})
        assert result.session_id == got.session_id and type(result.session_id) is type(got.session_id)


def test_dump_outgoing_refuses_incoming_messages() -> None:
    with pytest.raises(TypeError):
        dump_outgoing(parse({"type": "requestState"}))
    with pytest.raises(TypeError):
        dump_outgoing(parse({"type": S, "payload": RECORD_SUBSCRIPTION}))


# ---------------------------------------------------------------------------------------------
# Properties

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
PARSER_CODES = (ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_MESSAGE, ErrorCode.TOO_LARGE,
                ErrorCode.LIMIT_EXCEEDED)


def parse_or_protocol_error(text: str | bytes, **kwargs: Any) -> Any:
    """parse_incoming, but a ProtocolError is an accepted outcome (anything else fails the test)."""
    try:
        result = parse_incoming(text, **kwargs)
    except ProtocolError as err:
        assert err.message and len(err.message) < 400
        assert err.code in PARSER_CODES and err.index is None
        return err
    for item in getattr(result, "refused", ()):
        assert item.message and len(item.message) < 400 and "\n" not in item.message
    return result


@PROPERTY
@given(json_values)
def test_any_json_value_gives_a_message_or_a_protocol_error(value: Any) -> None:
    parse_or_protocol_error(json.dumps(value))


@PROPERTY
@given(st.text() | st.binary())
def test_any_text_gives_a_message_or_a_protocol_error(text: str | bytes) -> None:
    parse_or_protocol_error(text)


FIELD_NAMES = ["subscriptionIdentifier", "rtspUrl", "snapshotUrl", "snapshotInterval", "modelUrl", "modelName",
               "modelId", "cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY", "displayIdentifier", "sessionId",
               "progressionStage", "success", "message", "subscriptions"]
near_valid_dicts = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), json_values, max_size=8)
mutated_subscriptions = st.builds(lambda changes: sub() | changes,
                                  st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=3))
payloads = (json_values | near_valid_dicts | mutated_subscriptions | st.lists(mutated_subscriptions, max_size=3)
            | st.builds(lambda items: {"subscriptions": items}, st.lists(mutated_subscriptions, max_size=3)))


@pytest.mark.slow  # > 3 s here; make check skips it
@PROPERTY
@given(st.sampled_from(sorted(INCOMING_TYPES)), payloads, st.sampled_from(["payload", "beside", "subscriptions"]),
       st.dictionaries(st.text(max_size=6), json_values, max_size=2))
def test_valid_type_with_random_payload_gives_a_message_or_a_protocol_error(
        type_: str, payload: Any, where: str, extra: dict[str, Any]) -> None:
    message: dict[str, Any] = extra | {"type": type_}
    if where == "payload":
        message["payload"] = payload
    elif where == "subscriptions":
        message["subscriptions"] = payload
    elif isinstance(payload, dict):
        message |= {k: v for k, v in payload.items() if k != "type"}
    result = parse_or_protocol_error(json.dumps(message))
    if not isinstance(result, ProtocolError):
        assert result.type == type_
        assert all(isinstance(k, str) for k in result.ignored)


# Identifier parts: printable, no ";", no leading/trailing whitespace (inner spaces are fine).
id_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
                         exclude_characters=";") | st.just(" ")
id_parts = st.text(id_chars, min_size=1, max_size=limits.MAX_ID).filter(lambda s: s == s.strip())
url_safe = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@/"), max_size=40)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@st.composite
def valid_subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    display, camera = draw(id_parts), draw(id_parts)
    host = draw(hosts)
    port = draw(st.none() | st.integers(1, 65535))
    authority = f"{host}:{port}" if port is not None else host
    source = draw(st.sampled_from(["rtsp", "snapshot", "both"]))
    result: dict[str, Any] = {"subscriptionIdentifier": f"{display};{camera}"}
    scheme = draw(st.sampled_from(["http", "https", "file"]))
    result["modelUrl"] = ("file:///" if scheme == "file" else f"{scheme}://{authority}/") + draw(url_safe)
    if draw(st.booleans()):
        result["modelId"] = draw(st.integers(0, 2**63 - 1) | id_parts)
    if source in ("rtsp", "both"):
        result["rtspUrl"] = f"{draw(st.sampled_from(['rtsp', 'rtsps', 'RTSP']))}://{authority}/{draw(url_safe)}"
    if source in ("snapshot", "both"):
        result["snapshotUrl"] = f"{draw(st.sampled_from(['http', 'https']))}://{authority}/{draw(url_safe)}"
        if draw(st.booleans()):
            result["snapshotInterval"] = draw(st.integers(100, 3_600_000))
    if draw(st.booleans()):
        result["modelName"] = draw(st.text(id_chars | st.just(";"), max_size=limits.MAX_MODEL_NAME))
    crop = draw(st.sampled_from(["none", "box", "legacy"]))
    if crop == "box":
        x1, y1 = draw(st.integers(0, 99_999)), draw(st.integers(0, 99_999))
        result |= {"cropX1": x1, "cropY1": y1, "cropX2": draw(st.integers(x1 + 1, 100_000)),
                   "cropY2": draw(st.integers(y1 + 1, 100_000))}
    elif crop == "legacy":
        result |= {"cropX": draw(st.integers(0, 100_000)), "cropY": draw(st.integers(0, 100_000))}
    return result


@PROPERTY
@given(valid_subscriptions(), st.sampled_from(["subscribe", "beside", *LIST_SHAPES]))
def test_valid_subscriptions_always_parse_and_convert(raw: dict[str, Any], shape: str) -> None:
    if shape == "subscribe":
        s = one_subscription({"type": S, "payload": raw})
    elif shape == "beside":
        s = one_subscription({"type": S, **raw})
    else:
        msg = parse(as_list(shape, [raw]))
        assert not msg.refused and not msg.ignored
        (s,) = msg.subscriptions
    display, camera = raw["subscriptionIdentifier"].split(";")
    assert (s.display_id, s.camera_id) == (display, camera)
    if "rtspUrl" in raw:
        assert s.source == SourceSettings(kind="rtsp", url=raw["rtspUrl"])
    else:
        assert s.source == SourceSettings(kind="snapshot", url=raw["snapshotUrl"],
                                          snapshot_interval_ms=raw.get("snapshotInterval", 5000))
    assert s.model == ModelRef(url=raw["modelUrl"], id=raw.get("modelId"), name=raw.get("modelName"))
    assert type(s.model.id) is type(raw.get("modelId"))
    if "cropX1" in raw:
        assert s.crop == Crop(x1=raw["cropX1"], y1=raw["cropY1"], x2=raw["cropX2"], y2=raw["cropY2"])
    elif "cropX" in raw:
        assert s.crop == Crop(x1=raw["cropX"], y1=raw["cropY"])
    else:
        assert s.crop is None


# Hostile strings, placed whole or inside a valid value, in every string field we receive.
HOSTILE = [";", "a;b", "\n", "x\ny", "\r\n", "%", "%00", "%2e%2e%2f", "%3B", '"', "'", '\\"', "\\", "..", "../..",
           "../../etc/passwd", "all", "ALL", "*", "{display_id}", "x" * 10_000, "x" * (limits.MAX_ID + 1), "\x00",
           "a\x00b", "", " ", "\t", "\u202e", "\u200b", "\ufeff", "\u2028", "\ud800", "\x7f", "\x85", "é", "会话",
           "🚗", "null", "<script>", "$(rm -rf /)", "display-001;cam-001", " display-001", "%s%n"]

# (message template, path to the string inside it, how to read the parsed value back)
Getter = Callable[[Any], Any]
FIELDS: list[tuple[dict[str, Any], tuple[str | int, ...], Getter]] = []
SUBSCRIPTION_GETTERS: dict[str, Getter] = {
    "subscriptionIdentifier": lambda s: s.subscription_identifier, "rtspUrl": lambda s: s.source.url,
    "modelUrl": lambda s: s.model.url, "modelName": lambda s: s.model.name, "modelId": lambda s: s.model.id,
}


def _subscription_field(read: Getter, listed: bool) -> Getter:
    def get_value(m: Any) -> Any:
        if listed:
            if m.refused:
                return m.refused[0]
            return read(m.subscriptions[0])
        return read(m.subscription)
    return get_value


for key, read in SUBSCRIPTION_GETTERS.items():
    FIELDS.append(({"type": S, "payload": sub()}, ("payload", key), _subscription_field(read, False)))
    FIELDS.append(({"type": S, **sub()}, (key,), _subscription_field(read, False)))
    FIELDS.append(({"type": L, "subscriptions": [sub()]}, ("subscriptions", 0, key), _subscription_field(read, True)))
    FIELDS.append(({"type": L, "payload": [sub()]}, ("payload", 0, key), _subscription_field(read, True)))
    FIELDS.append(({"type": L, "payload": {"subscriptions": [sub()]}}, ("payload", "subscriptions", 0, key),
                   _subscription_field(read, True)))
FIELDS.append(({"type": S, "payload": no_crop(rtspUrl=...)}, ("payload", "snapshotUrl"),
               _subscription_field(lambda s: s.source.url, False)))
FIELDS += [
    ({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "d;c"}}, ("payload", "subscriptionIdentifier"),
     lambda m: m.subscription_identifier),
    ({"type": "unsubscribe", "subscriptionIdentifier": "d;c"}, ("subscriptionIdentifier",),
     lambda m: m.subscription_identifier),
    ({"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": "s"}},
     ("payload", "displayIdentifier"), lambda m: m.display_identifier),
    ({"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": "s"}},
     ("payload", "sessionId"), lambda m: m.session_id),
    ({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": "p"}},
     ("payload", "displayIdentifier"), lambda m: m.display_identifier),
    ({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": "p"}},
     ("payload", "progressionStage"), lambda m: m.progression_stage),
    ({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "m"}},
     ("payload", "sessionId"), lambda m: m.session_id),
    ({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "m"}},
     ("payload", "message"), lambda m: m.message),
]


def put(message: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(message)
    target: Any = result
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return result


def get(message: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    target: Any = message
    for part in path:
        target = target[part]
    return target


@PROPERTY
@given(st.sampled_from(FIELDS), st.sampled_from(HOSTILE) | st.text(max_size=20),
       st.sampled_from(["whole", "prefix", "suffix", "middle"]), st.sampled_from(["ascii", "utf8", "bytes"]))
def test_hostile_strings_are_refused_or_preserved_exactly(
        field: tuple[dict[str, Any], tuple[str | int, ...], Getter], hostile: str, placement: str,
        encoding: str) -> None:
    template, path, read_back = field
    valid = str(get(template, path))
    value = {"whole": hostile, "prefix": hostile + valid, "suffix": valid + hostile,
             "middle": valid[: len(valid) // 2] + hostile + valid[len(valid) // 2:]}[placement]
    text = json.dumps(put(template, path, value), ensure_ascii=encoding == "ascii")
    raw: str | bytes = text.encode("utf-8", "surrogatepass") if encoding == "bytes" else text
    result = parse_or_protocol_error(raw)
    long_runs = [run for run in (hostile, value) if len(run) > 60]
    if isinstance(result, ProtocolError):
        assert result.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.INVALID_JSON)  # JSON: a lone surrogate in bytes
        assert not any(run in result.message for run in long_runs)
        return
    got = read_back(result)
    if isinstance(got, RefusedItem):  # one item of a list, refused alone
        assert got.index == 0 and got.message.startswith(".".join(str(p) for p in path[:-2]).replace(".0", "[0]"))
        assert not any(run in got.message for run in long_runs)
        return
    assert got == value and type(got) is str, (got, value)
    if path[-1] == "subscriptionIdentifier":
        assert got.split(";") == list(split_subscription_identifier(got))


def _no_lone_surrogate(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@PROPERTY
@given((st.sampled_from(HOSTILE) | st.text()).filter(_no_lone_surrogate),
       st.sampled_from(["type", "key", "payloadKey", "itemKey"]))
def test_hostile_strings_as_type_are_refused_and_as_keys_ignored(hostile: str, where: str) -> None:
    """(Keys holding a lone surrogate: test_a_lone_surrogate_key_is_treated_alike_everywhere.)"""
    message: dict[str, Any] = {"type": S, "payload": sub()}
    if where == "type":
        message["type"] = hostile
    elif where == "key":
        message[hostile] = 1
    elif where == "payloadKey":
        message["payload"][hostile] = 1
    else:
        message = {"type": L, "subscriptions": [sub() | {hostile: 1}]}
    result = parse_or_protocol_error(json.dumps(message))
    if where == "type":
        assert isinstance(result, ProtocolError) or hostile in INCOMING_TYPES
        return
    known = ("type", "payload") if where == "key" else FIELD_NAMES
    if hostile in known:  # a real key given a value that may not fit
        return
    assert not isinstance(result, ProtocolError), result
    expected = {"key": hostile, "payloadKey": f"payload.{hostile}", "itemKey": f"subscriptions[].{hostile}"}[where]
    assert result.ignored == (expected,)
    assert not getattr(result, "refused", ())


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(16, 4096), st.integers(1, 5000), st.sampled_from(["a", "é", "会", "🚗"]),
       st.sampled_from(["str", "bytes"]))
def test_oversize_is_always_too_large(limit: int, over: int, char: str, kind: str) -> None:
    # The smallest whole message of `char`s that is over `limit` UTF-8 bytes by at least `over` bytes.
    count = (limit + over) // len(char.encode()) + 1
    text = '{"type":"' + char * count + '"}'
    data: str | bytes = text if kind == "str" else text.encode()
    err = reject(data, max_bytes=limit)
    assert err.code == ErrorCode.TOO_LARGE and str(limit) in err.message


def test_a_lone_surrogate_key_is_treated_alike_everywhere() -> None:
    """An unknown key is never a reason to refuse (tolerant reader); a key that is not valid Unicode
    text might be (it is broken JSON text). Either way, the same wherever the key is."""
    key = "\ud800"
    outcomes = []
    for message in ({"type": S, "payload": sub(), key: 1}, {"type": S, "payload": sub() | {key: 1}},
                    {"type": L, "subscriptions": [sub() | {key: 1}]}):
        result = parse_or_protocol_error(json.dumps(message))
        outcomes.append("refused" if isinstance(result, ProtocolError) or getattr(result, "refused", ())
                        else "ignored")
    assert len(set(outcomes)) == 1, outcomes
