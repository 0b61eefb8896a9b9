"""Oversize and malformed frames and requests against the REAL gateway (one fleet for the module).

What the gateway does (websockets `max_size` = settings.max_message_bytes, 1 MiB by default):

- a message of at most 1,048,576 bytes (UTF-8 for text) is handled like any other, whatever it holds;
- one byte more, as one frame, as fragments, as a binary frame, or as a compressed frame that
  inflates past the limit: websockets closes THAT connection with 1009 (message too big); the
  gateway never reads it, so its own `too_large` error (parse_incoming) is not what the backend sees;
- a text frame that is not UTF-8: closed with 1007 (invalid frame payload data);
- an oversize HTTP request line or header, or too many headers: refused by websockets' parser;
- always: the gateway keeps its pid, /health answers and a new connection is served at once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from detector_worker.limits import MAX_STAGE, MAX_SUBSCRIPTIONS
from gateway import protocol as p
from tests.fleet import Fleet
from tests.hostile.conftest import MODEL_ID, MODEL_URL
from tests.hostile.harness import GatewayWatch, Link, errors_of, open_ws, running_fleet
from tests.rtsp import free_port

pytestmark = pytest.mark.hostile

LIMIT = p.MAX_MESSAGE_BYTES


class Edge:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.watch = GatewayWatch(fleet)
        self.link = Link(fleet)

    def still_serving(self) -> None:
        """The gateway did not crash and a (new) connection is served at once."""
        self.watch.check()
        report = self.link.state_report()
        assert report["type"] == "stateReport"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, hostile_model_cache: Path, module_redis_url: str,
         module_database_url: str) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("oversize") / "fleet"
    extra = {"session_processes": {"process_cleanup_timeout": 30, "health_check_interval": 3600,
                                   "heartbeat_timeout": 15}}
    with running_fleet(base, model_cache=hostile_model_cache, redis_url=module_redis_url,
                       database_url=module_database_url, extra=extra) as fleet:
        e = Edge(fleet)
        yield e
        e.still_serving()
        assert not e.watch.internal_failures(), e.watch.internal_failures()[:5]


def padded(message: dict[str, Any], size: int, pad: str = " ") -> str:
    """`message` as JSON with whitespace (or `pad` inside a string) to exactly `size` UTF-8 bytes."""
    text = json.dumps(message)
    missing = size - len(text.encode())
    assert missing >= 0
    return text + pad * missing


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as err:
        assert err.rcvd is not None, f"closed without a close frame from the gateway: {err}"
        return err.rcvd.code, err.rcvd.reason
    except TimeoutError:
        pass
    raise AssertionError("the gateway kept the connection open")


def send_quietly(ws: ClientConnection, data: Any, **kwargs: Any) -> None:
    """Send; the gateway may close the connection while we are still sending."""
    with contextlib.suppress(ConnectionClosed, OSError):
        ws.send(data, **kwargs)


# ---------------------------------------------------------------------------------------------
# Up to the limit: handled as usual


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
@pytest.mark.parametrize("frame", ["text", "binary"])
def test_a_message_up_to_the_limit_is_answered(edge: Edge, size: int, frame: str) -> None:
    text = padded({"type": "requestState"}, size)
    replies = edge.link.exchange(text if frame == "text" else text.encode())
    assert [m["type"] for m in replies] == ["stateReport"], replies
    # a multi-byte message at exactly the limit: ordinary handling (here: a refused stage)
    body = json.dumps({"type": "setProgressionStage", "payload": {"displayIdentifier": "d", "progressionStage": ""}})
    chars = (size - len(body.encode())) // 2  # "é" is 2 bytes
    stage = body.replace('"progressionStage": ""', '"progressionStage": "' + "é" * chars + '"')
    stage += " " * (size - len(stage.encode()))
    assert len(stage.encode()) == size
    errors = errors_of(edge.link.exchange(stage if frame == "text" else stage.encode()))
    assert [(e["code"], e["message"]) for e in errors] == [
        ("invalid_message", f"payload.progressionStage: must be at most {MAX_STAGE} characters")], errors
    edge.still_serving()


@pytest.mark.parametrize("body", ["brackets", "digits", "keys", "too_many_items", "strings"])
def test_expensive_messages_under_the_limit_are_refused_quickly(edge: Edge, body: str) -> None:
    room = LIMIT - 100
    item = {"subscriptionIdentifier": "d;c", "rtspUrl": "rtsp://h/x", "modelUrl": "http://h/m.mpta", "modelId": 1}
    text = {
        "brackets": "[" * room,
        "digits": '{"type": "requestState", "payload": ' + "9" * room + "}",
        "keys": json.dumps({"type": "subscribe", "payload": {f"k{i}": i for i in range(room // 20)}}),
        # far more items than MAX_SUBSCRIPTIONS: refused as a whole, before any item is looked at
        "too_many_items": json.dumps({"type": "setSubscriptionList", "payload": [item] * (room // 110)}),
        "strings": json.dumps({"type": "setSessionId", "payload": {"displayIdentifier": "é" * (room // 2 - 40),
                                                                   "sessionId": 1}}, ensure_ascii=False),
    }[body]
    assert len(text.encode()) <= LIMIT
    start = time.monotonic()
    errors = errors_of(edge.link.exchange(text))
    elapsed = time.monotonic() - start
    codes = ("limit_exceeded",) if body == "too_many_items" else ("invalid_json", "invalid_message")
    assert len(errors) == 1 and errors[0]["code"] in codes, errors
    assert "index" not in errors[0], errors  # the message as a whole, not one item of it
    assert elapsed < 5, f"{body}: {elapsed:.1f} s to refuse"
    edge.still_serving()


def test_a_list_of_only_refused_items_gets_one_error_per_item_quickly(edge: Edge) -> None:
    """MAX_SUBSCRIPTIONS items, each refused on its own (a bad source, or a duplicate of the first):
    one `error` per refused item, in order, naming its index; the one valid item is applied."""
    first = {"subscriptionIdentifier": "display-dup;dup-cam", "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/x",
             "modelUrl": MODEL_URL, "modelId": MODEL_ID}
    items: list[dict[str, Any]] = [first]
    for i in range(1, MAX_SUBSCRIPTIONS):
        items.append(first if i % 2 else first | {"subscriptionIdentifier": f"display-{i};dup-cam",
                                                 "rtspUrl": "http://127.0.0.1/not-rtsp"})
    start = time.monotonic()
    replies = edge.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": items}), timeout=60)
    elapsed = time.monotonic() - start
    errors = errors_of(replies)
    assert len(replies) == len(errors) == MAX_SUBSCRIPTIONS - 1, (len(replies), replies[:3])
    assert [e["index"] for e in errors] == list(range(1, MAX_SUBSCRIPTIONS))
    assert all(e["code"] == "invalid_message" and e["requestType"] == "setSubscriptionList" for e in errors)
    assert all(e["subscriptionIdentifier"] == items[e["index"]]["subscriptionIdentifier"] for e in errors)
    assert errors[0]["message"] == "payload[1].subscriptionIdentifier: duplicate (first at payload[0])", errors[0]
    assert errors[1]["message"] == "payload[2].rtspUrl: URL scheme must be rtsp or rtsps", errors[1]
    assert elapsed < 20, f"{elapsed:.1f} s for {MAX_SUBSCRIPTIONS} items"
    report = edge.link.state_report()
    assert [c["subscriptionIdentifier"] for c in report["cameraConnections"]] == ["display-dup;dup-cam"]
    assert not errors_of(edge.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": []})))
    edge.fleet.wait_for(lambda: not edge.fleet.programs(), 30, "the camera removed")
    edge.still_serving()


# ---------------------------------------------------------------------------------------------
# Over the limit: that connection is closed with 1009, the gateway serves on


def _over_limit_cases() -> dict[str, Any]:
    over = padded({"type": "requestState"}, LIMIT + 1)
    multibyte = '{"type": "x", "p": "' + "é" * ((LIMIT - 20) // 2 + 10) + '"}'  # fewer chars than bytes
    assert len(multibyte) < LIMIT < len(multibyte.encode())
    return {
        "text": over,
        "binary": over.encode(),
        "multibyte": multibyte,
        "fragments": [" " * 65_536] * 16 + ['{"type": "requestState"}'],
        "huge": "x" * (8 * LIMIT),
        "compressed": padded({"type": "requestState"}, 4 * LIMIT),  # permessage-deflate: tiny on the wire
    }


@pytest.mark.parametrize("case", list(_over_limit_cases()))
def test_a_message_over_the_limit_closes_that_connection_with_1009(edge: Edge, case: str) -> None:
    data = _over_limit_cases()[case]
    ws = open_ws(edge.fleet)
    try:
        assert json.loads(ws.recv(timeout=10))["type"] == "stateReport"
        if case == "compressed":
            assert any(type(x).__name__ == "PerMessageDeflate" for x in ws.protocol.extensions), \
                "compression was not negotiated"
        send_quietly(ws, data)
        code, reason = closed_with(ws)
        assert code == 1009, (code, reason)
        assert "exceeds limit" in reason and str(LIMIT) in reason, reason
    finally:
        ws.close()
    edge.link.drop()  # the module's link was replaced by this connection (one backend at a time)
    edge.still_serving()


def test_a_text_frame_that_is_not_utf8_closes_with_1007(edge: Edge) -> None:
    ws = open_ws(edge.fleet)
    try:
        ws.recv(timeout=10)
        send_quietly(ws, b'{"type": "requestState", "x": "\xff\xfe"}', text=True)
        code, reason = closed_with(ws)
        assert code == 1007, (code, reason)
    finally:
        ws.close()
    edge.link.drop()
    edge.still_serving()


def test_the_backends_subscriptions_survive_an_oversize_close(edge: Edge) -> None:
    """The connection that sent too much is gone; the gateway keeps its state for the next one."""
    sub = {"subscriptionIdentifier": "display-1;over-cam", "rtspUrl": f"rtsp://127.0.0.1:{free_port()}/x",
           "modelUrl": MODEL_URL, "modelId": MODEL_ID}
    errors = errors_of(edge.link.exchange(json.dumps({"type": "subscribe", "payload": sub})))
    assert not errors, errors

    def reported() -> list[str]:
        return [c["subscriptionIdentifier"] for c in edge.link.state_report()["cameraConnections"]]

    edge.fleet.wait_for(lambda: reported() == ["display-1;over-cam"], 20, "the subscription applied")
    ws = open_ws(edge.fleet)
    try:
        ws.recv(timeout=10)
        send_quietly(ws, "x" * (LIMIT + 1))
        assert closed_with(ws)[0] == 1009
    finally:
        ws.close()
    edge.link.drop()
    assert reported() == ["display-1;over-cam"]
    assert not errors_of(edge.link.exchange(json.dumps({"type": "setSubscriptionList", "payload": []})))
    edge.fleet.wait_for(lambda: not edge.fleet.programs(), 30, "the camera removed")


# ---------------------------------------------------------------------------------------------
# Oversize and broken HTTP


def raw_http(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65_536):
                chunks.append(chunk)
        except (TimeoutError, OSError):
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("case", ["long_path", "long_header", "many_headers", "garbage", "no_crlf", "post_body",
                                  "bad_upgrade"])
def test_oversize_or_broken_http_requests_are_refused_and_the_gateway_serves_on(edge: Edge, case: str) -> None:
    port = edge.fleet.port
    request = {
        "long_path": b"GET /cameras/" + b"a" * 20_000 + b"/snapshot HTTP/1.1\r\nHost: x\r\n\r\n",
        "long_header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
        "many_headers": b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
        "garbage": bytes(range(256)) * 64,
        "no_crlf": b"GET /health HTTP/1.1\nHost: x\n\n",
        "post_body": b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "bad_upgrade": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: not-base64!\r\nSec-WebSocket-Version: 13\r\n\r\n",
    }[case]
    answer = raw_http(port, request)
    assert not answer.startswith(b"HTTP/1.1 200") and not answer.startswith(b"HTTP/1.1 101"), answer[:200]
    edge.still_serving()


def test_half_open_connections_do_not_stop_the_gateway(edge: Edge) -> None:
    port = edge.fleet.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for s in idle[:10]:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
    try:
        edge.still_serving()
    finally:
        for s in idle:
            s.close()
    edge.still_serving()


def test_of_rapid_connections_only_one_stays_the_backend(edge: Edge) -> None:
    """One backend at a time: every connection but one is closed with 1012, however fast they come."""
    try:
        for _ in range(4):
            with ThreadPoolExecutor(8) as pool:
                conns = list(pool.map(lambda _: open_ws(edge.fleet), range(8)))
            time.sleep(1.5)
            codes: list[int | str | None] = []
            for ws in conns:
                try:
                    while True:
                        ws.recv(timeout=0.05)
                except ConnectionClosed as err:
                    codes.append(err.rcvd.code if err.rcvd else None)
                except TimeoutError:
                    codes.append("open")
            for ws in conns:
                ws.close()
            assert sorted(codes, key=str) == sorted([1012] * 7 + ["open"], key=str), codes
    finally:
        edge.link.drop()
    edge.link.drop()
    edge.still_serving()
