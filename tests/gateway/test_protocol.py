"""The backend protocol: the record's examples, every rejection rule, and property tests on hostile input."""

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

from gateway.protocol import (
    INCOMING_TYPES,
    MAX_MESSAGE_BYTES,
    CameraConnection,
    Crop,
    Detection,
    DetectionData,
    ErrorCode,
    ErrorMessage,
    ImageDetection,
    PatchSession,
    PatchSessionPayload,
    PatchSessionResult,
    ProtocolError,
    RequestState,
    SetProgressionStage,
    SetSessionId,
    SetSubscriptionList,
    StateReport,
    Subscribe,
    Unsubscribe,
    dump_outgoing,
    parse_incoming,
    split_subscription_identifier,
)

# database=None: no .hypothesis/ directory in the shared tree; failures print their reproducing example.
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])

# ---------------------------------------------------------------------------------------------
# The record's examples (docs: /work/shared/reference/backend-protocol.md)

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


def test_record_subscription_parses_as_subscribe_and_in_both_list_shapes() -> None:
    one = parse({"type": "subscribe", "payload": RECORD_SUBSCRIPTION})
    as_list = parse({"type": "setSubscriptionList", "payload": [RECORD_SUBSCRIPTION]})
    as_object = parse({"type": "setSubscriptionList", "payload": {"subscriptions": [RECORD_SUBSCRIPTION]}})
    assert isinstance(one, Subscribe)
    assert isinstance(as_list, SetSubscriptionList) and isinstance(as_object, SetSubscriptionList)
    assert as_list.payload == as_object.payload == [one.payload]
    s = one.payload
    assert (s.display_id, s.camera_id) == ("display-001", "cam-001")
    assert s.rtsp_url == "rtsp://user:pass@host:554/stream" and s.snapshot_url == "http://host/snapshot/1"
    assert (s.source_kind, s.source_url) == ("rtsp", s.rtsp_url)  # both given (as in the record): RTSP wins
    assert s.snapshot_interval == 5000
    assert (s.model_url, s.model_name, s.model_id) == ("http://storage/models/pipeline.mpta",
                                                       "Car Frontal Pipeline", 102)
    assert s.crop == Crop(x1=100, y1=200, x2=740, y2=680) and not s.crop.legacy
    assert s.model_dump(by_alias=True, exclude_none=True) == RECORD_SUBSCRIPTION  # nothing lost or altered


def test_record_image_detection_round_trips() -> None:
    msg = ImageDetection.model_validate(RECORD_IMAGE_DETECTION)
    out = json.loads(dump_outgoing(msg))
    # Our seven detection fields are always sent (null when unknown); everything of the record is kept.
    expected = copy.deepcopy(RECORD_IMAGE_DETECTION)
    expected["data"]["detection"] |= {"carBrandConfidence": None, "bodyTypeConfidence": None, "carBox": None,
                                      "frontalBox": None, "trackId": None}
    assert out == expected
    assert ImageDetection.model_validate(out) == msg


def test_record_state_report_round_trips_exactly() -> None:
    msg = StateReport.model_validate(RECORD_STATE_REPORT)
    assert json.loads(dump_outgoing(msg)) == RECORD_STATE_REPORT
    assert StateReport.model_validate_json(dump_outgoing(msg)) == msg


# ---------------------------------------------------------------------------------------------
# Every accepted form


def test_subscription_defaults_and_snapshot_source() -> None:
    s = parse({"type": "subscribe", "payload": no_crop(rtspUrl=..., snapshotInterval=..., modelName=...)}).payload
    assert (s.source_kind, s.source_url, s.snapshot_interval) == ("snapshot", "http://host/snapshot/1", 5000)
    assert s.crop is None and s.model_name is None and s.rtsp_url is None


def test_null_optional_fields_mean_absent() -> None:
    s = parse({"type": "subscribe", "payload": sub(snapshotUrl=None, snapshotInterval=None, modelName=None,
                                                   cropX1=None, cropY1=None, cropX2=None, cropY2=None)}).payload
    assert s.snapshot_url is None and s.snapshot_interval == 5000 and s.model_name is None and s.crop is None


def test_legacy_crop_is_a_top_left_offset() -> None:
    s = parse({"type": "subscribe", "payload": no_crop(cropX=10, cropY=20)}).payload
    assert s.crop == Crop(x1=10, y1=20, x2=None, y2=None) and s.crop.legacy
    conn = CameraConnection.from_subscription(s, online=True)
    assert json.loads(conn.model_dump_json()) == {"subscriptionIdentifier": "display-001;cam-001", "modelId": 102,
                                                  "modelName": "Car Frontal Pipeline", "online": True,
                                                  "cropX1": 10, "cropY1": 20}


