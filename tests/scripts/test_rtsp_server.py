"""End-to-end tests of scripts/rtsp_server.py, read with OpenCV like the real workers."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.rtsp import SCRIPT, SYSTEM_PYTHON, RtspServer, RtspServerError

# Without these, OpenCV probes an RTSP stream for ~3 s before the first frame.
os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp|analyzeduration;0|probesize;32"

W, H, FPS, N_FRAMES, GOP = 640, 480, 10, 30, 10  # 3 s clips, a keyframe every second
RED, BLUE = (220, 30, 30), (30, 30, 220)  # RGB
BITS, BIT_W, STRIP_Y = 8, W // 8, H - 40  # frame index as black/white blocks along the bottom

# slow (left out of make check): a real GStreamer RTSP server
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="needs Debian python3-gi")]


def make_clip(path: Path, rgb: tuple[int, int, int], n_frames: int = N_FRAMES) -> None:
    """H.264 MP4, no B-frames, keyframe every GOP frames: loopable without re-encoding."""
    assert n_frames <= 1 << BITS
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.max_b_frames = 0
        stream.options = {"sc_threshold": "0"}  # keyframes exactly every GOP frames, never on a "scene cut"
        for i in range(n_frames):
            img = np.empty((H, W, 3), np.uint8)
            img[:] = rgb
            cv2.putText(img, f"{i}", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
            for b in range(BITS):
                img[STRIP_Y:, b * BIT_W:(b + 1) * BIT_W] = 255 if (i >> b) & 1 else 0
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def frame_index(bgr: np.ndarray) -> int:
    y = (STRIP_Y + H) // 2
    return sum(1 << b for b in range(BITS) if bgr[y, b * BIT_W + BIT_W // 2].mean() > 128)


def colour(bgr: np.ndarray) -> str:
    b, g, r = bgr[150:STRIP_Y].reshape(-1, 3).mean(axis=0)  # below the counter text
    if r > 150 and b < 80 and g < 80:
        return "red"
    if b > 150 and r < 80 and g < 80:
        return "blue"
    return f"other(b={b:.0f},g={g:.0f},r={r:.0f})"


def open_capture(url: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    assert cap.isOpened(), f"cannot open {url}"
    return cap


def read_frame(cap: cv2.VideoCapture) -> np.ndarray:
    ok, frame = cap.read()
    assert ok and frame is not None
    return frame


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    paths = {"cam1": d / "red.mp4", "cam2": d / "blue.mp4"}
    make_clip(paths["cam1"], RED)
    make_clip(paths["cam2"], BLUE)
    return paths


@pytest.fixture
def server(clips: dict[str, Path]) -> Iterator[RtspServer]:
    with RtspServer(clips) as srv:
        yield srv


def test_serves_each_file_on_its_own_path(server: RtspServer) -> None:
    assert server.stream_info == {"cam1": "640x480@10", "cam2": "640x480@10"}
    for name, expected in (("cam1", "red"), ("cam2", "blue")):
        cap = open_capture(server.url(name))
        try:
            for _ in range(3):
                frame = read_frame(cap)
                assert frame.shape == (H, W, 3)
                assert colour(frame) == expected, name
        finally:
            cap.release()


def test_loops_forever_at_real_time(server: RtspServer) -> None:
    cap = open_capture(server.url("cam1"))
    try:
        indices = [frame_index(read_frame(cap))]
        t0 = time.monotonic()
        n = int(1.5 * N_FRAMES) + 5
        indices += [frame_index(read_frame(cap)) for _ in range(n)]
        elapsed = time.monotonic() - t0
    finally:
        cap.release()
    # Every frame in order, wrapping from the last frame back to 0.
    steps = {(b - a) % N_FRAMES for a, b in itertools.pairwise(indices)}
    assert steps == {1}, indices
    assert any(b < a for a, b in itertools.pairwise(indices)), indices
    assert 0.6 * n / FPS <= elapsed <= 1.5 * n / FPS + 1.0, elapsed


def test_a_client_reconnecting_after_n_seconds_sees_the_clip_n_seconds_on(tmp_path: Path) -> None:
    """A live camera's footage runs on while nobody watches: a worker restarted after 4 s sees what
    the camera shows 4 s later, not the clip's start again."""
    clip, n_frames, away_s = tmp_path / "long.mp4", 200, 4.0  # 20 s: no loop during the test
    make_clip(clip, RED, n_frames)
    with RtspServer({"cam": clip}) as server:
        cap = open_capture(server.url("cam"))
        try:
            first = frame_index(read_frame(cap))
            t0 = time.monotonic()  # when the clip showed frame `first`
            read_frame(cap)
        finally:
            cap.release()
        time.sleep(away_s)
        reconnected = time.monotonic()
        cap = open_capture(server.url("cam"))
        try:
            seen = [(frame_index(read_frame(cap)), time.monotonic())]
            while seen[-1][1] - reconnected < 2.0:
                seen.append((frame_index(read_frame(cap)), time.monotonic()))
        finally:
            cap.release()
    indices = [i for i, _ in seen]
    assert first <= 1, first  # the first client switches the camera on
    # It joins at the keyframe before the live frame (so the first frame decodes), then plays on
    # frame by frame, at the clip's pace.
    at_join = first + (reconnected - t0) * FPS
    assert indices[0] % GOP == 0 and at_join - GOP - 3 <= indices[0] <= at_join + 5, (at_join, indices)
    assert {b - a for a, b in itertools.pairwise(indices)} == {1}, indices
    last, at = seen[-1]
    assert abs(last - (first + (at - t0) * FPS)) <= 5, (first, last, at - t0, indices)


