"""The reader decodes every frame but converts only those max_fps keeps (grab()/retrieve())."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from detector_worker.video.reader import LatestFrameReader
from detector_worker.video.sources import FileSource, Frame
from tests.conftest import ClipFactory


class CountingSource:
    """A 50 fps camera that counts grabs (decodes) and retrieves (conversions)."""

    def __init__(self) -> None:
        self.grabs = self.retrieves = 0
        self._stop = threading.Event()

    def open(self) -> None:
        self._stop.clear()

    def grab(self) -> bool:
        if self._stop.wait(0.02):
            return False
        self.grabs += 1
        return True

    def retrieve(self) -> Frame | None:
        self.retrieves += 1
        return Frame(np.zeros((4, 4, 3), np.uint8), self.retrieves, time.time(), time.monotonic())

    def read(self) -> Frame | None:
        return self.retrieve() if self.grab() else None

    def close(self) -> None:
        pass

    def interrupt(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        return "counting source"


def test_frames_beyond_max_fps_are_grabbed_never_retrieved() -> None:
    source = CountingSource()
    with LatestFrameReader(lambda: source, max_fps=5) as reader:
        time.sleep(1.5)
        published = reader.stats().frames
    assert source.grabs >= 40  # every frame decoded (~75 at 50 fps on an idle machine)
    assert 5 <= source.retrieves <= 10  # ~5 fps converted
    assert published == source.retrieves


def test_file_source_grabs_and_retrieves_with_one_decode_thread(clip_factory: ClipFactory) -> None:
    clip = clip_factory("grab", 3, 2.0)
    source = FileSource(clip, loop=False)
    source.open()
    try:
        assert source.grab()
        frame = source.retrieve()
        assert frame is not None and frame.image.shape[2] == 3
        cap = source._cap
        assert cap is not None and cap.get(cv2.CAP_PROP_N_THREADS) == 1
    finally:
        source.close()
