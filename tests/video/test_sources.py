"""Frame sources without the RTSP server: file replay, HTTP snapshots (real local server), masking."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector_worker.video.reader import LatestFrameReader
from detector_worker.video.sources import (
    FileSource,
    Frame,
    FrameSource,
    RtspSource,
    SnapshotSource,
    SourceError,
    SourceSpec,
    make_source,
    mask_url,
)
from tests.rtsp import free_port
from tests.video.helpers import CountingFactory, RecordingBackoff, StatusLog, wait_until

ClipFactory = Callable[..., Path]
SECRET = "s3cret"


# -- file replay ------------------------------------------------------------------------------


@pytest.mark.slow  # > 3 s here; make check skips it
def test_file_source_loops_past_the_end_at_the_file_fps(clip_factory: ClipFactory) -> None:
    clip = clip_factory("video-short-loop", 4242, seconds=1.0)  # 10 frames at 10 fps
    cap = cv2.VideoCapture(str(clip))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n == 10

    source = FileSource(clip)
    source.open()
    try:
        assert source.fps == pytest.approx(10.0)
        started = time.monotonic()
        frames = [source.read() for _ in range(2 * n + 5)]
        elapsed = time.monotonic() - started
    finally:
        source.close()
    got = [f for f in frames if f is not None]
    assert len(got) == len(frames) and [f.seq for f in got] == list(range(1, 2 * n + 6))
    print(f"file replay: {len(got)} frames in {elapsed:.2f} s ({(len(got) - 1) / elapsed:.2f} fps)")
    assert (len(got) - 1) / 10.0 - 0.1 < elapsed < (len(got) - 1) / 10.0 + 0.6  # paced like a live camera
    # Looped back to the first frame, not stuck on the last one.
    assert np.array_equal(got[0].image, got[n].image) and np.array_equal(got[0].image, got[2 * n].image)
    assert not np.array_equal(got[n - 1].image, got[n].image)

    once = FileSource(clip, loop=False)
    once.open()
    assert once.describe() == f"file {clip}" and source.describe() == f"file {clip} (looped)"
    assert sum(once.read() is not None for _ in range(n + 1)) == n  # then None: end of file
    once.close()


@pytest.mark.slow  # > 3 s here; make check skips it
def test_file_source_through_the_reader(clip_factory: ClipFactory) -> None:
    clip = clip_factory("video-short-loop", 4242, seconds=1.0)
    spec = SourceSpec("file", f"file://{clip}")
    with LatestFrameReader(lambda: make_source(spec), stall_timeout_s=2, name="file") as reader:
        time.sleep(1.6)  # crosses the end of the 1 s clip
        stats = reader.stats()
        assert stats.online and 9 < stats.fps < 11 and stats.reconnects == 0 and 13 <= stats.frames <= 19
    with pytest.raises(SourceError, match="no such video file"):
        FileSource("/nonexistent/clip.mp4").open()


# -- HTTP snapshots ---------------------------------------------------------------------------


class SnapshotServer:
    """A real http.server on 127.0.0.1 in a thread; set .status to make /snap.jpg fail."""

    def __init__(self) -> None:
        image = np.zeros((240, 320, 3), np.uint8)
        cv2.rectangle(image, (40, 40), (200, 160), (0, 200, 255), -1)
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        self.image, self.jpeg = image, jpeg.tobytes()
        self.status = 200
        self.requests: list[tuple[float, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.httpd.server_address[1]}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        authorized = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((time.monotonic(), self.path))
                if self.path == "/private.jpg" and self.headers.get("Authorization") != authorized:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path in ("/snap.jpg", "/private.jpg") and server.status == 200:
                    self._send(server.jpeg)
                elif self.path == "/garbage.jpg":
                    self._send(b"<html>not a jpeg</html>")
                else:
                    self.send_error(server.status if self.path == "/snap.jpg" else 404)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        return Handler


@pytest.fixture
def snapshot_server() -> Iterator[SnapshotServer]:
    server = SnapshotServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_snapshot_source_polls_at_the_interval(snapshot_server: SnapshotServer) -> None:
    source = SnapshotSource(snapshot_server.url("/snap.jpg"), interval_ms=200, timeout_s=2)
    source.open()
    frames: list[Frame | None] = [source.read() for _ in range(3)]
    source.close()
    assert all(f is not None and f.image.shape == (240, 320, 3) for f in frames)
    first = frames[0]
    assert first is not None and np.abs(first.image.astype(int) - snapshot_server.image).mean() < 3  # JPEG loss
    times = [t for t, _ in snapshot_server.requests]
    assert len(times) == 3 and all(0.18 < gap < 0.4 for gap in np.diff(times))


def test_snapshot_failures(snapshot_server: SnapshotServer) -> None:
    snapshot_server.status = 500
    with pytest.raises(SourceError, match="HTTP 500"):
        SnapshotSource(snapshot_server.url("/snap.jpg"), timeout_s=2).open()
    with pytest.raises(SourceError, match="undecodable snapshot"):
        SnapshotSource(snapshot_server.url("/garbage.jpg"), timeout_s=2).open()
    with pytest.raises(SourceError, match="cannot fetch") as refused:
        SnapshotSource(f"http://user:{SECRET}@127.0.0.1:{free_port()}/snap.jpg", timeout_s=2).open()
    assert SECRET not in str(refused.value)

    # A snapshot that starts failing mid-stream: read() gives None (the reader then reconnects).
    snapshot_server.status = 200
    source = SnapshotSource(snapshot_server.url("/snap.jpg"), interval_ms=50, timeout_s=2)
    source.open()
    assert source.read() is not None
    snapshot_server.status = 503
    assert source.read() is None


def test_snapshot_credentials_are_sent_but_never_shown(snapshot_server: SnapshotServer) -> None:
    good = SnapshotSource(snapshot_server.url("/private.jpg", f"user:{SECRET}@"), interval_ms=100, timeout_s=2)
    good.open()
    assert good.read() is not None
    assert SECRET not in good.describe() and "***@" in good.describe()
    with pytest.raises(SourceError, match="HTTP 401") as denied:
        SnapshotSource(snapshot_server.url("/private.jpg", "user:wrong@"), timeout_s=2).open()
    assert "wrong" not in str(denied.value)


def test_reader_backs_off_on_http_500_then_recovers(snapshot_server: SnapshotServer) -> None:
    snapshot_server.status = 500
    status, backoff = StatusLog(), RecordingBackoff(0.1, 0.4, jitter="none")
    spec = SourceSpec("snapshot", snapshot_server.url("/snap.jpg"), snapshot_interval_ms=100, read_timeout_s=2)
    factory = CountingFactory(lambda: make_source(spec))
    with LatestFrameReader(factory, backoff=backoff, stall_timeout_s=2, on_status=status, name="snap") as reader:
        status.wait_for(False, timeout=3)
        wait_until(lambda: len(backoff.delays) >= 4, timeout=3)
        assert backoff.delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.4])
        stats = reader.stats()
        assert not stats.online and stats.last_error is not None and "HTTP 500" in stats.last_error
        snapshot_server.status = 200
        status.wait_for(True, timeout=3)
        frame = reader.latest(timeout=1)
        assert frame is not None and frame.image.shape == (240, 320, 3)
        stats = reader.stats()
        assert stats.online and stats.reconnects >= 4 and backoff.attempt == 0
    assert status.states() == [False, True]  # the first failure (never online yet) is reported too


# -- credentials are never shown -------------------------------------------------------------


@pytest.mark.parametrize(("url", "masked"), [
    ("rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101", "rtsp://***@10.0.0.5:554/Streaming/Channels/101"),
    ("rtsp://admin:p@ss:s3cret@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
    ("rtsp://admin:pa/s3cret@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
    ("rtsp://admin@cam.local/live", "rtsp://***@cam.local/live"),
    ("http://cam/cgi-bin/snap.cgi?usr=admin&pwd=s3cret&chn=1", "http://cam/cgi-bin/snap.cgi?usr=***&pwd=***&chn=1"),
    ("http://cam/snap.jpg?token=s3cret", "http://cam/snap.jpg?token=***"),
    ("rtsp://10.0.0.5:554/live", "rtsp://10.0.0.5:554/live"),
    ("rtsp://[::1]:8554/cam-a", "rtsp://[::1]:8554/cam-a"),
    ("http://cam/snap?owner=a@b.example", "http://cam/snap?owner=a@b.example"),
    ("/var/video/clip.mp4", "/var/video/clip.mp4"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(("url", "masked"), [
    ("https://user:s3cret@models.example/a.mpta?X-Amz-Signature=abc&v=1", "https://***@models.example/a.mpta?..."),
    ("https://models.example/a.mpta", "https://models.example/a.mpta"),
    ("file:///srv/models/a.mpta", "file:///srv/models/a.mpta"),
    ("models/a.mpta", "models/a.mpta"),
])
def test_mask_url_hiding_the_whole_query(url: str, masked: str) -> None:
    """As archive labels use it: a presigned URL's query is all token."""
    assert mask_url(url, hide_query=True) == masked


