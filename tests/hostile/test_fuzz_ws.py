"""Property-based fuzzing of every backend message type against the REAL gateway over a real WebSocket.

One fleet (real supervisord, gateway, event listener) for the module, one connection reused by
every example. Each example sends one frame and is judged against an oracle written
independently of the gateway's parser (`oracle_message` below, with the per-item predicate of
tests/gateway/test_protocol_properties.py); the parser is consulted only for what the oracle
leaves to it (JSON that is not plain: NaN, duplicate keys, bad UTF-8, depth), and where both
judge they must agree:

- refused as a whole → exactly one `error` reply, identical to the parser's own (no `index`), and
  nothing else; the subscriptions the gateway reports are unchanged;
- accepted → no error but, for a subscription change, one `invalid_message` error per refused
  item (naming its index and its identifier when that is valid) and the plan's `conflict` /
  `limit_exceeded` errors; the valid items are applied (the stateReport, the 0600 spec files and
  the supervisord programs all converge on the predicted plan); unknown keys never cause an error;
- always: the connection stays open, a following `requestState` is answered with one
  stateReport, the gateway keeps its pid and /health answers, the gateway never logs a failure.

Identifiers and values are generated up to and past every limit of detector_worker/limits.py.
The backend's cameras are a small fixed pool with hostile-looking but valid ids; their workers are
stopped as soon as they start (the gateway is under test, not the workers), so the fuzzing costs
the shared cores almost nothing beyond the gateway itself. FUZZ_EXAMPLES sets the examples per test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from detector_worker import limits
from detector_worker.naming import camera_slug
from gateway import protocol as p
from tests.fleet import Fleet
from tests.gateway.test_protocol_properties import oracle_identifier_ok, oracle_problem
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.hostile.harness import (
    GatewayWatch,
    Link,
    errors_of,
    examples,
    program_name,
    running_fleet,
    stop_camera_workers,
)
from tests.rtsp import free_port

pytestmark = pytest.mark.hostile

MAX_BYTES = p.MAX_MESSAGE_BYTES
DEAD_PORT = free_port()
# The backend's camera pool: ids that look like injections but are valid camera ids.
POOL = ("all", "%(here)s/..")
POOL_URL = {cam: f"rtsp://fuzz:Fuzz%40Secret@127.0.0.1:{DEAD_PORT}/pool{i}" for i, cam in enumerate(POOL)}
SECRET = "Fuzz%40Secret"
MAX_CAMERAS = 20  # the fleet's session_processes.max_concurrent_sessions (the default)

FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                       HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])  # `world` resets once per test


# ---------------------------------------------------------------------------------------------
# The fleet, the link and the model of what the gateway should hold


class World:
    """The module's fleet, its one backend link, and the subscriptions the gateway should hold."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.link = Link(fleet)
        self.watch = GatewayWatch(fleet)
        # the backend's subscriptions the gateway runs, in its priority order: identifier → raw item as sent
        self.subs: dict[str, dict[str, Any]] = {}
        self.examples = 0
        self.valid = 0

    # -- the gateway's plan, predicted (gateway/desired.py) ------------------------------------------
    @staticmethod
    def planned(subs: dict[str, dict[str, Any]]) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(camera → accepted identifiers, identifier → error code) for `subs` in priority order:
        on each camera the first subscription's source is the camera's (a different one is a
        `conflict`); cameras past max_concurrent_sessions, or displays past
        MAX_DISPLAYS_PER_CAMERA on one camera, are `limit_exceeded`."""
        by_camera: dict[str, list[str]] = {}
        for sid in subs:
            by_camera.setdefault(sid.split(";")[1], []).append(sid)
        accepted: dict[str, list[str]] = {}
        refused: dict[str, str] = {}
        for camera, sids in by_camera.items():
            source = _source(subs[sids[0]])
            ok = [s for s in sids if _source(subs[s]) == source]
            refused |= {s: "conflict" for s in sids if s not in ok}
            if len(accepted) >= MAX_CAMERAS:
                refused |= {s: "limit_exceeded" for s in ok}
                continue
            refused |= {s: "limit_exceeded" for s in ok[limits.MAX_DISPLAYS_PER_CAMERA:]}
            accepted[camera] = ok[: limits.MAX_DISPLAYS_PER_CAMERA]
        return accepted, refused

    def change(self, wanted: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """The backend's subscriptions after asking for `wanted`, and the plan's refusals to report:
        running subscriptions keep their place (in their old order), new ones follow in the order
        given; a running subscription whose new definition is refused keeps its old one."""
        previous = self.subs
        ordered = {k: wanted[k] for k in previous if k in wanted}
        ordered |= {k: v for k, v in wanted.items() if k not in ordered}
        _, refused = self.planned(ordered)
        fallback = {k: previous[k] for k in refused if k in previous and previous[k] != ordered.get(k)}
        final = {k: fallback.get(k, v) for k, v in ordered.items()}
        if fallback:
            _, again = self.planned(final)
        else:
            again = refused
        return {k: v for k, v in final.items() if k not in again}, refused

    def reset(self) -> None:
        """Back to one display on each pool camera (no conflicts left to report)."""
        initial = [pool_sub("display-0", cam) for cam in POOL]
        assert not errors_of(self.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": initial})))
        self.subs = {s["subscriptionIdentifier"]: s for s in initial}
        self.converge()

    def converge(self, timeout: float = 30.0) -> None:
        """Wait until the gateway's report, spec files and programs match the predicted plan."""
        accepted, refused = self.planned(self.subs)
        assert not refused, refused  # the model only keeps what the plan accepts
        want_ids = {s for sids in accepted.values() for s in sids}
        specs_dir = self.fleet.base / "run" / "specs"
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            report = self.link.state_report()
            got = [c["subscriptionIdentifier"] for c in report["cameraConnections"]]
            problem = ""
            if sorted(got) != sorted(want_ids):
                problem = f"report has {sorted(got)[:6]}, want {sorted(want_ids)[:6]}"
            else:
                for conn in report["cameraConnections"]:
                    _check_connection(conn, self.subs[conn["subscriptionIdentifier"]])
                problem = _spec_problem(specs_dir, accepted, self.subs) or _program_problem(self.fleet, accepted)
            if not problem:
                stop_camera_workers(self.fleet)
                return
            time.sleep(0.05)
        raise AssertionError(f"the gateway did not apply the subscriptions: {problem}")


