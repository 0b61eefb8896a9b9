"""Generated footage through the real RTSP server arrives intact, per camera, in OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.rtsp import RtspServer

pytestmark = pytest.mark.slow  # make check skips it: a real GStreamer RTSP server


def decoded_frames(video: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def open_capture(url: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000,
                                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    assert cap.isOpened(), url
    return cap


def test_each_camera_streams_its_own_clip_frame_for_frame(rtsp_server: RtspServer,
                                                          camera_clips: dict[str, Path]) -> None:
    references = {name: decoded_frames(path, 60) for name, path in camera_clips.items()}
    for name in camera_clips:
        cap = open_capture(rtsp_server.url(name))
        try:
            for _ in range(15):
                ok, frame = cap.read()
                assert ok and frame.shape == (480, 640, 3)
                own = max(cv2.PSNR(frame, ref) for ref in references[name])
                other = max(cv2.PSNR(frame, ref) for other_name, refs in references.items()
                            if other_name != name for ref in refs)
                # a stream frame is one of its clip's frames (no re-encode: bit-exact decode) and
                # clearly not one of the other camera's
                assert own > 40, (name, own)
                assert other < own - 5, (name, own, other)
        finally:
            cap.release()
