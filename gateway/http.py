"""The gateway's HTTP endpoints, served on the WebSocket port.

    GET /health                      liveness and a summary
    GET /metrics                     Prometheus text format, per-camera labels
    GET /cameras                     every camera's state as JSON
    GET /cameras/{camera}/snapshot   the camera's latest frame as JPEG (404 until one arrived)
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Response

if TYPE_CHECKING:
    from .server import GatewayServer


def response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, body: object) -> Response:
    return response(status, json.dumps(body).encode(), "application/json")


async def route(server: GatewayServer, path: str) -> Response:
    if path == "/health":
        return json_response(HTTPStatus.OK, server.health())
    if path == "/metrics":
        return response(HTTPStatus.OK, server.gateway.metrics.render(), CONTENT_TYPE_LATEST)
    if path == "/cameras":
        return json_response(HTTPStatus.OK, {"cameras": server.cameras_json()})
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "cameras" and parts[3] == "snapshot":
        camera_id = unquote(parts[2])
        if camera_id not in server.gateway.plans:
            return json_response(HTTPStatus.NOT_FOUND, {"error": "no such camera"})
        jpeg = server.snapshot(camera_id)
        if jpeg is None:
            return json_response(HTTPStatus.NOT_FOUND, {"error": "no frame from this camera yet"})
        return response(HTTPStatus.OK, jpeg, "image/jpeg")
    return json_response(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