def _source(raw: dict[str, Any]) -> tuple[str, str]:
    if raw.get("rtspUrl") is not None:
        return "rtsp", raw["rtspUrl"]
    return "snapshot", raw["snapshotUrl"]


def _check_connection(conn: dict[str, Any], raw: dict[str, Any]) -> None:
    """A stateReport entry echoes the subscription as sent (crop in its own form, modelId with its
    JSON type, null when the backend sent none)."""
    assert conn["modelId"] == raw.get("modelId") and type(conn["modelId"]) is type(raw.get("modelId"))
    assert conn.get("modelName") == raw.get("modelName")
    if raw.get("cropX1") is not None:
        assert [conn[k] for k in ("cropX1", "cropY1", "cropX2", "cropY2")] == \
               [raw[k] for k in ("cropX1", "cropY1", "cropX2", "cropY2")]
    elif raw.get("cropX") is not None:
        assert (conn["cropX1"], conn["cropY1"]) == (raw["cropX"], raw["cropY"]) and "cropX2" not in conn
    else:
        assert "cropX1" not in conn


def _spec_problem(specs_dir: Path, accepted: dict[str, list[str]], subs: dict[str, dict[str, Any]]) -> str:
    want = {f"{camera_slug(cam)}.json": cam for cam in accepted}
    have = {p.name for p in specs_dir.glob("*.json")}
    if have != set(want):
        return f"spec files {sorted(have)}, want {sorted(want)}"
    for name, cam in want.items():
        path = specs_dir / name
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return f"{name}: {err}"
        assert path.stat().st_mode & 0o777 == 0o600, f"{name} is not 0600"
        assert spec["camera_id"] == cam
        if sorted(s["subscription_identifier"] for s in spec["subscriptions"]) != sorted(accepted[cam]):
            return f"{name} lists {[s['subscription_identifier'] for s in spec['subscriptions']]}"
        for s in spec["subscriptions"]:
            raw = subs[s["subscription_identifier"]]
            if (s["model"]["name"], s["model"]["id"]) != (raw.get("modelName"), raw.get("modelId")):
                return f"{name}: model of {s['subscription_identifier']!r} not updated yet"
    return ""


def _program_problem(fleet: Fleet, accepted: dict[str, list[str]]) -> str:
    want = {program_name(cam) for cam in accepted}
    have = set(fleet.programs())
    if have != want:
        return f"programs {sorted(have)}, want {sorted(want)}"
    conf = fleet.base / "conf" / "supervisord.d"
    files = {p.stem for p in conf.glob("*.conf")}
    if files != want:
        return f"program files {sorted(files)}, want {sorted(want)}"
    return ""


@pytest.fixture
def world(module_world: World) -> World:
    """The module's fleet, back to one display on each pool camera: tests run in any order."""
    module_world.reset()
    return module_world


@pytest.fixture(scope="module")
def module_world(tmp_path_factory: pytest.TempPathFactory, hostile_model_cache: Path, module_redis_url: str,
                 module_database_url: str) -> Iterator[World]:
    base = tmp_path_factory.mktemp("fuzz") / "fleet"
    # health_check_interval: one periodic stateReport at connect, then only answers to requestState.
    extra = {"session_processes": {"process_cleanup_timeout": 600, "health_check_interval": 3600,
                                   "heartbeat_timeout": 60}}
    with running_fleet(base, model_cache=hostile_model_cache, redis_url=module_redis_url,
                       database_url=module_database_url, extra=extra) as fleet:
        w = World(fleet)
        w.reset()
        yield w
        w.watch.check()
        assert not w.watch.internal_failures(), w.watch.internal_failures()[:5]
        # credentials never leave the 0600 spec files
        for path in fleet.base.rglob("*"):
            if path.is_file() and path.parent.name != "specs":
                assert SECRET not in path.read_text(errors="replace"), f"{path} holds a source URL's password"
        print(f"\nfuzz: {w.examples} examples ({w.valid} valid), {w.link.reconnects} connection(s)")


# ---------------------------------------------------------------------------------------------
# One example: send, judge against the oracle, check liveness