@pytest.mark.parametrize("url", ["http://storage/m.mpta", "HTTPS://s:8443/a/b.mpta?sig=x%20y", "file:///srv/m.mpta",
                                 "file://localhost/srv/m.mpta"])
def test_model_url_forms(url: str) -> None:
    assert parse({"type": "subscribe", "payload": sub(modelUrl=url)}).payload.model_url == url


@pytest.mark.parametrize("model_id", [0, 102, 2**63 - 1, "car_frontal_detection_v1", "x" * 128])
def test_model_id_forms(model_id: int | str) -> None:
    got = parse({"type": "subscribe", "payload": sub(modelId=model_id)}).payload.model_id
    assert got == model_id and type(got) is type(model_id)


def test_empty_subscription_list_is_valid() -> None:
    assert parse({"type": "setSubscriptionList", "payload": []}).payload == []
    assert parse({"type": "setSubscriptionList", "payload": {"subscriptions": []}}).payload == []


def test_unsubscribe() -> None:
    msg = parse({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "display-001;cam-001"}})
    assert isinstance(msg, Unsubscribe)
    assert (msg.payload.display_id, msg.payload.camera_id) == ("display-001", "cam-001")


@pytest.mark.parametrize("text", ['{"type":"requestState"}', '{"type":"requestState","payload":null}',
                                  '{"type":"requestState","payload":{}}', b'{"type": "requestState"}'])
def test_request_state_forms(text: str | bytes) -> None:
    assert isinstance(parse_incoming(text), RequestState)


@pytest.mark.parametrize(("given", "expected"), [("s-1", "s-1"), (12345, "12345"), (0, "0"), (None, None),
                                                 ("ünïcödé 会话", "ünïcödé 会话")])
def test_set_session_id_normalises_to_str_or_none(given: Any, expected: str | None) -> None:
    msg = parse({"type": "setSessionId", "payload": {"displayIdentifier": "display-001", "sessionId": given}})
    assert isinstance(msg, SetSessionId)
    assert msg.payload.display_identifier == "display-001" and msg.payload.session_id == expected


@pytest.mark.parametrize("stage", ["fueling", "car_wait_staff", "", None])
def test_set_progression_stage(stage: str | None) -> None:
    msg = parse({"type": "setProgressionStage", "payload": {"displayIdentifier": "d1", "progressionStage": stage}})
    assert isinstance(msg, SetProgressionStage) and msg.payload.progression_stage == stage


def test_patch_session_result() -> None:
    msg = parse({"type": "patchSessionResult", "payload": {"sessionId": 7, "success": False,
                                                            "message": "row locked\nretry later"}})
    assert isinstance(msg, PatchSessionResult)
    assert (msg.payload.session_id, msg.payload.success, msg.payload.message) == ("7", False,
                                                                                   "row locked\nretry later")
    assert parse({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True}}).payload.message is None


# ---------------------------------------------------------------------------------------------
# Every rejection: the right code, and a message that starts with the field path

