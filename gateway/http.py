"""The gateway's HTTP endpoints, served on the WebSocket port.

    GET /health                      liveness and a summary
    GET /metrics                     Prometheus text format, per-camera labels
    GET /cameras                     every camera's state as JSON (with the worker host it runs on)
    GET /hosts                       every worker host: health, capacity, load; cameras not placed
    GET /cameras/{camera}/snapshot   the camera's latest frame as JPEG (404 until one arrived)
    GET /ui/                         the operator's dashboard (gateway/ui; served by server.py, with its query)
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Response

from . import views

if TYPE_CHECKING:
    from .core import Gateway


def response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, body: object) -> Response:
    return response(status, json.dumps(body).encode(), "application/json")


async def route(gateway: Gateway, path: str) -> Response:
    if path == "/health":
        return json_response(HTTPStatus.OK, views.health(gateway))
    if path == "/metrics":
        return response(HTTPStatus.OK, gateway.metrics.render(), CONTENT_TYPE_LATEST)
    if path == "/cameras":
        return json_response(HTTPStatus.OK, {"cameras": views.cameras_json(gateway)})
    if path == "/hosts":
        return json_response(HTTPStatus.OK, views.hosts_json(gateway))
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "cameras" and parts[3] == "snapshot":
        camera_id = unquote(parts[2])
        if camera_id not in gateway.desired.plans:
            return json_response(HTTPStatus.NOT_FOUND, {"error": "no such camera"})
        jpeg = views.snapshot(gateway, camera_id)
        if jpeg is None:
            return json_response(HTTPStatus.NOT_FOUND, {"error": "no frame from this camera yet"})
        return response(HTTPStatus.OK, jpeg, "image/jpeg")
    return json_response(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