def frame_of(value: Any) -> str | bytes:
    """A text frame when the text is valid UTF-8, else the same text as a binary frame."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, allow_nan=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def run_example(w: World, frame: str | bytes | list[str] | list[bytes]) -> None:
    w.examples += 1
    whole: str | bytes
    if isinstance(frame, list):  # fragments of one message
        whole = b"".join(f for f in frame if isinstance(f, bytes)) if isinstance(frame[0], bytes) \
            else "".join(f for f in frame if isinstance(f, str))
    else:
        whole = frame
    size = len(whole.encode("utf-8") if isinstance(whole, str) else whole)
    assert size <= MAX_BYTES, "the fuzzer stays under the limit (oversize: test_oversize.py)"
    with contextlib.suppress(InvalidArgument):  # outside a property: nothing to note
        note(f"frame ({size} bytes): {whole[:300]!r}")
    try:
        expected: p.ProtocolError | Any = p.parse_incoming(whole, max_bytes=MAX_BYTES)
    except p.ProtocolError as err:
        expected = err
    verdict = oracle_message(plain_json(whole))
    if verdict is None and not isinstance(expected, p.ProtocolError):
        # JSON the oracle leaves to the parser's rules (e.g. a lone surrogate in an ignored key), and
        # the parser took it: the oracle judges the decoded message all the same
        verdict = oracle_message(json.loads(whole))
    with contextlib.suppress(InvalidArgument):
        note(f"oracle: {verdict}")
    if verdict is not None:  # the oracle judges this one: the parser must agree with it
        assert isinstance(expected, p.ProtocolError) == (verdict.refused is not None), (verdict, expected)
        if isinstance(expected, p.SetSubscriptionList):
            assert [r.index for r in expected.refused] == sorted(verdict.item_errors), (verdict, expected.refused)

    replies = w.link.exchange(frame)
    errors = errors_of(replies)
    assert all(e["code"] != "internal" for e in errors), errors
    changed = False

    deep = _nesting(whole) > 900  # near the recursion limit, which frame depth decides: both refuse
    if deep:
        assert len(replies) == 1 and replies[0]["type"] == "error", replies
        assert replies[0]["error"]["code"] in ("invalid_json", "invalid_message"), replies
        if not isinstance(expected, p.ProtocolError):
            assert "nested too deeply" in replies[0]["error"]["message"], replies
    elif isinstance(expected, p.ProtocolError):
        # exactly the parser's own error, about the whole message, and nothing else
        assert replies == [json.loads(p.dump_outgoing(p.error_message(expected)))], (replies, expected)
        assert "index" not in replies[0]["error"]
    else:
        assert verdict is not None
        w.valid += 1
        others = [m for m in replies if m["type"] != "error"]
        assert [m["type"] for m in others] == (["stateReport"] if verdict.type == "requestState" else []), replies
        got = sorted((e["code"], e["subscriptionIdentifier"] or "", e.get("index", -1)) for e in errors)
        if verdict.wanted is not None:  # a subscription change: item errors, plan errors, then applied
            after, refused = w.change(verdict.wanted(w.subs))
            changed = after != w.subs or list(after) != list(w.subs)
            w.subs = after  # before judging: a failure must not leave the model behind the gateway
            want = [("invalid_message", sid or "", index) for index, sid in verdict.item_errors.items()]
            # a list's plan refusals name the item's place in the list too (subscribe has none)
            want += [(code, sid, _accepted_index(whole, sid, verdict.item_errors)) for sid, code in refused.items()]
            assert got == sorted(want), (got, sorted(want))
            for e in errors:
                if e["code"] == "invalid_message":
                    assert e["requestType"] == verdict.type and e["message"].startswith(f"{verdict.path}[{e['index']}]")
        else:
            assert not errors, errors

    if changed or w.examples % 50 == 0:
        w.converge()
    else:
        report = w.link.state_report()  # the connection is still open and answering
        accepted, _ = w.planned(w.subs)
        assert sorted(c["subscriptionIdentifier"] for c in report["cameraConnections"]) == \
               sorted(s for sids in accepted.values() for s in sids)
    if w.examples % 25 == 0:
        w.watch.check()


def _accepted_index(whole: Any, sid: str, item_errors: dict[int, Any]) -> int:
    """Where the accepted item `sid` stands in a setSubscriptionList's list (-1: not a list message).
    Read from the message as sent, with the gateway's precedence: top-level `subscriptions`, then
    `payload.subscriptions`, then `payload` as a list (null counts as absent)."""
    if not isinstance(whole, dict):
        return -1
    payload = whole.get("payload")
    if whole.get("subscriptions") is not None:
        items = whole["subscriptions"]
    elif isinstance(payload, dict) and payload.get("subscriptions") is not None:
        items = payload["subscriptions"]
    else:
        items = payload
    if not isinstance(items, list):
        return -1
    return next((i for i, item in enumerate(items) if i not in item_errors and isinstance(item, dict)
                 and item.get("subscriptionIdentifier") == sid), -1)


# ---------------------------------------------------------------------------------------------
# The oracle: what the gateway must do with a message, from the protocol's rules (not the parser)


class _NotPlain(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > 64 or len({k for k, _ in pairs}) != len(pairs):
        raise _NotPlain("duplicate keys or a very wide object: the parser's JSON rules decide")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise _NotPlain(name)


def plain_json(whole: str | bytes) -> Any:
    """The frame as JSON when it is plain (UTF-8, standard JSON, no duplicate keys, no NaN, no lone
    surrogate, shallow, at most 64 keys an object, no huge numbers); else `_UNJUDGED`."""
    try:
        text = whole.decode("utf-8") if isinstance(whole, bytes) else whole
        text.encode("utf-8")  # no lone surrogates
        if _nesting(text) > 200:
            return _UNJUDGED
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _UNJUDGED
    if not _plain(value):
        return _UNJUDGED
    return value


_UNJUDGED = object()


def _plain(value: Any) -> bool:
    if isinstance(value, float):
        return value not in (float("inf"), float("-inf"))
    if isinstance(value, int) and not isinstance(value, bool):
        return len(str(abs(value))) <= 400  # the parser's own bound on digits
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):  # (a key holding a lone surrogate: see test_protocol.py, a known inconsistency)
        return all(_plain(v) and not any(0xD800 <= ord(c) <= 0xDFFF for c in k) for k, v in value.items())
    return True


def _id_text(value: Any, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() and value == value.strip()


def _display_ok(value: Any) -> bool:
    return _id_text(value, limits.MAX_ID) and ";" not in value


def _session_ok(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value <= 2**63 - 1
    return _id_text(value, limits.MAX_SESSION_ID)


class Verdict:
    """What the oracle expects: `refused` (why the whole message is refused) or an accepted message
    with, for a subscription change, the refused items (index → identifier or None) and a function
    from the current subscriptions to the wanted ones."""

    def __init__(self, type_: Any, refused: str | None = None) -> None:
        self.type = type_
        self.refused = refused
        self.item_errors: dict[int, str | None] = {}
        self.path = ""
        self.wanted: Any = None

    def __repr__(self) -> str:
        return f"Verdict({self.type!r}, refused={self.refused!r}, items={self.item_errors})"


def oracle_message(value: Any) -> Verdict | None:
    """The oracle's verdict on one message; None when it leaves the message to the parser (JSON
    that is not plain)."""
    if value is _UNJUDGED:
        return None
    if not isinstance(value, dict):
        return Verdict(None, "not an object")
    type_ = value.get("type")
    if not isinstance(type_, str) or type_ not in p.INCOMING_TYPES:
        return Verdict(type_, "type")
    verdict = Verdict(type_)
    if type_ == "requestState":
        return verdict
    if type_ == "setSubscriptionList":
        payload = value.get("payload")
        if "subscriptions" in value:
            items, verdict.path = value["subscriptions"], "subscriptions"
        elif isinstance(payload, dict) and "subscriptions" in payload:
            items, verdict.path = payload["subscriptions"], "payload.subscriptions"
        elif "payload" in value:
            items, verdict.path = payload, "payload"
        else:
            return Verdict(type_, "no list")
        if not isinstance(items, list) or len(items) > limits.MAX_SUBSCRIPTIONS:
            return Verdict(type_, "not a list, or too long")
        accepted: dict[str, dict[str, Any]] = {}
        for index, item in enumerate(items):
            sid = item.get("subscriptionIdentifier") if isinstance(item, dict) else None
            if oracle_problem(item) is not None or sid in accepted:
                verdict.item_errors[index] = sid if oracle_identifier_ok(sid) else None
            else:
                accepted[sid] = item
        keep = [sid for sid in verdict.item_errors.values() if sid is not None]

        def wanted_list(current: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
            # a running subscription whose new definition was refused keeps its old one
            return accepted | {sid: current[sid] for sid in keep if sid in current and sid not in accepted}

        verdict.wanted = wanted_list
        return verdict
    obj = value["payload"] if value.get("payload") is not None else {
        k: v for k, v in value.items() if k not in ("type", "payload")}
    if not isinstance(obj, dict):
        return Verdict(type_, "not an object")
    ok = True
    if type_ == "subscribe":
        ok = oracle_problem(obj) is None
        sid = obj.get("subscriptionIdentifier")
        verdict.wanted = lambda current: current | {sid: obj}
    elif type_ == "unsubscribe":
        sid = obj.get("subscriptionIdentifier")
        ok = oracle_identifier_ok(sid)
        verdict.wanted = lambda current: {k: v for k, v in current.items() if k != sid}
    elif type_ == "setSessionId":
        ok = _display_ok(obj.get("displayIdentifier")) and "sessionId" in obj and (
            obj["sessionId"] is None or _session_ok(obj["sessionId"]))
    elif type_ == "setProgressionStage":
        stage = obj.get("progressionStage")
        ok = _display_ok(obj.get("displayIdentifier")) and (stage is None or (
            isinstance(stage, str) and len(stage) <= limits.MAX_STAGE and stage.isprintable()))
    else:  # patchSessionResult
        message = obj.get("message")
        ok = _session_ok(obj.get("sessionId")) and isinstance(obj.get("success"), bool) and (message is None or (
            isinstance(message, str) and len(message) <= limits.MAX_RESULT_MESSAGE
            and message.replace("\t", "").replace("\n", "").replace("\r", "").isprintable()))
    return verdict if ok else Verdict(type_, "a field")


def _nesting(whole: str | bytes) -> int:
    """How deep `[`/`{` nest at most (strings ignored): a cheap scan, no JSON parser."""
    text = whole.decode("utf-8", "replace") if isinstance(whole, bytes) else whole
    depth = most = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            most = max(most, depth)
        elif char in "]}":
            depth -= 1
    return most


# ---------------------------------------------------------------------------------------------
# Strategies

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)

# Printable identifier parts (the protocol's rules), plus hostile-looking valid ones.
id_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
                         exclude_characters=";") | st.just(" ")
HOSTILE_IDS = ["%(here)s", "%(ENV_HOME)s", "[program:x]", "..", "../../etc", "/", "all", "ALL", "camera-all",
               "events", "'\"`$(id)", "\\", "x" * limits.MAX_ID, "y" * (limits.MAX_ID - 1), "сam-1", "ｃａｍ", "🚗",
               "a b", "display-0", "display-1"]
id_parts = (st.text(id_chars, min_size=1, max_size=40).filter(lambda s: s == s.strip())
            | st.sampled_from(HOSTILE_IDS))
# Any valid text of a field that is free text (modelName, progressionStage).
line_text = st.text(id_chars | st.sampled_from(";\"'%\\"), max_size=80) | st.sampled_from(
    ["", "x" * min(limits.MAX_MODEL_NAME, limits.MAX_STAGE)])
# Values at and just past every limit of detector_worker/limits.py (strings, then numbers).
EDGE_TEXT = ["d" * limits.MAX_ID, "d" * (limits.MAX_ID + 1), "d" * limits.MAX_ID + ";" + "c" * limits.MAX_ID,
             "d" * limits.MAX_ID + ";" + "c" * (limits.MAX_ID + 1), "d" * (limits.MAX_ID + 1) + ";c",
             "d;" + "c" * (limits.MAX_SUBSCRIPTION_ID + 1), "m" * limits.MAX_MODEL_ID, "m" * (limits.MAX_MODEL_ID + 1),
             "n" * limits.MAX_MODEL_NAME, "n" * (limits.MAX_MODEL_NAME + 1), "s" * limits.MAX_SESSION_ID,
             "s" * (limits.MAX_SESSION_ID + 1), "p" * limits.MAX_STAGE, "p" * (limits.MAX_STAGE + 1),
             "r" * limits.MAX_RESULT_MESSAGE, "r" * (limits.MAX_RESULT_MESSAGE + 1),
             "rtsp://h/" + "u" * (limits.MAX_URL - 9), "rtsp://h/" + "u" * (limits.MAX_URL - 8),
             "http://h/" + "u" * (limits.MAX_URL - 9), "http://h/" + "u" * (limits.MAX_URL - 8)]
EDGE_NUMBERS = [limits.MAX_MODEL_ID_INT, limits.MAX_MODEL_ID_INT + 1, limits.MAX_CROP_COORD, limits.MAX_CROP_COORD + 1,
                limits.MIN_SNAPSHOT_INTERVAL_MS - 1, limits.MIN_SNAPSHOT_INTERVAL_MS, limits.MAX_SNAPSHOT_INTERVAL_MS,
                limits.MAX_SNAPSHOT_INTERVAL_MS + 1, -(2**63), -(2**63) - 1, 2**63 - 1]
HOSTILE_TEXT = ["\n", "a\nb", "\r", "\x00", "\u202e", "\u200b", "\ufeff", "\u2028", "\x7f", "\x85", "\ud800",
                " lead", "trail ", "\u00a0", "x" * 5000, "a;b;c", "%", "%(here)s", "[program:x]\ncommand=sh",
                "file:///etc/passwd", "rtsp://a b/", "http://u:p@h\n/", ""]


@st.composite
def pool_subs(draw: st.DrawFn, camera: str | None = None) -> dict[str, Any]:
    """A valid subscription on a pool camera (fixed source and model: no worker ever needs more)."""
    cam = camera if camera is not None else draw(st.sampled_from(POOL))
    sub: dict[str, Any] = pool_sub(draw(id_parts), cam)
    model_id = draw(st.sampled_from(["as is", "int", "absent", "null"]))
    if model_id == "int":
        sub["modelId"] = draw(st.integers(0, limits.MAX_MODEL_ID_INT))
    elif model_id != "as is":
        sub.pop("modelId") if model_id == "absent" else sub.update(modelId=None)
    for key in draw(st.lists(st.sampled_from(UNKNOWN_KEYS) | st.text(max_size=8), max_size=2, unique=True)):
        if key not in SUBSCRIPTION_KEYS:  # unknown keys: ignored, never a reason to refuse
            sub[key] = draw(json_values)
    if draw(st.booleans()):
        sub["modelName"] = draw(line_text | st.none())
    else:
        sub.pop("modelName")
    crop = draw(st.sampled_from(["none", "box", "legacy", "nulls"]))
    if crop == "box":
        x1, y1 = draw(st.integers(0, 99_999)), draw(st.integers(0, 99_999))
        sub |= {"cropX1": x1, "cropY1": y1, "cropX2": draw(st.integers(x1 + 1, 100_000)),
                "cropY2": draw(st.integers(y1 + 1, 100_000))}
    elif crop == "legacy":
        sub |= {"cropX": draw(st.integers(0, 100_000)), "cropY": draw(st.integers(0, 100_000))}
    elif crop == "nulls":
        sub |= dict.fromkeys(("cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY"))
    if draw(st.booleans()):  # RTSP stays the source when both are given
        sub["snapshotUrl"] = f"http://cam:{SECRET}@127.0.0.1:{DEAD_PORT}/snap.jpg"
        sub["snapshotInterval"] = draw(st.none() | st.integers(100, 3_600_000))
    return sub


SUBSCRIPTION_KEYS = {"subscriptionIdentifier", "rtspUrl", "snapshotUrl", "snapshotInterval", "modelUrl", "modelName",
                     "modelId", "cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY"}
UNKNOWN_KEYS = ["displayName", "requestId", "rtsp_url", "model_id", "cameraIdentifier", "", "__proto__", "%(here)s",
                "a\nb"]


def pool_sub(display: str, camera: str) -> dict[str, Any]:
    return {"subscriptionIdentifier": f"{display};{camera}", "rtspUrl": POOL_URL[camera], "modelUrl": MODEL_URL,
            "modelId": MODEL_ID, "modelName": "stand-in"}


@st.composite
def subscription_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-4 subscriptions covering every pool camera, unique identifiers."""
    subs = [draw(pool_subs(cam)) for cam in POOL]
    subs += draw(st.lists(pool_subs(), max_size=2))
    unique: dict[str, dict[str, Any]] = {}
    for s in subs:
        unique.setdefault(s["subscriptionIdentifier"], s)
    return list(unique.values())