INVALID = ErrorCode.INVALID_MESSAGE
S = "subscribe"
L = "setSubscriptionList"
REJECTIONS: list[tuple[str, Any, ErrorCode, str, str | None]] = [
    # (id, message, code, message starts with, request type)
    ("not json", "{nope", ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("not utf8", b'{"type": "\xff"}', ErrorCode.INVALID_JSON, "not valid UTF-8", None),
    ("NaN", '{"type": "subscribe", "payload": NaN}', ErrorCode.INVALID_JSON, "not valid JSON: NaN", None),
    ("infinity", '{"type": 1e999}', ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("duplicate key", '{"type": "requestState", "type": "subscribe"}', ErrorCode.INVALID_JSON,
     'not valid JSON: duplicate key "type"', None),
    ("deep", "[" * 50_000 + "]" * 50_000, ErrorCode.INVALID_JSON, "not valid JSON: nested too deeply", None),
    ("huge int", '{"type": ' + "9" * 5000 + "}", ErrorCode.INVALID_JSON, "not valid JSON", None),
    ("array", [1, 2], INVALID, "a message must be a JSON object", None),
    ("no type", {"payload": {}}, INVALID, "type: is required", None),
    ("type not str", {"type": 3}, INVALID, "type: must be a string", None),
    ("unknown type", {"type": "subscribeAll"}, ErrorCode.UNKNOWN_TYPE, 'type: unknown message type "subscribeAll"',
     None),
    ("our own type", {"type": "stateReport"}, ErrorCode.UNKNOWN_TYPE, 'type: "stateReport" is sent by the gateway',
     None),
    ("top-level extra", {"type": "requestState", "requestId": 1}, INVALID, "requestId: is not a known field",
     "requestState"),
    ("no payload", {"type": S}, INVALID, "payload: is required", S),
    ("payload extra", {"type": S, "payload": sub(cameraIdentifier="x")}, INVALID,
     "payload.cameraIdentifier: is not a known field", S),
    ("snake_case key", {"type": S, "payload": sub(rtsp_url="rtsp://h/x")}, INVALID,
     "payload.rtsp_url: is not a known field", S),
    # subscriptionIdentifier
    ("id missing", {"type": S, "payload": sub(subscriptionIdentifier=...)}, INVALID,
     "payload.subscriptionIdentifier: is required", S),
    ("id no ;", {"type": S, "payload": sub(subscriptionIdentifier="display-001")}, INVALID,
     'payload.subscriptionIdentifier: must be "<displayId>;<cameraId>" with exactly one ";"', S),
    ("id two ;", {"type": S, "payload": sub(subscriptionIdentifier="a;b;c")}, INVALID,
     "payload.subscriptionIdentifier: must be", S),
    ("id empty display", {"type": S, "payload": sub(subscriptionIdentifier=";cam")}, INVALID,
     'payload.subscriptionIdentifier: display id (before ";") must not be empty', S),
    ("id empty camera", {"type": S, "payload": sub(subscriptionIdentifier="d;")}, INVALID,
     'payload.subscriptionIdentifier: camera id (after ";") must not be empty', S),
    ("id long part", {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * 257)}, INVALID,
     'payload.subscriptionIdentifier: camera id (after ";") must be at most 256 characters', S),
    ("id far too long", {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * 10_000)}, INVALID,
     "payload.subscriptionIdentifier: must be at most 513 characters", S),
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
    ("rtsp scheme", {"type": S, "payload": sub(rtspUrl="http://cam/stream")}, INVALID,
     "payload.rtspUrl: URL scheme must be rtsp or rtsps", S),
    ("snapshot scheme", {"type": S, "payload": sub(snapshotUrl="rtsp://cam/x")}, INVALID,
     "payload.snapshotUrl: URL scheme must be http or https", S),
    ("url spaces", {"type": S, "payload": sub(rtspUrl="rtsp://cam/a stream")}, INVALID,
     "payload.rtspUrl: must not contain spaces", S),
    ("url newline", {"type": S, "payload": sub(snapshotUrl="http://cam/a\nb")}, INVALID,
     "payload.snapshotUrl: must not contain control", S),
    ("url too long", {"type": S, "payload": sub(rtspUrl="rtsp://cam/" + "a" * 4090)}, INVALID,
     "payload.rtspUrl: must be at most 4096 characters", S),
    ("url no host", {"type": S, "payload": sub(rtspUrl="rtsp:///stream")}, INVALID,
     "payload.rtspUrl: URL must name a host", S),
    ("url bad port", {"type": S, "payload": sub(rtspUrl="rtsp://cam:99999/x")}, INVALID,
     "payload.rtspUrl: URL port must be a number", S),
    ("url broken", {"type": S, "payload": sub(rtspUrl="rtsp://[::1/x")}, INVALID,
     "payload.rtspUrl: is not a valid URL", S),
    ("url empty", {"type": S, "payload": sub(rtspUrl="")}, INVALID, "payload.rtspUrl: must not be empty", S),
    ("interval low", {"type": S, "payload": sub(snapshotInterval=99)}, INVALID,
     "payload.snapshotInterval: must be at least 100", S),
    ("interval high", {"type": S, "payload": sub(snapshotInterval=3_600_001)}, INVALID,
     "payload.snapshotInterval: must be at most 3600000", S),
    ("interval str", {"type": S, "payload": sub(snapshotInterval="5000")}, INVALID,
     "payload.snapshotInterval: must be an integer", S),
    ("interval float", {"type": S, "payload": sub(snapshotInterval=5000.0)}, INVALID,
     "payload.snapshotInterval: must be an integer", S),
    # model
    ("model url missing", {"type": S, "payload": sub(modelUrl=...)}, INVALID, "payload.modelUrl: is required", S),
    ("model url path", {"type": S, "payload": sub(modelUrl="/srv/models/m.mpta")}, INVALID,
     "payload.modelUrl: must be a URL with scheme http, https or file, not a plain path", S),
    ("model url ftp", {"type": S, "payload": sub(modelUrl="ftp://h/m.mpta")}, INVALID,
     "payload.modelUrl: URL scheme must be http, https or file", S),
    ("model url other host", {"type": S, "payload": sub(modelUrl="file://nas/m.mpta")}, INVALID,
     "payload.modelUrl: file:// URL must name this host", S),
    ("model name long", {"type": S, "payload": sub(modelName="n" * 257)}, INVALID,
     "payload.modelName: must be at most 256 characters", S),
    ("model name control", {"type": S, "payload": sub(modelName="a\tb")}, INVALID,
     "payload.modelName: must not contain control", S),
    ("model id missing", {"type": S, "payload": sub(modelId=...)}, INVALID, "payload.modelId: is required", S),
    ("model id bool", {"type": S, "payload": sub(modelId=True)}, INVALID,
     "payload.modelId: must be an integer or a string", S),
    ("model id float", {"type": S, "payload": sub(modelId=1.5)}, INVALID,
     "payload.modelId: must be an integer or a string", S),
    ("model id negative", {"type": S, "payload": sub(modelId=-1)}, INVALID, "payload.modelId: must be between", S),
    ("model id long", {"type": S, "payload": sub(modelId="m" * 129)}, INVALID,
     "payload.modelId: must be at most 128 characters", S),
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
    ("crop absurd", {"type": S, "payload": sub(cropX2=10**12)}, INVALID, "payload.cropX2: must be at most 100000", S),
    ("crop mixed", {"type": S, "payload": sub(cropX=1, cropY=2)}, INVALID,
     "payload: give either cropX1/cropY1/cropX2/cropY2 or the older cropX/cropY, not both", S),
    ("legacy half", {"type": S, "payload": no_crop(cropX=1)}, INVALID,
     "payload: cropX and cropY go together (missing cropY)", S),
    # setSubscriptionList
    ("list item path", {"type": L, "payload": [sub(subscriptionIdentifier="d;1"), sub(subscriptionIdentifier="d;2"),
                                               sub(subscriptionIdentifier="d;3", rtspUrl="http://cam/x")]},
     INVALID, "payload[2].rtspUrl: URL scheme must be rtsp or rtsps", L),
    ("object item path", {"type": L, "payload": {"subscriptions": [sub(modelId=None)]}}, INVALID,
     "payload.subscriptions[0].modelId: must be an integer or a string", L),
    ("list duplicate", {"type": L, "payload": [sub(), sub(modelId=5)]}, INVALID,
     "payload[1].subscriptionIdentifier: duplicate subscriptionIdentifier (first at payload[0])", L),
    ("object duplicate", {"type": L, "payload": {"subscriptions": [sub(), sub()]}}, INVALID,
     "payload.subscriptions[1].subscriptionIdentifier: duplicate subscriptionIdentifier", L),
    ("object extra", {"type": L, "payload": {"subscriptions": [], "replace": True}}, INVALID,
     "payload.replace: is not a known field", L),
    ("object wrong", {"type": L, "payload": {"items": []}}, INVALID,
     'payload: must be a list of subscriptions (or {"subscriptions": [...]})', L),
    ("payload scalar", {"type": L, "payload": "all"}, INVALID, "payload: must be a list of subscriptions", L),
    ("item not object", {"type": L, "payload": [sub(), "display-001;cam-002"]}, INVALID,
     "payload[1]: must be an object", L),
    # unsubscribe
    ("unsubscribe empty", {"type": "unsubscribe", "payload": {}}, INVALID,
     "payload.subscriptionIdentifier: is required", "unsubscribe"),
    ("unsubscribe bad id", {"type": "unsubscribe", "payload": {"subscriptionIdentifier": "all"}}, INVALID,
     "payload.subscriptionIdentifier: must be", "unsubscribe"),
    # requestState
    ("state payload", {"type": "requestState", "payload": {"full": True}}, INVALID,
     "payload: must be absent, null or {}", "requestState"),
    ("state list", {"type": "requestState", "payload": []}, INVALID, "payload: must be absent", "requestState"),
    # setSessionId
    ("session missing", {"type": "setSessionId", "payload": {"displayIdentifier": "d"}}, INVALID,
     "payload.sessionId: is required", "setSessionId"),
    ("session bool", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": False}}, INVALID,
     "payload.sessionId: must be a string, an integer or null", "setSessionId"),
    ("session float", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": 1.0}}, INVALID,
     "payload.sessionId: must be a string, an integer or null", "setSessionId"),
    ("session empty", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": ""}}, INVALID,
     "payload.sessionId: must not be empty", "setSessionId"),
    ("session long", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": "s" * 257}},
     INVALID, "payload.sessionId: must be at most 256 characters", "setSessionId"),
    ("session object", {"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": {"id": 1}}},
     INVALID, "payload.sessionId: must be a string, an integer or null", "setSessionId"),
    ("display ;", {"type": "setSessionId", "payload": {"displayIdentifier": "d;c", "sessionId": "s"}}, INVALID,
     'payload.displayIdentifier: must not contain ";"', "setSessionId"),
    ("display missing", {"type": "setSessionId", "payload": {"sessionId": "s"}}, INVALID,
     "payload.displayIdentifier: is required", "setSessionId"),
    ("session camelCase only", {"type": "setSessionId", "payload": {"display_identifier": "d", "sessionId": "s"}},
     INVALID, "payload.displayIdentifier: is required (and 1 more problem)", "setSessionId"),
    # setProgressionStage
    ("stage missing", {"type": "setProgressionStage", "payload": {"displayIdentifier": "d"}}, INVALID,
     "payload.progressionStage: is required", "setProgressionStage"),
    ("stage int", {"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": 3}},
     INVALID, "payload.progressionStage: must be a string", "setProgressionStage"),
    ("stage newline", {"type": "setProgressionStage",
                       "payload": {"displayIdentifier": "d", "progressionStage": "a\nb"}},
     INVALID, "payload.progressionStage: must not contain control", "setProgressionStage"),
    # patchSessionResult
    ("result success str", {"type": "patchSessionResult", "payload": {"sessionId": "s", "success": "true"}},
     INVALID, "payload.success: must be true or false", "patchSessionResult"),
    ("result no session", {"type": "patchSessionResult", "payload": {"sessionId": None, "success": True}},
     INVALID, "payload.sessionId: must be a string or an integer", "patchSessionResult"),
    ("result NUL", {"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "\x00"}},
     INVALID, "payload.message: must not contain control", "patchSessionResult"),
]


