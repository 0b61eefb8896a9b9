"""setSubscriptionList item by item, against an oracle written independently of the parser.

Lists of subscription-like items are generated (valid ones, ones with one bad value, extra
unknown keys, nulls in optional fields, identifiers up to and past every limit, duplicates,
non-objects), in all three list shapes. `oracle_problem` below is our own small predicate of what
a valid item is, from the protocol's rules and `detector_worker.limits`; it shares no code with
`gateway.protocol` or `detector_worker.config.fields`. Checked:

- every item is either in `subscriptions` or in `refused`, exactly once (by index, in order);
- items the oracle finds valid (and not a repeat of an earlier accepted identifier) are accepted,
  converted faithfully; all others are refused, naming their index, their identifier when it is
  valid, and the path of the item;
- unknown keys never cause a refusal: removing them changes nothing but `ignored`.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from detector_worker import limits
from gateway.protocol import ProtocolError, SetSubscriptionList, parse_incoming

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example,
                                           HealthCheck.data_too_large])

KNOWN = ("subscriptionIdentifier", "rtspUrl", "snapshotUrl", "snapshotInterval", "modelUrl", "modelName", "modelId",
         "cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY")
OPTIONAL = set(KNOWN) - {"subscriptionIdentifier", "modelUrl"}

# ---------------------------------------------------------------------------------------------
# The oracle: what a valid item is, written from the rules, not from the parser


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _printable(text: str) -> bool:
    return text.isprintable()


def _identifier_text(text: Any, limit: int) -> bool:
    return (isinstance(text, str) and 0 < len(text) <= limit and _printable(text) and text == text.strip())


def oracle_identifier_ok(value: Any) -> bool:
    if not isinstance(value, str) or value.count(";") != 1:
        return False
    display, camera = value.split(";")
    return _identifier_text(display, limits.MAX_ID) and _identifier_text(camera, limits.MAX_ID)


def _url_ok(value: Any, schemes: set[str]) -> bool:
    if not isinstance(value, str) or not value or len(value) > limits.MAX_URL:
        return False
    if not _printable(value) or " " in value:
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    del port
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        return False
    if scheme == "file":
        return parts.netloc in ("", "localhost") and parts.path.startswith("/")
    return bool(parts.hostname)


def _model_id_ok(value: Any) -> bool:
    if _is_int(value):
        return 0 <= value <= limits.MAX_MODEL_ID_INT
    return _identifier_text(value, limits.MAX_MODEL_ID)


def _coord_ok(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= limits.MAX_CROP_COORD


def oracle_problem(item: Any) -> str | None:
    """Why `item` is not a valid subscription (None: it is). Unknown keys play no part; null in an
    optional field is the field not given."""
    if not isinstance(item, dict):
        return "not an object"
    given = {k: v for k, v in item.items() if k in KNOWN and not (v is None and k in OPTIONAL)}
    if not oracle_identifier_ok(given.get("subscriptionIdentifier")):
        return "subscriptionIdentifier"
    if "rtspUrl" in given and not _url_ok(given["rtspUrl"], {"rtsp", "rtsps"}):
        return "rtspUrl"
    if "snapshotUrl" in given and not _url_ok(given["snapshotUrl"], {"http", "https"}):
        return "snapshotUrl"
    if "rtspUrl" not in given and "snapshotUrl" not in given:
        return "no source"
    interval = given.get("snapshotInterval", 5000)
    if not (_is_int(interval) and limits.MIN_SNAPSHOT_INTERVAL_MS <= interval <= limits.MAX_SNAPSHOT_INTERVAL_MS):
        return "snapshotInterval"
    if not _url_ok(given.get("modelUrl"), {"http", "https", "file"}):
        return "modelUrl"
    name = given.get("modelName", "")
    if not (isinstance(name, str) and len(name) <= limits.MAX_MODEL_NAME and _printable(name)):
        return "modelName"
    if "modelId" in given and not _model_id_ok(given["modelId"]):
        return "modelId"
    box = [k for k in ("cropX1", "cropY1", "cropX2", "cropY2") if k in given]
    legacy = [k for k in ("cropX", "cropY") if k in given]
    if not all(_coord_ok(given[k]) for k in box + legacy):
        return "crop value"
    if box and len(box) != 4:
        return "crop incomplete"
    if box and not (given["cropX1"] < given["cropX2"] and given["cropY1"] < given["cropY2"]):
        return "crop order"
    if not box and len(legacy) == 1:
        return "legacy crop incomplete"
    return None


def oracle_verdicts(items: list[Any]) -> list[str | None]:
    """Per item: None (accepted) or why it is refused; a valid item repeating the identifier of an
    earlier accepted one is a duplicate."""
    seen: set[str] = set()
    out: list[str | None] = []
    for item in items:
        problem = oracle_problem(item)
        if problem is None:
            sid = item["subscriptionIdentifier"]
            if sid in seen:
                problem = "duplicate"
            seen.add(sid)
        out.append(problem)
    return out


# ---------------------------------------------------------------------------------------------
# Generating items

id_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
                         exclude_characters=";")
BAD_CHARS = ["\n", "\x00", "\u202e", "\u200b", "\u00a0", "\x85", "\u2028", ";"]


VALID_PART_KINDS = ["short", "short", "short", "limit", "limit-1"]
ANY_PART_KINDS = [*VALID_PART_KINDS, "over", "far over", "empty", "padded", "bad char"]


@st.composite
def id_parts(draw: st.DrawFn, valid: bool = False) -> str:
    """A display or camera id: short, at MAX_ID or just under it; unless `valid`, also just past
    MAX_ID, far past it, empty, padded with whitespace, or with a forbidden character."""
    kind = draw(st.sampled_from(VALID_PART_KINDS if valid else ANY_PART_KINDS))
    base = draw(st.text(id_chars, min_size=1, max_size=12))
    match kind:
        case "short":
            return base
        case "limit":
            return (base * limits.MAX_ID)[: limits.MAX_ID]
        case "limit-1":
            return (base * limits.MAX_ID)[: limits.MAX_ID - 1]
        case "over":
            return (base * (limits.MAX_ID + 1))[: limits.MAX_ID + 1]
        case "far over":
            return base * 200
        case "empty":
            return ""
        case "padded":
            return draw(st.sampled_from([" ", "\t"])) + base
        case _:
            cut = draw(st.integers(0, len(base)))
            return base[:cut] + draw(st.sampled_from(BAD_CHARS)) + base[cut:]


POOL_IDS = ["d1;c1", "d2;c1", "d1;c2", "d" * limits.MAX_ID + ";" + "c" * limits.MAX_ID]


@st.composite
def identifiers(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["valid"] * 7 + ["pool"] * 3 + ["parts"] * 2 + ["no ;", "two ;", "not str"]))
    match kind:
        case "valid":
            return f"{draw(id_parts(valid=True))};{draw(id_parts(valid=True))}"
        case "parts":
            return f"{draw(id_parts())};{draw(id_parts())}"
        case "pool":  # few distinct values: duplicates are common
            return draw(st.sampled_from(POOL_IDS))
        case "no ;":
            return draw(id_parts())
        case "two ;":
            return f"{draw(id_parts())};{draw(id_parts())};x"
        case _:
            return draw(st.sampled_from([None, 5, ["d", "c"], {"d": "c"}, True]))


GOOD_RTSP = ["rtsp://cam/stream", "rtsps://u:p%40ss@10.0.0.5:554/s?x=1", "RTSP://h:1/a"]
BAD_RTSP = ["http://cam/x", "rtsp:///x", "rtsp://cam:99999/x", "rtsp://cam/a b", "rtsp://cam/\n", "", "cam/stream",
            "rtsp://[::1/x", "rtsp://h/" + "a" * limits.MAX_URL, 7]
GOOD_HTTP = ["http://cam/snap.jpg", "https://u:p@cam:8443/s?t=%20"]
BAD_HTTP = ["rtsp://cam/x", "ftp://cam/x", "http://", "http://cam/\x7f", 1.5]
GOOD_MODEL_URLS = ["http://storage/m.mpta", "file:///srv/m.mpta", "file://localhost/m.mpta", "HTTPS://s/m.mpta"]
BAD_MODEL_URLS = ["/srv/m.mpta", "models/m.mpta", "ftp://h/m.mpta", "file://nas/m.mpta", "file:relative",
                  None, ["http://h/m"]]
GOOD_MODEL_IDS = [0, 102, limits.MAX_MODEL_ID_INT, "car-v1", "m" * limits.MAX_MODEL_ID, "102"]
BAD_MODEL_IDS = [-1, limits.MAX_MODEL_ID_INT + 1, "", "m" * (limits.MAX_MODEL_ID + 1), " pad", True, 1.5, {"id": 1}]
GOOD_NAMES = ["Car Frontal Pipeline", "", "n" * limits.MAX_MODEL_NAME, "a;b %(x)s"]
BAD_NAMES = ["n" * (limits.MAX_MODEL_NAME + 1), "a\tb", 3]
GOOD_INTERVALS = [limits.MIN_SNAPSHOT_INTERVAL_MS, 5000, limits.MAX_SNAPSHOT_INTERVAL_MS]
BAD_INTERVALS = [limits.MIN_SNAPSHOT_INTERVAL_MS - 1, limits.MAX_SNAPSHOT_INTERVAL_MS + 1, "5000", 5000.0, False]
COORDS = [0, 1, 99, 100, limits.MAX_CROP_COORD - 1, limits.MAX_CROP_COORD]
BAD_COORDS = [-1, limits.MAX_CROP_COORD + 1, 1.5, "10", True]
UNKNOWN_KEYS = ["displayName", "requestId", "rtsp_url", "model_id", "cameraIdentifier", "", "Type", "__proto__",
                "subscriptionidentifier", "%(here)s", "a\nb", "x" * 300]
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def _pick(draw: st.DrawFn, good: list[Any], bad: list[Any], p_bad: int) -> Any:
    """A good value, or (about 1 in `p_bad`) a bad one."""
    return draw(st.sampled_from(bad)) if draw(st.integers(1, p_bad)) == 1 else draw(st.sampled_from(good))


@st.composite
def items(draw: st.DrawFn) -> Any:
    if draw(st.integers(1, 20)) == 1:
        return draw(st.sampled_from([None, 1, "d;c", [], ["d;c"], True]))
    p = draw(st.sampled_from([4, 12, 1000]))  # how often a field is bad: often, rarely, almost never
    item: dict[str, Any] = {"subscriptionIdentifier": draw(identifiers())}
    source = draw(st.sampled_from(["rtsp"] * 4 + ["snapshot"] * 2 + ["both"] * 2 + ["none"]))
    if source in ("rtsp", "both"):
        item["rtspUrl"] = _pick(draw, GOOD_RTSP, BAD_RTSP, p)
    if source in ("snapshot", "both"):
        item["snapshotUrl"] = _pick(draw, GOOD_HTTP, BAD_HTTP, p)
    if draw(st.booleans()):
        item["snapshotInterval"] = _pick(draw, GOOD_INTERVALS, BAD_INTERVALS, p)
    if draw(st.integers(1, p)) != 1:  # modelUrl is required
        item["modelUrl"] = _pick(draw, GOOD_MODEL_URLS, BAD_MODEL_URLS, p)
    if draw(st.booleans()):
        item["modelId"] = _pick(draw, GOOD_MODEL_IDS, BAD_MODEL_IDS, p)
    if draw(st.booleans()):
        item["modelName"] = _pick(draw, GOOD_NAMES, BAD_NAMES, p)
    crop = draw(st.sampled_from(["none"] * 4 + ["box"] * 2 + ["legacy", "both forms", "partial"]))
    if crop in ("box", "both forms"):
        x1, y1 = draw(st.sampled_from(COORDS[:-1])), draw(st.sampled_from(COORDS[:-1]))
        item |= {"cropX1": x1, "cropY1": y1,
                 "cropX2": draw(st.sampled_from([c for c in COORDS if c > x1] + [x1] * (p < 100))),
                 "cropY2": draw(st.sampled_from([c for c in COORDS if c > y1] + [y1] * (p < 100)))}
    if crop in ("legacy", "both forms"):
        item |= {"cropX": draw(st.sampled_from(COORDS)), "cropY": draw(st.sampled_from(COORDS))}
    if crop == "partial":
        keys = draw(st.lists(st.sampled_from(["cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY"]),
                             min_size=1, max_size=3, unique=True))
        item |= {k: draw(st.sampled_from(COORDS)) for k in keys}
    if draw(st.integers(1, p)) == 1:  # one crop value of the wrong kind
        item[draw(st.sampled_from(["cropX1", "cropY1", "cropX2", "cropY2", "cropX", "cropY"]))] = \
            draw(st.sampled_from(BAD_COORDS))
    # nulls in optional fields (a null source may leave the item without one: the oracle knows)
    nullable = sorted(OPTIONAL) if draw(st.integers(1, 4)) == 1 else sorted(OPTIONAL - {"rtspUrl", "snapshotUrl"})
    for key in draw(st.lists(st.sampled_from(nullable), max_size=3, unique=True)):
        item[key] = None
    # unknown keys, with any JSON value
    for key in draw(st.lists(st.sampled_from(UNKNOWN_KEYS) | st.text(max_size=10), max_size=5, unique=True)):
        if key not in KNOWN:
            item[key] = draw(json_values)
    order = draw(st.permutations(list(item)))
    return {k: item[k] for k in order}


@st.composite
def item_lists(draw: st.DrawFn, max_size: int = 12, min_size: int = 0) -> list[Any]:
    """Items, plus copies of some of them (same identifier, sometimes another modelId) anywhere in
    the list: duplicates before, after and between the originals."""
    xs = draw(st.lists(items(), min_size=min_size, max_size=max_size))
    for _ in range(draw(st.integers(0, 3)) if xs else 0):
        copied = xs[draw(st.integers(0, len(xs) - 1))]
        if isinstance(copied, dict):
            copied = dict(copied)
            if draw(st.booleans()):
                copied["modelId"] = draw(st.sampled_from(GOOD_MODEL_IDS))
        xs.insert(draw(st.integers(0, len(xs))), copied)
    return xs


def strip_unknown(item: Any) -> Any:
    return {k: v for k, v in item.items() if k in KNOWN} if isinstance(item, dict) else item


SHAPES = {
    "top-level": (lambda xs: {"type": "setSubscriptionList", "subscriptions": xs}, "subscriptions"),
    "payload list": (lambda xs: {"type": "setSubscriptionList", "payload": xs}, "payload"),
    "payload object": (lambda xs: {"type": "setSubscriptionList", "payload": {"subscriptions": xs}},
                       "payload.subscriptions"),
}


def parse_list(shape: str, xs: list[Any]) -> SetSubscriptionList:
    text = json.dumps(SHAPES[shape][0](xs))
    with contextlib.suppress(InvalidArgument):  # outside a property: nothing to note
        note(f"message: {text[:2000]}")
    msg = parse_incoming(text)
    assert isinstance(msg, SetSubscriptionList)
    return msg


# ---------------------------------------------------------------------------------------------
# The properties


@PROPERTY
@given(item_lists(), st.sampled_from(list(SHAPES)))
def test_every_item_is_accepted_or_refused_once_as_the_oracle_says(xs: list[Any], shape: str) -> None:
    msg = parse_list(shape, xs)
    verdicts = oracle_verdicts(xs)
    note(f"oracle: {verdicts}")
    refused = {r.index: r for r in msg.refused}
    # each item exactly once: refused by index (in order, no repeats), accepted in list order
    assert [r.index for r in msg.refused] == sorted(refused) and len(refused) == len(msg.refused)
    accepted_indices = [i for i in range(len(xs)) if i not in refused]
    assert len(msg.subscriptions) == len(accepted_indices)
    assert set(refused) <= set(range(len(xs)))
    # as the oracle says
    assert sorted(refused) == [i for i, v in enumerate(verdicts) if v is not None], \
        [(i, verdicts[i], refused[i].message if i in refused else "accepted") for i in range(len(xs))
         if (verdicts[i] is None) == (i in refused)]
    path = SHAPES[shape][1]
    for i, sub in zip(accepted_indices, msg.subscriptions, strict=True):
        _check_conversion(xs[i], sub)
    for i, r in refused.items():
        raw = xs[i]
        candidate = raw.get("subscriptionIdentifier") if isinstance(raw, dict) else None
        assert r.subscription_identifier == (candidate if oracle_identifier_ok(candidate) else None)
        assert r.message.startswith(f"{path}[{i}]"), r.message
        assert "\n" not in r.message and len(r.message) < 400
        if verdicts[i] == "duplicate":
            assert r.message.endswith("duplicate (first at " + f"{path}[{_first(xs, verdicts, i)}])"), r.message
    # identifiers are unique among the accepted
    sids = [s.subscription_identifier for s in msg.subscriptions]
    assert len(sids) == len(set(sids))


def _first(xs: list[Any], verdicts: list[str | None], index: int) -> int:
    sid = xs[index]["subscriptionIdentifier"]
    return next(i for i in range(index) if verdicts[i] is None and xs[i]["subscriptionIdentifier"] == sid)


def _check_conversion(raw: dict[str, Any], sub: Any) -> None:
    given = {k: v for k, v in raw.items() if k in KNOWN and v is not None}
    assert sub.subscription_identifier == raw["subscriptionIdentifier"]
    if "rtspUrl" in given:
        assert (sub.source.kind, sub.source.url) == ("rtsp", given["rtspUrl"])
    else:
        assert (sub.source.kind, sub.source.url) == ("snapshot", given["snapshotUrl"])
        assert sub.source.snapshot_interval_ms == given.get("snapshotInterval", 5000)
    assert sub.model.url == given["modelUrl"]
    assert sub.model.id == given.get("modelId") and type(sub.model.id) is type(given.get("modelId"))
    assert sub.model.name == given.get("modelName")
    if "cropX1" in given:
        assert (sub.crop.x1, sub.crop.y1, sub.crop.x2, sub.crop.y2) == tuple(
            given[k] for k in ("cropX1", "cropY1", "cropX2", "cropY2"))
    elif "cropX" in given:
        assert (sub.crop.x1, sub.crop.y1, sub.crop.x2, sub.crop.y2) == (given["cropX"], given["cropY"], None, None)
    else:
        assert sub.crop is None


@PROPERTY
@given(item_lists(max_size=10), st.sampled_from(list(SHAPES)))
def test_unknown_keys_never_cause_a_refusal(xs: list[Any], shape: str) -> None:
    with_keys = parse_list(shape, xs)
    without = parse_list(shape, [strip_unknown(x) for x in xs])
    assert with_keys.subscriptions == without.subscriptions
    assert with_keys.refused == without.refused
    assert without.ignored == ()
    # every unknown key of an accepted item is reported, as a path without index
    path = SHAPES[shape][1]
    refused = {r.index for r in with_keys.refused}
    expected = {f"{path}[].{k}" for i, x in enumerate(xs) if i not in refused and isinstance(x, dict)
                for k in x if k not in KNOWN}
    assert expected <= set(with_keys.ignored)


@PROPERTY
@given(item_lists(max_size=8, min_size=1), st.sampled_from(list(SHAPES)), st.data())
def test_an_item_is_judged_alone(xs: list[Any], shape: str, data: st.DataObject) -> None:
    """Adding valid items with fresh identifiers around a list changes no other item's verdict."""
    fresh = {"subscriptionIdentifier": "fresh;cam", "rtspUrl": "rtsp://h/x", "modelUrl": "http://h/m.mpta"}
    where = data.draw(st.integers(0, len(xs)))
    padded = [*xs[:where], fresh, *xs[where:]]
    msg = parse_list(shape, padded)
    alone = parse_list(shape, xs)
    shifted = {(r.index if r.index < where else r.index + 1) for r in alone.refused}
    fresh_taken = any(isinstance(x, dict) and x.get("subscriptionIdentifier") == "fresh;cam" for x in xs)
    if not fresh_taken:
        assert {r.index for r in msg.refused} == shifted