@st.composite
def lists_with_refused_items(draw: st.DrawFn) -> list[Any]:
    """A valid list with items that must be refused alone put in anywhere: a bad value in one field,
    an identifier past a limit, a duplicate, not an object."""
    items: list[Any] = draw(subscription_lists())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["bad value", "long id", "duplicate", "not an object"]))
        bad: Any = draw(pool_subs())
        if kind == "bad value":
            key = draw(st.sampled_from(["rtspUrl", "modelUrl", "modelId", "modelName", "snapshotInterval", "cropX"]))
            bad[key] = draw(st.sampled_from(BAD_VALUES[key]))
        elif kind == "long id":
            bad["subscriptionIdentifier"] = draw(st.sampled_from(EDGE_TEXT[1:6:2] + EDGE_TEXT[4:6]))
        elif kind == "duplicate":  # of a valid item (refused as a duplicate) or of a refused one
            copied = items[draw(st.integers(0, len(items) - 1))]
            bad = dict(copied) if isinstance(copied, dict) else copied
        else:
            bad = draw(st.sampled_from([None, 1, "display-0;all", [], True]))
        items.insert(draw(st.integers(0, len(items))), bad)
    return items


BAD_VALUES: dict[str, list[Any]] = {
    "rtspUrl": ["http://127.0.0.1/x", "rtsp:///x", "rtsp://h:99999/x", "rtsp://h/a b", "", 5,
                "rtsp://h/" + "u" * (limits.MAX_URL - 8)],
    "modelUrl": ["/srv/m.mpta", "ftp://h/m.mpta", "file://nas/m.mpta", None],
    "modelId": [-1, limits.MAX_MODEL_ID_INT + 1, "", "m" * (limits.MAX_MODEL_ID + 1), True, 1.5],
    "modelName": ["n" * (limits.MAX_MODEL_NAME + 1), "a\tb", 3],
    "snapshotInterval": [limits.MIN_SNAPSHOT_INTERVAL_MS - 1, limits.MAX_SNAPSHOT_INTERVAL_MS + 1, "5000", 5000.0],
    "cropX": [-1, limits.MAX_CROP_COORD + 1, 1.5],  # (with cropY absent: incomplete as well)
}