@pytest.mark.parametrize(("message", "code", "starts", "request_type"), [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejections(message: Any, code: ErrorCode, starts: str, request_type: str | None) -> None:
    err = reject(message)
    assert err.code == code
    assert err.message.startswith(starts), err.message
    assert err.request_type == request_type
    assert len(err.message) < 300 and "\n" not in err.message


SUBSCRIPTION_REJECTIONS = [r for r in REJECTIONS if r[4] == S and isinstance(r[1], dict) and "payload" in r[1]]


@pytest.mark.parametrize("message", [r[1] for r in SUBSCRIPTION_REJECTIONS],
                         ids=[r[0] for r in SUBSCRIPTION_REJECTIONS])
def test_a_subscription_is_judged_the_same_in_both_list_shapes(message: dict[str, Any]) -> None:
    as_subscribe = reject(message).message
    for payload, path in (([message["payload"]], "payload[0]"),
                          ({"subscriptions": [message["payload"]]}, "payload.subscriptions[0]")):
        err = reject({"type": L, "payload": payload})
        assert err.code == INVALID and err.request_type == L
        assert err.message == path + as_subscribe.removeprefix("payload"), (err.message, as_subscribe)


def test_big_objects_and_lists_are_refused_cheaply() -> None:
    err = reject({"type": "requestState", **{f"k{i}": 0 for i in range(70)}})
    assert err.code == INVALID and err.message.startswith("an object has 71 fields")
    assert reject({"type": L, "payload": [sub()] + [0] * 100_000}).message == "payload[1]: must be an object"
    assert reject({"type": L, "payload": {"subscriptions": "all"}}).message == "payload.subscriptions: must be a list"


def test_rejection_names_the_subscription_when_its_identifier_is_valid() -> None:
    items = [sub(subscriptionIdentifier="d;1"), sub(subscriptionIdentifier="d;2", cropX1=-5)]
    assert reject({"type": L, "payload": items}).subscription_identifier == "d;2"
    assert reject({"type": L, "payload": {"subscriptions": items}}).subscription_identifier == "d;2"
    assert reject({"type": S, "payload": sub(rtspUrl="x")}).subscription_identifier == "display-001;cam-001"
    assert reject({"type": S, "payload": sub(subscriptionIdentifier="bad")}).subscription_identifier is None
    assert reject({"type": L, "payload": "x"}).subscription_identifier is None


def test_errors_never_echo_secrets_or_long_input() -> None:
    err = reject({"type": S, "payload": sub(rtspUrl="http://admin:s3cr3t@cam/stream")})
    assert "s3cr3t" not in err.message and "admin" not in err.message
    long_key = "k" * 10_000
    for message in ({"type": S, "payload": sub(**{long_key: 1})}, {"type": "x" * 10_000},
                    {"type": S, "payload": sub(subscriptionIdentifier="d;" + "c" * 10_000)}, {long_key: 1}):
        err = reject(message)
        assert len(err.message) < 300, err.message
        assert "k" * 61 not in err.message and "x" * 61 not in err.message and "c" * 61 not in err.message


def test_oversize_is_too_large_before_anything_else() -> None:
    assert reject("x" * (MAX_MESSAGE_BYTES + 1)).code == ErrorCode.TOO_LARGE
    assert reject(b"{" * (MAX_MESSAGE_BYTES + 1)).code == ErrorCode.TOO_LARGE
    # The limit is in UTF-8 bytes, not characters.
    text = json.dumps({"type": "requestState"}, ensure_ascii=False)
    padded = text[:-1] + " " * (100 - len(text)) + "}"
    assert isinstance(parse_incoming(padded, max_bytes=100), RequestState)
    assert reject(padded.replace(" ", "é", 1), max_bytes=100).code == ErrorCode.TOO_LARGE


def test_error_message_shape() -> None:
    err = reject({"type": L, "payload": [sub(rtspUrl="http://x/")]})
    out = json.loads(dump_outgoing(err.to_message()))
    assert out == {"type": "error", "error": {"code": "invalid_message",
                                              "message": "payload[0].rtspUrl: URL scheme must be rtsp or rtsps",
                                              "requestType": "setSubscriptionList",
                                              "subscriptionIdentifier": "display-001;cam-001"}}
    gateway_side = ErrorMessage.from_error(ProtocolError("limit_exceeded", "m" * 5000, "x" * 5000))
    assert len(gateway_side.error.message) == 2000 and gateway_side.error.code == ErrorCode.LIMIT_EXCEEDED
    assert json.loads(dump_outgoing(gateway_side))["error"]["subscriptionIdentifier"] is None
    with pytest.raises(ValueError):
        ProtocolError("not_a_code", "x")
    assert str(ProtocolError(ErrorCode.TOO_LARGE, "big")) == "too_large: big"


# ---------------------------------------------------------------------------------------------
# What we send


def detection_message(**changes: Any) -> ImageDetection:
    detection = Detection(car_brand="Aurex", body_type="Sedan", car_brand_confidence=0.97,
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


@pytest.mark.parametrize(("when", "sent"), [
    (datetime(2025, 7, 14, 14, 34, 56, 1000, tzinfo=timezone(timedelta(hours=2))), "2025-07-14T12:34:56.001Z"),
    (datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00.000Z"),
    ("2025-07-14T12:34:56.789Z", "2025-07-14T12:34:56.789Z"),
])
def test_timestamps_are_utc_with_milliseconds(when: Any, sent: str) -> None:
    assert json.loads(dump_outgoing(detection_message(timestamp=when)))["timestamp"] == sent


def test_default_timestamp_is_now() -> None:
    msg = ImageDetection(subscription_identifier="d;c", data=DetectionData(detection=Detection(), model_id=1))
    sent = json.loads(dump_outgoing(msg))["timestamp"]
    assert sent.endswith("Z") and len(sent) == 24
    assert abs(datetime.fromisoformat(sent) - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize("bad", [
    {"timestamp": datetime(2025, 1, 1)},  # naive: ambiguous
    {"subscription_identifier": "no-separator"},
])
def test_outgoing_rejects_bad_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        detection_message(**bad)


@pytest.mark.parametrize("fields", [
    {"car_brand_confidence": 1.5}, {"car_box": (10, 10, 5, 20)}, {"car_box": (-1, 0, 1, 1)},
    {"track_id": -1}, {"carYear": float("nan")}, {"notJson": object()}, {"car_brand": "A", "carBrand": "B"},
])
def test_detection_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Detection.model_validate(fields)


def test_detection_extras_are_sent_verbatim() -> None:
    extras = {"carYear": 2023, "licensePlate": {"text": "AB 12", "confidence": 0.9}, "tags": ["x", None]}
    out = json.loads(Detection.model_validate(extras).model_dump_json())
    assert {k: out[k] for k in extras} == extras


def test_state_report_with_our_fields() -> None:
    subscription = parse({"type": S, "payload": RECORD_SUBSCRIPTION}).payload
    report = StateReport(cpu_usage=3, memory_usage=20.5, gpu_usage=0, gpu_memory_usage=0, camera_connections=[
        CameraConnection.from_subscription(subscription, online=False, fps=9.5, inference_ms=31.2, reconnects=2,
                                           restarts=0)])
    assert json.loads(dump_outgoing(report))["cameraConnections"] == [{
        "subscriptionIdentifier": "display-001;cam-001", "modelId": 102, "modelName": "Car Frontal Pipeline",
        "online": False, "cropX1": 100, "cropY1": 200, "cropX2": 740, "cropY2": 680, "fps": 9.5,
        "inferenceMs": 31.2, "reconnects": 2, "restarts": 0}]
    with pytest.raises(ValidationError):
        StateReport(cpu_usage=-1, memory_usage=0, gpu_usage=0, gpu_memory_usage=0)


def test_patch_session() -> None:
    msg = PatchSession(payload=PatchSessionPayload(session_id="s-9", data={"carBrand": "Aurex", "n": [1, 2.5]}))
    assert dump_outgoing(msg) == ('{"type":"patchSession","payload":{"sessionId":"s-9",'
                                  '"data":{"carBrand":"Aurex","n":[1,2.5]}}}')
    assert PatchSession.model_validate_json(dump_outgoing(msg)) == msg
    with pytest.raises(ValidationError):
        PatchSessionPayload(session_id="s", data={"x": float("inf")})


def test_dump_outgoing_refuses_incoming_models() -> None:
    with pytest.raises(TypeError):
        dump_outgoing(parse({"type": "requestState"}))


# ---------------------------------------------------------------------------------------------
# Properties

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


def parse_or_protocol_error(text: str | bytes, **kwargs: Any) -> Any:
    """parse_incoming, but a ProtocolError is an accepted outcome (anything else fails the test)."""
    try:
        return parse_incoming(text, **kwargs)
    except ProtocolError as err:
        assert err.message and len(err.message) < 400
        assert err.code in (ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_MESSAGE,
                            ErrorCode.TOO_LARGE)
        return err


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


@PROPERTY
@given(st.sampled_from(sorted(INCOMING_TYPES)), payloads, st.booleans(),
       st.dictionaries(st.text(max_size=6), json_values, max_size=2))
def test_valid_type_with_random_payload_gives_a_message_or_a_protocol_error(
        type_: str, payload: Any, with_payload: bool, extra: dict[str, Any]) -> None:
    message: dict[str, Any] = extra | {"type": type_}
    if with_payload:
        message["payload"] = payload
    result = parse_or_protocol_error(json.dumps(message))
    if not isinstance(result, ProtocolError):
        assert result.type == type_


# Identifier parts: printable, no ";", no leading/trailing whitespace (inner spaces are fine).
id_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
                         exclude_characters=";") | st.just(" ")
id_parts = st.text(id_chars, min_size=1, max_size=256).filter(lambda s: s == s.strip())
url_safe = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@/"), max_size=40)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@st.composite
def valid_subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    display, camera = draw(id_parts), draw(id_parts)
    host = draw(hosts)
    port = draw(st.none() | st.integers(1, 65535))
    authority = f"{host}:{port}" if port is not None else host
    source = draw(st.sampled_from(["rtsp", "snapshot", "both"]))
    result: dict[str, Any] = {"subscriptionIdentifier": f"{display};{camera}",
                              "modelUrl": draw(st.sampled_from(["http", "https", "file"])),
                              "modelId": draw(st.integers(0, 2**63 - 1) | id_parts.filter(lambda s: len(s) <= 128))}
    result["modelUrl"] = ("file:///" if result["modelUrl"] == "file" else f"{result['modelUrl']}://{authority}/") \
        + draw(url_safe)
    if source in ("rtsp", "both"):
        result["rtspUrl"] = f"{draw(st.sampled_from(['rtsp', 'rtsps', 'RTSP']))}://{authority}/{draw(url_safe)}"
    if source in ("snapshot", "both"):
        result["snapshotUrl"] = f"{draw(st.sampled_from(['http', 'https']))}://{authority}/{draw(url_safe)}"
        if draw(st.booleans()):
            result["snapshotInterval"] = draw(st.integers(100, 3_600_000))
    if draw(st.booleans()):
        result["modelName"] = draw(st.text(id_chars | st.just(";"), max_size=256))
    crop = draw(st.sampled_from(["none", "box", "legacy"]))
    if crop == "box":
        x1, y1 = draw(st.integers(0, 99_999)), draw(st.integers(0, 99_999))
        result |= {"cropX1": x1, "cropY1": y1, "cropX2": draw(st.integers(x1 + 1, 100_000)),
                   "cropY2": draw(st.integers(y1 + 1, 100_000))}
    elif crop == "legacy":
        result |= {"cropX": draw(st.integers(0, 100_000)), "cropY": draw(st.integers(0, 100_000))}
    return result


@PROPERTY
@given(valid_subscriptions(), st.sampled_from(["subscribe", "list", "object"]))
def test_valid_subscriptions_always_parse_and_split(raw: dict[str, Any], shape: str) -> None:
    if shape == "subscribe":
        s = parse({"type": "subscribe", "payload": raw}).payload
    else:
        payload: Any = [raw] if shape == "list" else {"subscriptions": [raw]}
        (s,) = parse({"type": "setSubscriptionList", "payload": payload}).payload
    display, camera = raw["subscriptionIdentifier"].split(";")
    assert (s.display_id, s.camera_id) == (display, camera) == split_subscription_identifier(
        s.subscription_identifier)
    assert s.model_dump(by_alias=True, exclude_none=True, exclude={"snapshot_interval"}) == {
        k: v for k, v in raw.items() if k != "snapshotInterval"}
    assert s.snapshot_interval == raw.get("snapshotInterval", 5000)
    assert s.source_url == raw.get("rtspUrl", raw.get("snapshotUrl"))
    if s.crop is not None:
        assert (s.crop.x1, s.crop.y1) == (raw.get("cropX1", raw.get("cropX")), raw.get("cropY1", raw.get("cropY")))


# Hostile strings, placed whole or inside a valid value, in every string field we receive.
HOSTILE = [";", "a;b", "\n", "x\ny", "\r\n", "%", "%00", "%2e%2e%2f", "%3B", '"', "'", '\\"', "\\", "..", "../..",
           "../../etc/passwd", "all", "ALL", "*", "{display_id}", "x" * 10_000, "\x00", "a\x00b", "", " ", "\t",
           "\u202e", "\u200b", "\ufeff", "\u2028", "\ud800", "\x7f", "\x85", "é", "会话", "🚗", "null", "<script>",
           "$(rm -rf /)", "display-001;cam-001", " display-001", "%s%n"]

# (message template, path to the string inside it, how to read the parsed value back)
Getter = Callable[[Any], Any]
FIELDS: list[tuple[dict[str, Any], tuple[str | int, ...], Getter]] = []


def subscription_attr(attr: str, *, listed: bool) -> Getter:
    return lambda m: getattr(m.payload[0] if listed else m.payload, attr)


for key, attr in [("subscriptionIdentifier", "subscription_identifier"), ("rtspUrl", "rtsp_url"),
                  ("snapshotUrl", "snapshot_url"), ("modelUrl", "model_url"), ("modelName", "model_name"),
                  ("modelId", "model_id")]:
    FIELDS.append(({"type": "subscribe", "payload": sub()}, ("payload", key), subscription_attr(attr, listed=False)))
    FIELDS.append(({"type": "setSubscriptionList", "payload": [sub()]}, ("payload", 0, key),
                   subscription_attr(attr, listed=True)))
    FIELDS.append(({"type": "setSubscriptionList", "payload": {"subscriptions": [sub()]}},
                   ("payload", "subscriptions", 0, key), subscription_attr(attr, listed=True)))
FIELDS += [
    ({"type": "unsubscribe", "payload": {"subscriptionIdentifier": "d;c"}}, ("payload", "subscriptionIdentifier"),
     lambda m: m.payload.subscription_identifier),
    ({"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": "s"}},
     ("payload", "displayIdentifier"), lambda m: m.payload.display_identifier),
    ({"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": "s"}},
     ("payload", "sessionId"), lambda m: m.payload.session_id),
    ({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": "p"}},
     ("payload", "displayIdentifier"), lambda m: m.payload.display_identifier),
    ({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": "p"}},
     ("payload", "progressionStage"), lambda m: m.payload.progression_stage),
    ({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "m"}},
     ("payload", "sessionId"), lambda m: m.payload.session_id),
    ({"type": "patchSessionResult", "payload": {"sessionId": "s", "success": True, "message": "m"}},
     ("payload", "message"), lambda m: m.payload.message),
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
def test_hostile_strings_are_rejected_or_preserved_exactly(
        field: tuple[dict[str, Any], tuple[str | int, ...], Getter], hostile: str, placement: str,
        encoding: str) -> None:
    template, path, read_back = field
    valid = str(get(template, path))
    value = {"whole": hostile, "prefix": hostile + valid, "suffix": valid + hostile,
             "middle": valid[: len(valid) // 2] + hostile + valid[len(valid) // 2:]}[placement]
    text = json.dumps(put(template, path, value), ensure_ascii=encoding == "ascii")
    raw: str | bytes = text.encode("utf-8", "surrogatepass") if encoding == "bytes" else text
    result = parse_or_protocol_error(raw)
    if isinstance(result, ProtocolError):
        assert result.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.INVALID_JSON)  # JSON: a lone surrogate in bytes
        long_runs = [run for run in (hostile, value) if len(run) > 60]
        assert not any(run in result.message for run in long_runs)
        return
    got = read_back(result)
    assert got == value and type(got) is str, (got, value)
    if path[-1] == "subscriptionIdentifier":
        assert got.split(";") == list(split_subscription_identifier(got))


@PROPERTY
@given(st.sampled_from(HOSTILE) | st.text(), st.sampled_from(["type", "key", "payloadKey"]))
def test_hostile_strings_as_type_or_key_are_protocol_errors(hostile: str, where: str) -> None:
    message: dict[str, Any] = {"type": "subscribe", "payload": sub()}
    if where == "type":
        message["type"] = hostile
    elif where == "key":
        message[hostile] = 1
    else:
        message["payload"][hostile] = 1
    result = parse_or_protocol_error(json.dumps(message))
    if not isinstance(result, ProtocolError):  # only a real type, or a real key given a value that happens to fit
        assert hostile in INCOMING_TYPES if where == "type" else hostile in ("type", "payload", *FIELD_NAMES)


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
