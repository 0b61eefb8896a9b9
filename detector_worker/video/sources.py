"""Frame sources: an RTSP camera, an HTTP snapshot camera, or a video file replayed like a camera.

Each source is used by one thread: ``open()`` (raises SourceError), then ``read()`` until it
returns None (failure or end), then ``close()``. ``interrupt()`` is the only call that is safe
from another thread: it cuts short the waits a source does itself (pacing, snapshot interval).
``describe()`` and every SourceError message mask credentials, so they are safe to log.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from ..urls import mask_url as mask_url  # re-exported: the sources' callers import it from here
from ..urls import opener_for

log = logging.getLogger(__name__)

# Without these, FFmpeg probes ~3 s of stream before the first frame and silently uses UDP.
FFMPEG_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
DEFAULT_FILE_FPS = 10.0  # when a file does not say
MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024  # a camera answering with a huge body is broken, not a frame

BgrImage = NDArray[np.uint8]
SourceKind = Literal["rtsp", "snapshot", "file"]


class SourceError(RuntimeError):
    """A source cannot be opened; the message is safe to log (credentials masked)."""


@dataclass(frozen=True, slots=True)
class Frame:
    image: BgrImage  # HxWx3 BGR uint8
    seq: int  # increasing per reader (per source when read directly)
    captured_at: float  # time.time() when read: wall clock, for records
    monotonic: float  # time.monotonic() when read: for ages and rates


class FrameSource(Protocol):
    def open(self) -> None: ...
    def read(self) -> Frame | None: ...
    def close(self) -> None: ...
    def interrupt(self) -> None: ...
    def describe(self) -> str: ...


def _bgr(image: object) -> BgrImage | None:
    """The image if it is a non-empty HxWx3 uint8 array, else None."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.size:
        return image.astype(np.uint8, copy=False)
    return None


def _frame(image: BgrImage, seq: int) -> Frame:
    return Frame(image=image, seq=seq, captured_at=time.time(), monotonic=time.monotonic())


class GrabbingSource(FrameSource, Protocol):
    """A source that can take a frame in two steps: `grab()` decodes it (the stream must be decoded
    to stay in sync), `retrieve()` converts it to BGR and hands it out. The reader grabs every
    frame and retrieves only those its `max_fps` keeps: the colour conversion and the copy
    (~1 ms per 1080p frame) are skipped for the rest."""

    def grab(self) -> bool: ...
    def retrieve(self) -> Frame | None: ...


# One FFmpeg decode thread per camera: a worker is one camera on (at most) one core, and FFmpeg's
# default (a thread per core, plus frame threading's extra latency) only fights the other cameras.
_ONE_DECODE_THREAD = (cv2.CAP_PROP_N_THREADS, 1)


class _CaptureFrames:
    """What OpenCV-backed sources share: `grab` decodes (subclasses pace it), `retrieve` converts
    only the frames that are kept, `read` is both."""

    _cap: cv2.VideoCapture | None
    _seq: int

    def grab(self) -> bool:
        raise NotImplementedError

    def read(self) -> Frame | None:
        return self.retrieve() if self.grab() else None

    def retrieve(self) -> Frame | None:
        if self._cap is None:
            return None
        ok, image = self._cap.retrieve()
        bgr = _bgr(image) if ok else None
        if bgr is None:
            return None
        self._seq += 1
        return _frame(bgr, self._seq)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class RtspSource(_CaptureFrames):
    """An RTSP camera through OpenCV's FFmpeg backend, over TCP, with open/read timeouts."""

    def __init__(self, url: str, open_timeout_s: float = 5.0, read_timeout_s: float = 5.0) -> None:
        self._url = url
        self._params = [
            # Timeouts only work as constructor parameters, not via set().
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(read_timeout_s * 1000),
            *_ONE_DECODE_THREAD,  # also halves decode latency (~100 ms vs ~200 ms) at these sizes
        ]
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0

    def open(self) -> None:
        self.close()
        # Read by FFmpeg at each open; an operator's own setting wins.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_CAPTURE_OPTIONS)
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, self._params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}")
        self._cap = cap

    def grab(self) -> bool:
        return self._cap is not None and bool(self._cap.grab())

    def interrupt(self) -> None:
        """No-op: OpenCV cannot interrupt a blocked read; the read timeout bounds it."""

    def describe(self) -> str:
        return mask_url(self._url)


