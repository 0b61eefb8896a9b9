"""Snapshot sources follow redirects to http(s) only (urllib alone would follow ftp:// too)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from detector_worker.video.sources import SnapshotSource, SourceError

JPEG = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))[1].tobytes()


@pytest.fixture
def camera() -> Iterator[tuple[str, dict[str, str]]]:
    routes: dict[str, str] = {}  # path → redirect target; "/image.jpg" serves the JPEG

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in routes:
                self.send_response(302)
                self.send_header("Location", routes[self.path])
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()


def test_redirect_to_http_is_followed(camera: tuple[str, dict[str, str]]) -> None:
    base, routes = camera
    routes["/snap"] = f"{base}/image.jpg"
    source = SnapshotSource(f"{base}/snap", interval_ms=100, timeout_s=3)
    source.open()
    frame = source.read()
    assert frame is not None


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9/image.jpg", "file:///etc/passwd", "data:,hello"])
def test_redirect_elsewhere_is_refused(camera: tuple[str, dict[str, str]], target: str) -> None:
    base, routes = camera
    routes["/snap"] = target
    source = SnapshotSource(f"{base}/snap", interval_ms=100, timeout_s=3)
    with pytest.raises(SourceError) as info:
        source.open()
    # ftp: refused by our handler (urllib would follow it); file: and data: urllib refuses itself
    expected = "redirect to a ftp: URL refused" if target.startswith("ftp") else "HTTP 302"
    assert expected in str(info.value)
