"""LatestFrameReader against the real GStreamer RTSP server: frames, freshness, outages, hangs, fps cap."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from detector_worker.video.backoff import Backoff
from detector_worker.video.reader import LatestFrameReader
from detector_worker.video.sources import RtspSource, SourceSpec, make_source
from tests.rtsp import SYSTEM_PYTHON, RtspServer
from tests.video.helpers import CountingFactory, RecordingBackoff, StatusLog, wait_until

# slow (left out of make check): a real GStreamer RTSP server
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="needs Debian python3-gi")]

SHAPE = (480, 640, 3)  # the fixture's streams: 640x480 @ 10 fps


@contextmanager
def running(reader: LatestFrameReader) -> Iterator[LatestFrameReader]:
    """Start the reader; on exit check that stop() ends every thread within ~1 s."""
    reader.start()
    try:
        yield reader
    finally:
        started = time.monotonic()
        stopped = reader.stop(timeout=2.0)
        took = time.monotonic() - started
        print(f"[{reader.name}] stop() took {took:.3f} s")
        assert stopped and took < 1.5


def reader_threads(name: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"{name}-reader-")]


def test_reads_frames_from_rtsp(rtsp_server: RtspServer) -> None:
    source = RtspSource(rtsp_server.url("cam-a"), open_timeout_s=5, read_timeout_s=5)
    source.open()
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    assert all(f is not None for f in frames)
    assert [f.seq for f in frames if f] == [1, 2, 3]
    for f in frames:
        assert f is not None and f.image.shape == SHAPE and f.image.dtype == np.uint8
        assert abs(f.captured_at - time.time()) < 5
    assert source.read() is None  # closed

    started = time.monotonic()
    spec = SourceSpec("rtsp", rtsp_server.url("cam-b"))
    with running(LatestFrameReader(lambda: make_source(spec), stall_timeout_s=5, name="reads")) as reader:
        first = reader.latest(timeout=10)
        assert first is not None, reader.stats()
        print(f"time to first frame: {time.monotonic() - started:.3f} s")
        seqs = [first.seq]
        for _ in range(5):
            frame = reader.latest(after_seq=seqs[-1], timeout=2)
            assert frame is not None and frame.image.shape == SHAPE
            seqs.append(frame.seq)
        assert seqs == sorted(set(seqs))
        stats = reader.stats()
        assert stats.online and stats.frames >= 6 and stats.reconnects == 0 and stats.last_error is None
        assert stats.last_frame_age_s is not None and stats.last_frame_age_s < 0.5


def test_slow_consumer_only_ever_gets_fresh_frames(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("cam-a")
    with running(LatestFrameReader(lambda: RtspSource(url), stall_timeout_s=5, name="slow")) as reader:
        frame = reader.latest(timeout=10)
        assert frame is not None
        older: list[weakref.ref[np.ndarray]] = []
        for _ in range(3):
            older.append(weakref.ref(frame.image))
            last_seq = frame.seq
            del frame
            time.sleep(1.0)  # a slow consumer (a long inference)
            frame = reader.latest(after_seq=last_seq, timeout=1)
            assert frame is not None
            age = time.monotonic() - frame.monotonic
            print(f"slow consumer: frame age {age * 1000:.0f} ms, skipped {frame.seq - last_seq - 1} frames")
            assert age < 0.25
            assert frame.seq - last_seq >= 5  # ~10 newer frames arrived; only the newest is handed out
        gc.collect()
        # Nothing queues frames: the reader only holds the newest, so every older image is freed.
        assert [ref() is None for ref in older] == [True] * 3


def test_killed_server_goes_offline_backs_off_and_recovers(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("cam-a")
    status, backoff = StatusLog(), RecordingBackoff(0.1, 0.8, jitter="none")
    factory = CountingFactory(lambda: RtspSource(url, open_timeout_s=2, read_timeout_s=2))
    reader = LatestFrameReader(factory, backoff=backoff, stall_timeout_s=3, on_status=status, name="kill")
    with running(reader):
        status.wait_for(True, timeout=10)
        killed_at = time.monotonic()
        rtsp_server.kill()
        offline = status.wait_for(False, timeout=3)
        print(f"kill detected after {(offline.at - killed_at) * 1000:.0f} ms: {offline.reason}")
        assert offline.at - killed_at < 1.0
        assert reader.stats().online is False and reader.latest(timeout=0) is None

        wait_until(lambda: len(factory.calls) >= 7, timeout=8)  # 1 open + 6 reconnects: 3.1 s of waits
        assert backoff.delays[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8, 0.8])
        # The reconnects really waited those delays: an open of a dead port fails at once, so the
        # gap between attempts k and k+1 is delay k (attempt 0 is the first open, before the kill).
        gaps = np.diff(factory.calls[1:7])
        print("backoff delays:", backoff.delays[:6], "gaps between attempts:", np.round(gaps, 3).tolist())
        assert all(delay - 0.02 < gap < delay + 0.25 for gap, delay in zip(gaps, backoff.delays[1:6], strict=True))
        assert status.states() == [True, False]  # offline reported once, not per attempt

        rtsp_server.restart()
        restarted_at = time.monotonic()
        online = status.wait_for(True, timeout=6, after=2)
        print(f"online {online.at - restarted_at:.3f} s after restart() returned")
        assert reader.latest(timeout=2) is not None
        stats = reader.stats()
        assert stats.online and stats.reconnects >= 6 and stats.stalls == 0
        assert stats.last_error is not None and "cannot open" in stats.last_error
        assert backoff.attempt == 0  # reset by the first good frame
        print(f"stats after restart: {stats}")


def test_frozen_server_is_a_stall_and_recovers_after_thaw(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("cam-b")
    status = StatusLog()
    reader = LatestFrameReader(lambda: RtspSource(url, open_timeout_s=5, read_timeout_s=5),
                               backoff=Backoff(0.1, 0.8, jitter="none"), stall_timeout_s=2,
                               on_status=status, name="freeze")
    with running(reader):
        status.wait_for(True, timeout=10)
        assert reader.latest(timeout=2) is not None
        frozen_at = time.monotonic()
        rtsp_server.freeze()
        # read() is now blocked inside OpenCV; only the watchdog can notice.
        offline = status.wait_for(False, timeout=4)
        detect = offline.at - frozen_at
        print(f"freeze detected after {detect:.3f} s: {offline.reason}")
        assert 1.5 < detect < 2.6 and offline.reason.startswith("stalled")
        stats = reader.stats()
        assert stats.stalls == 1 and not stats.online and reader.latest(timeout=0) is None
        assert len(reader_threads("freeze")) == 2  # the stuck one, abandoned, and a fresh one

        time.sleep(0.5)
        thawed_at = time.monotonic()
        rtsp_server.thaw()
        online = status.wait_for(True, timeout=8, after=2)
        print(f"online {online.at - thawed_at:.3f} s after thaw")
        assert reader.latest(timeout=2) is not None
        stats = reader.stats()
        assert stats.online and stats.stalls == 1 and stats.reconnects >= 1
        # The abandoned thread closes its own capture once its read returns, then exits.
        wait_until(lambda: reader_threads("freeze") == ["freeze-reader-2"], timeout=7)
        print(f"abandoned reader thread gone {time.monotonic() - thawed_at:.3f} s after thaw")
        assert status.states() == [True, False, True]


def test_max_fps_drops_frames_to_the_cap(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("cam-a")
    with running(LatestFrameReader(lambda: RtspSource(url), max_fps=2, stall_timeout_s=5, name="capped")) as reader:
        frame = reader.latest(timeout=10)
        assert frame is not None
        times = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            nxt = reader.latest(after_seq=frame.seq, timeout=1.5)
            assert nxt is not None and nxt.seq == frame.seq + 1  # consecutive: seq counts kept frames
            frame = nxt
            times.append(frame.monotonic)
        rate = (len(times) - 1) / (times[-1] - times[0])
        stats = reader.stats()
        print(f"capped at 2 fps: measured {rate:.2f} fps, stats.fps {stats.fps:.2f}")
        assert 1.7 < rate < 2.3 and 1.7 < stats.fps < 2.3
        assert all(0.35 < gap < 0.65 for gap in np.diff(times))
        # Dropped frames still count as progress for the watchdog: no false stall.
        assert stats.stalls == 0