class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib also follows ftp://, a camera has no business there)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise SourceError(f"redirect to a {scheme}: URL refused from {mask_url(req.full_url)} "
                              "(snapshots follow http and https redirects only)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class SnapshotSource:
    """An HTTP(S) camera polled for a JPEG every interval_ms; a bad status or body is a failure."""

    def __init__(self, url: str, interval_ms: int = 5000, timeout_s: float = 5.0) -> None:
        self._url = url
        self._interval_s = interval_ms / 1000.0
        self._timeout_s = timeout_s
        # LAN cameras: no proxy; user:password@ becomes HTTP auth (detector_worker.urls)
        self._clean_url, self._opener = opener_for(url, urllib.request.ProxyHandler({}), HttpOnlyRedirects())
        self._interrupted = threading.Event()
        self._pending: BgrImage | None = None
        self._next_due = 0.0
        self._seq = 0

    def open(self) -> None:
        self._interrupted.clear()
        # Fetch once now so that a wrong URL, bad credentials or a 500 fail open() with a reason.
        self._pending = self._fetch()
        self._next_due = time.monotonic() + self._interval_s

    def read(self) -> Frame | None:
        image, self._pending = self._pending, None
        if image is None:
            delay = self._next_due - time.monotonic()
            if delay > 0 and self._interrupted.wait(delay):
                return None
            # Keep the cadence, but after a long gap start afresh rather than fetching in a burst.
            self._next_due = max(self._next_due + self._interval_s, time.monotonic())
            try:
                image = self._fetch()
            except SourceError as exc:
                log.info("%s", exc)
                return None
        self._seq += 1
        return _frame(image, self._seq)

    def close(self) -> None:
        self._pending = None

    def interrupt(self) -> None:
        self._interrupted.set()

    def describe(self) -> str:
        return f"snapshot {mask_url(self._url)} every {self._interval_s * 1000:.0f} ms"

    def _fetch(self) -> BgrImage:
        where = mask_url(self._url)
        request = urllib.request.Request(self._clean_url, headers={"User-Agent": "detector-worker"})
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                status = response.status
                body = response.read(MAX_SNAPSHOT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise SourceError(f"HTTP {exc.code} from {where}") from None
        except urllib.error.URLError as exc:
            raise SourceError(f"cannot fetch {where}: {exc.reason}") from None
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
            raise SourceError(f"cannot fetch {where}: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise SourceError(f"HTTP {status} from {where}")
        if len(body) > MAX_SNAPSHOT_BYTES:
            raise SourceError(f"snapshot larger than {MAX_SNAPSHOT_BYTES} bytes from {where}")
        image = _bgr(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)) if body else None
        if image is None:
            raise SourceError(f"undecodable snapshot ({len(body)} bytes) from {where}")
        return image


class FileSource(_CaptureFrames):
    """A local video file replayed at its own frame rate (looped), so it behaves like a live camera."""

    def __init__(self, path: str | os.PathLike[str], loop: bool = True) -> None:
        self._path = Path(path)
        self._loop = loop
        self._cap: cv2.VideoCapture | None = None
        self._period = 1.0 / DEFAULT_FILE_FPS
        self._next_due: float | None = None
        self._interrupted = threading.Event()
        self._seq = 0

    @property
    def fps(self) -> float:
        return 1.0 / self._period

    def open(self) -> None:
        self.close()
        self._interrupted.clear()
        if not self._path.is_file():
            raise SourceError(f"no such video file: {self._path}")
        cap = cv2.VideoCapture(str(self._path), cv2.CAP_ANY, list(_ONE_DECODE_THREAD))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video file {self._path}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._period = 1.0 / (fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FILE_FPS)
        self._cap, self._next_due = cap, None

    def grab(self) -> bool:
        """The next frame at the file's own pace, decoded but not converted (see `GrabbingSource`)."""
        if self._cap is None:
            return False
        now = time.monotonic()
        if self._next_due is not None and self._next_due > now and self._interrupted.wait(self._next_due - now):
            return False
        ok = self._cap.grab()
        if not ok and self._loop:
            # Reopening is more reliable than seeking to frame 0 across containers.
            self._cap.release()
            self._cap = cv2.VideoCapture(str(self._path), cv2.CAP_ANY, list(_ONE_DECODE_THREAD))
            ok = self._cap.grab()
        if not ok:
            return False
        now = time.monotonic()
        due = (now if self._next_due is None else self._next_due) + self._period
        # A caller that paused must not get a fast-forward burst: resume at live pace.
        self._next_due = due if due >= now - self._period else now
        return True

    def interrupt(self) -> None:
        self._interrupted.set()

    def describe(self) -> str:
        return f"file {self._path}" + (" (looped)" if self._loop else "")


@dataclass(frozen=True, repr=False)
class SourceSpec:
    """What to read, as configured; make_source() turns it into a source."""

    kind: SourceKind
    url: str  # rtsp:// or http(s):// URL, or a file path for kind="file"
    snapshot_interval_ms: int = 5000
    open_timeout_s: float = 5
    read_timeout_s: float = 5

    def __post_init__(self) -> None:
        if self.kind not in ("rtsp", "snapshot", "file"):
            raise ValueError(f"unknown source kind {self.kind!r}")
        if not self.url:
            raise ValueError("empty source url")
        if self.snapshot_interval_ms <= 0 or self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("snapshot interval and timeouts must be positive")

    def __repr__(self) -> str:  # the dataclass default would print the password
        return (f"SourceSpec(kind={self.kind!r}, url={mask_url(self.url)!r}, "
                f"snapshot_interval_ms={self.snapshot_interval_ms}, open_timeout_s={self.open_timeout_s}, "
                f"read_timeout_s={self.read_timeout_s})")


def make_source(spec: SourceSpec) -> FrameSource:
    """A new, unopened source for spec (the reader calls this for every (re)connect)."""
    if spec.kind == "rtsp":
        return RtspSource(spec.url, spec.open_timeout_s, spec.read_timeout_s)
    if spec.kind == "snapshot":
        # read_timeout_s bounds each HTTP request; open_timeout_s has no separate meaning for HTTP.
        return SnapshotSource(spec.url, spec.snapshot_interval_ms, spec.read_timeout_s)
    path = spec.url.removeprefix("file://")
    return FileSource(path, loop=True)
