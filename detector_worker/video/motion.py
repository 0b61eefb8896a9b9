"""A cheap motion detector for gating the object detector (modelled on Frigate's "improved" one).

Per frame, on the region of interest only: downscale to ~`frame_height` px (INTER_LINEAR on the
BGR crop, then grey), contrast normalisation (the 4th–96th percentile of the last frames,
averaged, stretched to 0–255: slow exposure drift and a passing cloud do not look like motion),
a small blur, difference with a running-average background (`frame_alpha` per frame),
threshold, dilate, external contours. Contours larger than `contour_area` (in small-frame pixels)
are motion boxes, returned in full-frame pixels.

A *global* change (an IR switch, a light switched on, the camera's auto exposure jumping) makes
most of the ROI differ from the background. When the contours cover more than
`lightning_threshold` of the ROI the detector *recalibrates*: the background becomes the current
frame, no boxes are returned, and it stays calibrating (taking each frame as background) until
the difference is small again. So a light change costs a few frames, never a detector left on.

Costs ~0.3–0.6 ms per frame at 1080p on one core (the resize dominates); holds two small arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in full-frame pixels
_CONTRAST_WINDOW = 50  # frames whose percentiles are averaged (Frigate's figure)


@dataclass(frozen=True)
class MotionParams:
    threshold: int = 30  # grey-level difference (after contrast stretch) that counts as change
    contour_area: int = 10  # smallest contour, in small-frame pixels (~100 px high)
    frame_height: int = 100  # the small frame's height
    frame_alpha: float = 0.1  # running-average weight of each new frame: ~2 s to absorb a change at 5 fps
    lightning_threshold: float = 0.8  # share of the ROI changed at once: a global change, recalibrate
    improve_contrast: bool = True


class MotionDetector:
    """Motion boxes of one region of interest of one camera's frames (not thread-safe: one lane)."""

    def __init__(self, params: MotionParams | None = None, roi: tuple[int, int, int, int] | None = None) -> None:
        self.params = params or MotionParams()
        self.roi = roi  # x1, y1, x2, y2 (x2/y2 may lie past the frame: clipped)
        self._avg: npt.NDArray[np.float32] | None = None
        self._shape: tuple[int, int, int, int, int, int] | None = None  # frame h, w, roi x1, y1, x2, y2
        self._contrast = np.zeros((_CONTRAST_WINDOW, 2), np.float32)
        self._contrast_n = 0
        self._last_range = (0.0, 255.0)
        self.calibrating = True
        self.recalibrations = 0  # global changes seen (the first frame's calibration not counted)
        self.frames = 0
        self.last_boxes: list[Box] = []
        self.last_motion_share = 0.0  # share of the small ROI covered by contours in the last frame

    def reset(self) -> None:
        self._avg, self._shape, self._contrast_n = None, None, 0
        self.calibrating = True

    def _region(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.roi is None:
            return 0, 0, w, h
        x1, y1, x2, y2 = self.roi
        x1, y1 = max(0, min(int(x1), w)), max(0, min(int(y1), h))
        return x1, y1, max(x1, min(int(x2), w)), max(y1, min(int(y2), h))

    def detect(self, frame: npt.NDArray[np.uint8]) -> list[Box]:
        """Motion boxes (full-frame pixels) inside the ROI of this frame; [] while calibrating."""
        p = self.params
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = self._region(h, w)
        self.frames += 1
        if x2 - x1 < 2 or y2 - y1 < 2:
            self.last_boxes, self.last_motion_share = [], 0.0
            return []
        shape = (h, w, x1, y1, x2, y2)
        if shape != self._shape:  # first frame, or the stream changed size: start afresh
            self.reset()
            self._shape = shape
        rh, rw = y2 - y1, x2 - x1
        scale = min(1.0, p.frame_height / rh)
        sh, sw = max(2, round(rh * scale)), max(2, round(rw * scale))
        small = cv2.resize(frame[y1:y2, x1:x2], (sw, sh), interpolation=cv2.INTER_LINEAR)
        grey = np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small, np.uint8)
        if p.improve_contrast:
            grey = self._stretch(grey)
        grey = np.asarray(cv2.GaussianBlur(grey, (5, 5), 1.0), np.uint8)
        if self._avg is None:
            self._avg = grey.astype(np.float32)
            self.last_boxes, self.last_motion_share = [], 0.0
            return []
        delta = cv2.absdiff(grey, cv2.convertScaleAbs(self._avg))
        thresh = cv2.threshold(delta, p.threshold, 255, cv2.THRESH_BINARY)[1]
        dilated = cv2.dilate(thresh, None, iterations=1)  # type: ignore[call-overload]
        contours, _ = cv2.findContours(dilated, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes: list[Box] = []
        total = 0.0
        fx, fy = rw / sw, rh / sh
        for c in contours:
            area = cv2.contourArea(c)
            total += area
            if area > p.contour_area:
                bx, by, bw, bh = cv2.boundingRect(c)
                boxes.append((x1 + int(bx * fx), y1 + int(by * fy),
                              x1 + min(rw, int(np.ceil((bx + bw) * fx))), y1 + min(rh, int(np.ceil((by + bh) * fy)))))
        share = total / float(sw * sh)
        self.last_motion_share = share
        if share < 0.05 and len(boxes) <= 4:
            self.calibrating = False
        if share > p.lightning_threshold and not self.calibrating:
            self.recalibrations += 1
            self.calibrating = True
            # the new lighting is the norm at once: no 50-frame drift of the stretch to re-trigger
            self._contrast[:] = self._last_range
            self._contrast_n = _CONTRAST_WINDOW
        if self.calibrating:
            self._avg = grey.astype(np.float32)  # the new scene is the background
            boxes = []
        else:
            cv2.accumulateWeighted(grey, self._avg, p.frame_alpha)
        self.last_boxes = boxes
        return boxes

    def _stretch(self, grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        lo, hi = np.percentile(grey, (4, 96))
        self._last_range = (float(lo), float(hi))
        self._contrast[self._contrast_n % _CONTRAST_WINDOW] = (lo, hi)
        self._contrast_n += 1
        window = self._contrast[: min(self._contrast_n, _CONTRAST_WINDOW)]
        avg_lo, avg_hi = (float(v) for v in window.mean(axis=0))
        if avg_hi - avg_lo < 1.0:
            return grey
        out = (np.clip(grey, avg_lo, avg_hi) - np.float32(avg_lo)) * np.float32(255.0 / (avg_hi - avg_lo))
        return out.astype(np.uint8)


def intersects(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside_share(outer: tuple[float, float, float, float], inner: tuple[float, float, float, float]) -> float:
    """Share of `inner`'s area inside `outer`."""
    ix = max(0.0, min(outer[2], inner[2]) - max(outer[0], inner[0]))
    iy = max(0.0, min(outer[3], inner[3]) - max(outer[1], inner[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return ix * iy / area if area > 0 else 0.0


@dataclass
class GateStats:
    frames: int = 0  # frames the lane saw
    detected: int = 0  # frames the detector ran on
    recalibrations: int = 0  # global changes the motion detector absorbed
    reasons: dict[str, int] | None = None  # why the detector ran: motion, pending, recheck, idle, calibrated

    def __post_init__(self) -> None:
        if self.reasons is None:
            self.reasons = {}

    @property
    def detected_share(self) -> float:
        return self.detected / self.frames if self.frames else 0.0


class MotionGate:
    """Whether a lane runs its detector on a frame.

    Yes when motion (outside the boxes of vehicles already stationary and done) touches the ROI;
    while any track is not yet settled (`pending`: so stillness is counted on consecutive frames
    exactly as without the gate, and a car that stops right after arriving becomes stable as
    before); when a tracked vehicle's re-check is due (`recheck_s`); once after a recalibration;
    and every `idle_recheck_s` in any case (a cheap safety net). Times are the caller's clock (s).
    """

    def __init__(self, params: MotionParams, roi: tuple[int, int, int, int] | None, *, recheck_s: float = 2.0,
                 idle_recheck_s: float = 10.0) -> None:
        self.detector = MotionDetector(params, roi)
        self.recheck_s = recheck_s
        self.idle_recheck_s = idle_recheck_s
        self.stats = GateStats()
        self._last_run: float | None = None
        self.boxes: list[Box] = []  # the last frame's motion boxes (full-frame pixels), for the dashboard

    def decide(self, frame: npt.NDArray[np.uint8], now: float, *, pending: bool,
               stationary: list[tuple[float, float, float, float]], tracked: bool) -> bool:
        was_calibrating = self.detector.calibrating and self.detector.frames > 0
        self.boxes = self.detector.detect(frame)
        self.stats.frames += 1
        self.stats.recalibrations = self.detector.recalibrations
        since = None if self._last_run is None else now - self._last_run
        reason = None
        if any(all(inside_share(s, b) < 0.8 for s in stationary) for b in self.boxes):
            reason = "motion"
        elif pending:
            reason = "pending"
        elif was_calibrating and not self.detector.calibrating:
            reason = "calibrated"
        elif since is None or since >= self.idle_recheck_s or (tracked and since >= self.recheck_s):
            reason = "recheck" if tracked else "idle"
        if reason is None:
            return False
        assert self.stats.reasons is not None
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        self.stats.detected += 1
        self._last_run = now
        return True