def session_ids() -> st.SearchStrategy[Any]:
    return (st.text(id_chars, min_size=1, max_size=40).filter(lambda s: s == s.strip())
            | st.integers(-(2**63), 2**63 - 1)
            | st.sampled_from(["8f3c2a", "%(here)s", "../../x", "x" * limits.MAX_SESSION_ID, "12345", 12345]))


@st.composite
def valid_messages(draw: st.DrawFn, w: World) -> dict[str, Any]:
    kind = draw(st.sampled_from(["setSubscriptionList", "setSubscriptionList", "subscribe", "unsubscribe",
                                 "requestState", "setSessionId", "setProgressionStage", "patchSessionResult"]))
    # Every draw is made whatever the gateway holds (hypothesis replays draws), then mapped onto it.
    pick, fresh = draw(st.integers(0, 10**6)), draw(id_parts)
    displays = sorted({sid.split(";")[0] for sid in w.subs})
    display = displays[pick % len(displays)] if displays and pick % 2 else fresh
    match kind:
        case "setSubscriptionList":
            items = draw(subscription_lists() | lists_with_refused_items())
            shape = draw(st.sampled_from(["top-level", "payload list", "payload object"]))
            if shape == "top-level":
                return {"type": kind, "subscriptions": items}
            return {"type": kind, "payload": items if shape == "payload list" else {"subscriptions": items}}
        case "subscribe":
            if draw(st.booleans()):  # the fields beside `type` (no payload)
                return {"type": kind, **draw(pool_subs())}
            return {"type": kind, "payload": draw(pool_subs())}
        case "unsubscribe":
            # an unknown identifier, or a display of a camera that keeps another one
            cams: dict[str, list[str]] = {}
            for sid in w.subs:
                cams.setdefault(sid.split(";")[1], []).append(sid)
            removable = sorted(s for sids in cams.values() if len(sids) > 1 for s in sids)
            unknown = f"{fresh};{draw(id_parts)}"
            sid = removable[pick % len(removable)] if removable and pick % 3 == 0 else unknown
            return {"type": kind, "payload": {"subscriptionIdentifier": sid}}
        case "requestState":
            form = draw(st.sampled_from(["absent", "null", "empty"]))
            return {"type": kind} | ({} if form == "absent" else {"payload": None if form == "null" else {}})
        case "setSessionId":
            fields = {"displayIdentifier": display, "sessionId": draw(st.none() | session_ids())}
            return {"type": kind, **fields} if draw(st.booleans()) else {"type": kind, "payload": fields}
        case "setProgressionStage":
            return {"type": kind, "payload": {"displayIdentifier": display,
                                              "progressionStage": draw(st.none() | line_text)}}
        case _:
            result: dict[str, Any] = {"sessionId": draw(session_ids()), "success": draw(st.booleans())}
            if draw(st.booleans()):
                result["message"] = draw(st.none() | st.text(id_chars | st.sampled_from("\t\r\n"), max_size=200))
            return {"type": kind, "payload": result}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value` (objects and lists), the root excluded."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += [(*prefix, k), *_paths(v, (*prefix, k))]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += [(*prefix, i), *_paths(v, (*prefix, i))]
    return out


SNAKE = ["subscription_identifier", "rtsp_url", "model_url", "model_id", "crop_x1", "display_identifier",
         "session_id", "requestId", "Type", "PAYLOAD", "payload ", "__proto__", "constructor"]
NUMBERS = [0, -1, 1, 99, 100, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 10**399, 100_000, 100_001, 3_600_001,
           0.5, 5000.0, -0.0, 1e308, 1e-320, True, False]


@st.composite
def mutated_messages(draw: st.DrawFn, w: World) -> Any:
    """A valid message with 1-3 mutations: a value replaced (random JSON, hostile text, edge numbers,
    wrong types, null), a key removed, an unknown or mis-spelled key added, the type changed."""
    msg = draw(valid_messages(w))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "replace", "remove", "add", "type"]))
        pick = draw(st.integers(0, 10**6))
        value = draw(json_values | st.sampled_from(HOSTILE_TEXT) | st.sampled_from(NUMBERS)
                     | st.sampled_from(EDGE_TEXT) | st.sampled_from(EDGE_NUMBERS)
                     | st.builds(lambda v: [v], json_values))
        key = draw(st.sampled_from(SNAKE) | st.text(max_size=8))
        if op == "type":
            msg["type"] = value if pick % 2 else sorted(p.INCOMING_TYPES | p.OUTGOING_TYPES)[pick % 11]
            continue
        paths = _paths(msg)
        if not paths:
            continue
        path = paths[pick % len(paths)]
        parent: Any = msg
        for part in path[:-1]:
            parent = parent[part]
        if op == "replace":
            parent[path[-1]] = value
        elif op == "remove":
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[key] = value
    return msg


@st.composite
def raw_frames(draw: st.DrawFn) -> str | bytes:
    """Frames that are mostly not even messages: random text and bytes, random JSON, JSON we refuse
    (NaN, huge numbers, duplicate keys), deep nesting, broken encodings, truncations."""
    kind = draw(st.sampled_from(["text", "bytes", "json", "nan", "bignum", "dupkey", "nesting", "payload_nesting",
                                 "truncated", "encoding", "wide_object", "long_string"]))
    valid = {"type": "subscribe", "payload": pool_sub("display-9", POOL[0])}
    match kind:
        case "text":
            return draw(st.text(max_size=200))
        case "bytes":
            return draw(st.binary(max_size=200))
        case "json":
            return json.dumps(draw(json_values), allow_nan=True)
        case "nan":
            c = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"]))
            return '{"type": "subscribe", "payload": {"modelId": NUM}}'.replace("NUM", c)
        case "bignum":
            digits = draw(st.integers(1, 20_000))
            return '{"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": NUM}}'.replace(
                "NUM", "9" * digits)
        case "dupkey":
            key = draw(st.sampled_from(['"type"', '"payload"']))
            return '{"type": "requestState", KEY: null, KEY: {}}'.replace("KEY", key)
        case "nesting":
            depth = draw(st.integers(1, 150_000))
            opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
            return opener * depth + "1" + closer * draw(st.sampled_from([depth, 0, max(0, depth - 1)]))
        case "payload_nesting":
            depth = draw(st.integers(1, 3000))
            return '{"type": "subscribe", "payload": ' + "[" * depth + "]" * depth + "}"
        case "truncated":
            text = json.dumps(valid)
            return text[: draw(st.integers(0, len(text) - 1))]
        case "encoding":
            text = json.dumps(valid, ensure_ascii=False)
            codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "utf-8-sig"]))
            data = (text + "é").encode(codec)
            return data if draw(st.booleans()) else b"\xc0\xaf" + data  # overlong "/" in front
        case "wide_object":
            n = draw(st.integers(14, 5000))
            return json.dumps({"type": "subscribe", "payload": {f"k{i}": i for i in range(n)}})
        case _:
            return json.dumps({"type": "setProgressionStage",
                               "payload": {"displayIdentifier": "d", "progressionStage": "x" *
                                           draw(st.integers(250, 900_000))}})


# ---------------------------------------------------------------------------------------------
# The properties


@settings(FUZZ, max_examples=examples(0.8))
@given(data=st.data())
def test_valid_messages_of_every_type_are_applied(world: World, data: st.DataObject) -> None:
    msg = data.draw(valid_messages(world))
    run_example(world, frame_of(msg))


@settings(FUZZ, max_examples=examples(1.5))
@given(data=st.data())
def test_mutated_messages_of_every_type_are_refused_alone_or_applied(world: World, data: st.DataObject) -> None:
    msg = data.draw(mutated_messages(world))
    run_example(world, frame_of(msg))


@settings(FUZZ, max_examples=examples(1.5))
@given(frame=raw_frames())
def test_garbage_frames_get_one_error_and_the_connection_stays(world: World, frame: str | bytes) -> None:
    run_example(world, frame)


@settings(FUZZ, max_examples=examples(0.6))
@given(data=st.data(), how=st.sampled_from(["binary", "fragments", "binary_fragments"]))
def test_any_message_as_binary_or_fragmented_frames(world: World, data: st.DataObject, how: str) -> None:
    msg = data.draw(valid_messages(world) | mutated_messages(world))
    text = frame_of(msg) if data.draw(st.booleans()) else json.dumps(msg)
    unit: str | bytes = text if isinstance(text, bytes) or how == "fragments" else text.encode()
    if how == "binary":
        frame: Any = unit
    else:  # fragments of bytes may split a character: still one valid message once joined
        picks = data.draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=6))  # whatever the length
        cuts = sorted({1 + c % max(1, len(unit) - 1) for c in picks})
        bounds = [0, *cuts, len(unit)]
        frame = [unit[a:b] for a, b in itertools.pairwise(bounds) if unit[a:b]]
    run_example(world, frame)


# ---------------------------------------------------------------------------------------------
# Found by the fuzzer, kept as plain regressions


def test_a_source_conflict_is_reported_as_conflict_and_the_rest_is_applied(world: World) -> None:
    """Two subscriptions on one camera with different sources: the later one (running ones first,
    then in list order) is refused with a `conflict` error naming it; everything else is applied."""
    good = [pool_sub("display-0", cam) for cam in POOL]
    clash = pool_sub("display-zz", POOL[0]) | {"rtspUrl": f"rtsp://127.0.0.1:{DEAD_PORT}/another-source"}
    replies = world.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": [clash, *good]}))
    assert [(e["code"], e["subscriptionIdentifier"], e["requestType"]) for e in errors_of(replies)] == \
           [("conflict", clash["subscriptionIdentifier"], "setSubscriptionList")], replies
    assert SECRET not in json.dumps(replies) and "another-source" not in json.dumps(replies)
    world.subs = {s["subscriptionIdentifier"]: s for s in good}
    world.converge()
    # and one `subscribe` that clashes with a running camera gets the same answer, for itself only
    # (the earlier refusal was reported to the message that named it)
    clash2 = pool_sub("display-yy", POOL[1]) | {"rtspUrl": f"rtsp://127.0.0.1:{DEAD_PORT}/third-source"}
    errors = errors_of(world.link.exchange(json.dumps({"type": "subscribe", "payload": clash2})))
    assert [(e["code"], e["subscriptionIdentifier"], e["requestType"]) for e in errors] == [
        ("conflict", clash2["subscriptionIdentifier"], "subscribe")]
    world.converge()
    world.reset()


def test_a_refused_item_keeps_the_running_definition_and_the_rest_applies(world: World) -> None:
    """A list whose new definition of a running subscription is refused: that one keeps running as
    it was (not removed), the other items are applied, and the error names the item's index."""
    running = [pool_sub("display-0", cam) for cam in POOL]
    bad = running[0] | {"modelUrl": "ftp://nowhere/m.mpta", "modelName": "new name"}
    added = pool_sub("display-new", POOL[1])
    replies = world.link.exchange(json.dumps({"type": "setSubscriptionList", "subscriptions": [added, bad]}))
    assert [(e["code"], e["subscriptionIdentifier"], e["index"]) for e in errors_of(replies)] == [
        ("invalid_message", bad["subscriptionIdentifier"], 1)], replies
    assert errors_of(replies)[0]["message"] == "subscriptions[1].modelUrl: URL scheme must be http, https or file"
    world.subs = {s["subscriptionIdentifier"]: s for s in (running[0], added)}
    world.converge()
    world.reset()


@pytest.mark.parametrize("offset", [65_534, 65_535, 65_536, 100_000])
def test_an_older_crop_offset_up_to_the_protocol_limit_is_applied(world: World, offset: int) -> None:
    """cropX/cropY may be 0 … 100,000 (docs/protocol.md); an offset beyond the frame is the worker's
    run-time problem, never a gateway failure, and it must not jam later subscription changes."""
    legacy = pool_sub("display-legacy", POOL[0]) | {"cropX": offset, "cropY": offset}
    replies = world.link.exchange(json.dumps({"type": "subscribe", "payload": legacy}))
    assert not errors_of(replies), replies
    world.subs[legacy["subscriptionIdentifier"]] = legacy
    world.converge()
    spec = json.loads((world.fleet.base / "run/specs" / f"{camera_slug(POOL[0])}.json").read_text())
    (crop,) = [s["crop"] for s in spec["subscriptions"]
               if s["subscription_identifier"] == legacy["subscriptionIdentifier"]]
    # the older form is a top-left corner only: the crop runs to the frame's edges
    assert (crop["x1"], crop["y1"], crop["x2"], crop["y2"]) == (offset, offset, None, None)
    # the next change still goes through
    after = pool_sub("display-after", POOL[1])
    assert not errors_of(world.link.exchange(json.dumps({"type": "subscribe", "payload": after})))
    world.subs[after["subscriptionIdentifier"]] = after
    world.converge()
    world.reset()


def test_numbers_at_the_edges_of_float_parsing(world: World) -> None:
    """Numbers Python's json accepts but a backend could never mean: refused, never a crash."""
    for number in ["1e309", "-1e309", "1" + "0" * 400, "1" + "0" * 5000, "0." + "0" * 5000 + "1", "1e-99999",
                   "-0", "1.0e+0000000000000000000000000000000001"]:
        for template in ('{"type": "subscribe", "payload": {"subscriptionIdentifier": "d;all", "modelId": %s}}',
                         '{"type": "setSessionId", "payload": {"displayIdentifier": "d", "sessionId": %s}}',
                         '[%s]', '%s'):
            run_example(world, template.replace("%s", number))


def test_a_connection_closed_on_purpose_is_reopened_and_finds_its_subscriptions(world: World) -> None:
    world.link.close()
    world.converge()  # reconnects: the same subscriptions, nothing restarted or removed
    assert world.link.reconnects >= 2
    run_example(world, '{"type": "requestState"}')


@pytest.fixture(autouse=True)
def _report_progress(world: World) -> Iterator[None]:
    yield
    world.watch.check()


if os.environ.get("FUZZ_VERBOSE"):
    print(f"fuzz: FUZZ_EXAMPLES={examples()}")