def test_describe_and_errors_mask_credentials() -> None:
    dead = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam-a"
    sources: list[FrameSource] = [
        RtspSource(dead),
        SnapshotSource(f"https://admin:{SECRET}@cam.example/snap.jpg", interval_ms=1000),
        make_source(SourceSpec("rtsp", dead)),
    ]
    for source in sources:
        assert SECRET not in source.describe() and "***@" in source.describe()
    assert sources[1].describe() == "snapshot https://***@cam.example/snap.jpg every 1000 ms"
    assert SECRET not in repr(SourceSpec("rtsp", dead))
    with pytest.raises(SourceError) as failed:
        sources[0].open()  # nothing listens there: refused at once
    assert SECRET not in str(failed.value) and "***@127.0.0.1" in str(failed.value)

    status = StatusLog()
    with LatestFrameReader(lambda: RtspSource(dead, 1, 1), on_status=status, name="masked") as reader:
        status.wait_for(False, timeout=5)
        stats = reader.stats()
    assert stats.last_error is not None and SECRET not in stats.last_error
    assert all(SECRET not in event.reason for event in status.events)


def test_source_spec_validates() -> None:
    with pytest.raises(ValueError):
        SourceSpec("onvif", "rtsp://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SourceSpec("snapshot", "http://x", snapshot_interval_ms=0)
    assert isinstance(make_source(SourceSpec("file", "/tmp/x.mp4")), FileSource)