def test_streams_of_one_clip_started_apart_show_it_out_of_step(tmp_path: Path) -> None:
    """--start puts a camera's first frame at the keyframe at or before that second: many cameras can show
    one clip without all seeing the same moment (the bench's realistic fleet)."""
    clip = tmp_path / "long.mp4"
    make_clip(clip, RED, 100)  # 10 s, keyframes every second
    with RtspServer({"a": clip, "b": clip, "c": clip}, starts={"b": 4.5, "c": 12.0}) as server:
        firsts = {}
        for name in ("a", "b", "c"):
            cap = open_capture(server.url(name))
            try:
                firsts[name] = frame_index(read_frame(cap))
            finally:
                cap.release()
    # b starts at the keyframe before 4.5 s (frame 40); c at 12 s mod 10 s = 2 s (frame 20); a at 0
    assert firsts["a"] <= 1 and 40 <= firsts["b"] <= 41 and 20 <= firsts["c"] <= 21, firsts


def test_kill_then_restart_on_same_url(server: RtspServer) -> None:
    port = server.port
    cap = open_capture(server.url("cam2"))
    try:
        read_frame(cap)
        server.kill()
        # The kernel closes the killed server's sockets, so reads fail quickly
        # (after at most a frame or two already buffered in the client).
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            ok, _ = cap.read()
            if not ok:
                break
        else:
            pytest.fail("reads kept succeeding after the server was killed")
    finally:
        cap.release()
    server.restart()
    assert server.port == port
    cap = open_capture(server.url("cam2"))
    try:
        assert colour(read_frame(cap)) == "blue"
        read_frame(cap)
    finally:
        cap.release()


def test_freeze_stalls_reads_and_thaw_resumes(server: RtspServer) -> None:
    cap = open_capture(server.url("cam1"))
    arrivals: list[float] = []  # monotonic time of every successfully read frame
    failed = threading.Event()
    done = threading.Event()

    def reader() -> None:  # cap.read() releases the GIL, and blocks while frozen
        while not done.is_set():
            ok, _ = cap.read()
            if not ok:
                failed.set()
                return
            arrivals.append(time.monotonic())

    def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            time.sleep(0.02)
        return pred()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(arrivals) >= 3, 5), "no frames before freeze"
        server.freeze()
        frozen_at = time.monotonic()
        time.sleep(2.5)
        during = [t - frozen_at for t in arrivals if t > frozen_at]
        # At most a couple of frames already in flight may still be delivered.
        assert len(during) <= 2 and all(t < 0.5 for t in during), during
        assert not failed.is_set()

        server.thaw()
        thawed_at = time.monotonic()
        assert wait_for(lambda: sum(t > thawed_at for t in arrivals) >= 5, 5), \
            "frames did not resume after thaw"
        assert not failed.is_set()

        server.freeze()  # stop() must cope with a frozen server
        assert server.stop() == 0
    finally:
        done.set()
        thread.join(timeout=10)
        cap.release()


def test_sigterm_and_sigint_exit_zero_promptly(server: RtspServer) -> None:
    cap = open_capture(server.url("cam1"))  # with a client connected
    try:
        read_frame(cap)
        t0 = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - t0 < 2
    finally:
        cap.release()
    server.start()
    assert server.proc is not None
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGINT)  # as from Ctrl-C
    assert server.proc.wait(timeout=2) == 0
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize(("spec", "message"), [
    ("bad name={clip}", "invalid --stream"),
    ("cam/1={clip}", "invalid --stream"),
    ("{long}={clip}", "invalid --stream"),
    ("cam1={missing}", "file not found"),
    ("cam1", "invalid --stream"),
    ("cam1={clip} --start cam2=3", "invalid --start"),
    ("cam1={clip} --start cam1=soon", "must be a number"),
    ("cam1={clip} --start cam1=-1", "must be in"),
])
def test_bad_arguments_exit_2_with_one_line(
    clips: dict[str, Path], tmp_path: Path, spec: str, message: str
) -> None:
    spec = spec.format(clip=clips["cam1"], missing=tmp_path / "nope.mp4", long="x" * 65)
    proc = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), "--port", "0", "--stream", *spec.replace(" --start ", "\0--start\0").split("\0")],
        check=False, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and message in lines[0], proc.stderr


def test_start_raises_with_server_stderr(tmp_path: Path) -> None:
    srv = RtspServer({"cam1": tmp_path / "nope.mp4"})
    try:
        with pytest.raises(RtspServerError, match=r"(?s)exited with code 2.*file not found"):
            srv.start()
    finally:
        srv.close()
