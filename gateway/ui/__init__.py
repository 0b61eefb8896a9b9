"""The operator's dashboard, served by the gateway on its own port under `/ui/`.

    GET /ui/          the page (fleet grid; `#/camera/<id>` is one camera's page), one HTML document
                      with its CSS and JS inlined at load (static/), so the access rules of the
                      control plane (token or allowed address, Host and Origin checks) cover all of it
    WS  /ui/live      live updates and the operator's actions (`live.py`)

Plain HTML/CSS/JS, no library and no build step: the page is small, and nothing has to be
fetched, vendored or kept up to date. A strict Content-Security-Policy (hashes of the inlined
script and style, no framing, connections to this origin only) keeps it that way.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from http import HTTPStatus
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

PREFIX = "/ui"
LIVE_PATH = "/ui/live"


@cache
def _page() -> tuple[bytes, str]:
    """The page with its style and script inlined, and its Content-Security-Policy."""
    static = resources.files(__package__) / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    style = (static / "style.css").read_text(encoding="utf-8")
    script = (static / "app.js").read_text(encoding="utf-8")

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    html = html.replace("<style></style>", f"<style>{style}</style>").replace(
        "<script></script>", f"<script>{script}</script>")
    csp = (f"default-src 'none'; script-src {digest(script)}; style-src {digest(style)}; img-src data:; "
           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    return html.encode(), csp


def page_response(path: str, query: str) -> Response:
    """`/ui` → `/ui/` (the query, a token say, kept); `/ui/` and `/ui/index.html` → the page."""
    if path == PREFIX:
        location = PREFIX + "/" + (f"?{query}" if query else "")
        return Response(HTTPStatus.FOUND.value, HTTPStatus.FOUND.phrase,
                        Headers([("Location", location), ("Content-Length", "0")]), b"")
    if path not in (PREFIX + "/", PREFIX + "/index.html"):
        body = b'{"error": "no such endpoint"}'
        return Response(HTTPStatus.NOT_FOUND.value, HTTPStatus.NOT_FOUND.phrase,
                        Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]), body)
    body, csp = _page()
    headers = Headers([
        ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"), ("Content-Security-Policy", csp), ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
    ])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


def is_ui(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")