def test_the_oracle_agrees_with_the_rules_on_fixed_examples() -> None:
    """The oracle itself, on cases the protocol's rules decide by hand."""
    ok = {"subscriptionIdentifier": "d;c", "rtspUrl": "rtsp://h/x", "modelUrl": "http://h/m.mpta"}
    assert oracle_problem(ok) is None
    assert oracle_problem(ok | {"modelId": None, "cropX": None, "extra": {"a": 1}}) is None
    assert oracle_problem(ok | {"rtspUrl": None}) == "no source"
    assert oracle_problem(ok | {"subscriptionIdentifier": "d" * 129 + ";c"}) == "subscriptionIdentifier"
    assert oracle_problem(ok | {"subscriptionIdentifier": "d" * 128 + ";" + "c" * 128}) is None
    assert oracle_problem(ok | {"cropX1": 1, "cropY1": 1, "cropX2": 2, "cropY2": 2, "cropX": 5}) is None
    assert oracle_problem(ok | {"cropX": 5}) == "legacy crop incomplete"
    assert oracle_problem(ok | {"modelId": True}) == "modelId"
    assert oracle_verdicts([ok, ok, ok | {"rtspUrl": "x"}]) == [None, "duplicate", "rtspUrl"]
    # and the parser on the same
    msg = parse_incoming(json.dumps({"type": "setSubscriptionList", "subscriptions": [ok, ok, ok | {"rtspUrl": "x"}]}))
    assert isinstance(msg, SetSubscriptionList) and [r.index for r in msg.refused] == [1, 2]


def test_only_a_list_unusable_as_a_whole_raises() -> None:
    ok = {"subscriptionIdentifier": "d;c", "rtspUrl": "rtsp://h/x", "modelUrl": "http://h/m.mpta"}
    for shape in SHAPES:
        msg = parse_list(shape, [None, 1, "x", ok])
        assert [r.index for r in msg.refused] == [0, 1, 2] and len(msg.subscriptions) == 1
    for bad in ({"type": "setSubscriptionList", "subscriptions": [ok] * (limits.MAX_SUBSCRIPTIONS + 1)},
                {"type": "setSubscriptionList", "payload": {"subscriptions": ok}}):
        try:
            parse_incoming(json.dumps(bad))
        except ProtocolError as err:
            assert err.index is None
        else:
            raise AssertionError("accepted")
