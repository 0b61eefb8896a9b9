"""Ultralytics' pre- and post-processing, re-done in numpy/OpenCV so ONNX Runtime needs no torch.

Each function mirrors one Ultralytics 8.4 step closely enough that the ONNX path gives the same
detections and probabilities as `YOLO(.pt).predict` (tests/pipeline checks it):
`LetterBox` (auto=False), `ops.scale_boxes`, `nms.non_max_suppression` and, for classifiers,
`classify_transforms` (torchvision Resize on a PIL image + CenterCrop), which we reproduce bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from ..imaging import Image

Tensor = npt.NDArray[np.float32]
PAD_VALUE = 114  # Ultralytics' letterbox grey
MAX_NMS = 30_000  # Ultralytics keeps at most this many candidates before NMS


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where the image went inside the model input: per-axis gain and the left/top padding."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


def to_tensor(image: Image) -> Tensor:
    """HWC BGR uint8 → 1x3xHxW RGB float32 in [0, 1], dividing (not multiplying) as torch's div_ does."""
    chw = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))
    return (chw.astype(np.float32) / np.float32(255.0))[None]


def letterbox(image: Image, shape: tuple[int, int]) -> tuple[Tensor, Letterbox]:
    """Ultralytics `LetterBox(shape, auto=False, scaleup=True, center=True)`, then `to_tensor`.

    The roundings (Python's round, the ±0.1 split of odd padding) are Ultralytics' own: a one-pixel
    difference shifts every box by a pixel.
    """
    h, w = image.shape[:2]
    out_h, out_w = shape
    r = min(out_h / h, out_w / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if (w, h) != (new_w, new_h):
        image = np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return to_tensor(np.asarray(padded, np.uint8)), Letterbox(new_w / w, new_h / h, left, top)


def nms(boxes: Tensor, scores: Tensor, classes: npt.NDArray[np.intp], iou: float, max_det: int) -> list[int]:
    """Greedy class-aware NMS like torchvision's: drop a box whose IoU with a kept one of its class is > iou.

    Per-class comparison instead of Ultralytics' coordinate-offset trick: same result, no float32
    precision lost on offset coordinates.
    """
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        tl = np.maximum(boxes[i, :2], boxes[rest, :2])
        br = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(br - tl, 0, None), axis=1)
        overlap = inter / (area[i] + area[rest] - inter)
        order = rest[(classes[rest] != classes[i]) | ~(overlap > iou)]
    return keep


def decode(output: Tensor, min_confidence: float, box: Letterbox, image_shape: tuple[int, int],
           iou: float = 0.7, max_det: int = 300) -> list[tuple[tuple[float, float, float, float], int, float]]:
    """YOLOv8 head output (1, 4+nc, N) → [(x1, y1, x2, y2 in image pixels, class index, confidence)].

    Best class per anchor (Ultralytics' multi_label=False), strictly above the threshold as
    Ultralytics filters, NMS, then `scale_boxes`: undo padding and gain, clip to the image.
    """
    pred = output[0]
    class_scores = pred[4:]
    classes = class_scores.argmax(0)
    conf = class_scores.max(0)
    candidates = np.flatnonzero(conf > min_confidence)
    if candidates.size > MAX_NMS:
        candidates = candidates[np.argsort(-conf[candidates], kind="stable")[:MAX_NMS]]
    xy, half = pred[:2, candidates].T, pred[2:4, candidates].T / 2
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    kept = nms(boxes, conf[candidates], classes[candidates], iou, max_det)
    h, w = image_shape
    out = []
    for k in kept:
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        x1, x2 = ((v - box.pad_x) / box.gain_x for v in (x1, x2))
        y1, y2 = ((v - box.pad_y) / box.gain_y for v in (y1, y2))
        clipped = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
        out.append((clipped, int(classes[candidates[k]]), float(conf[candidates[k]])))
    return out


@lru_cache(maxsize=64)
def _pil_bilinear_weights(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """Pillow's fixed-point bilinear coefficients (Resample.c: precompute_coeffs + normalize_coeffs_8bpc).

    Pillow antialiases when shrinking (the triangle filter widens by the scale), which OpenCV's
    INTER_LINEAR does not; the doubles are computed in Pillow's order so the ints round the same.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # bilinear support 1.0, widened by the scale
    ss = 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = [max(0.0, 1.0 - abs((x - center + 0.5) * ss)) for x in range(lo, hi)]
        total = 0.0
        for t in taps:  # sequential sum, as in C; numpy's pairwise sum can differ in the last bit
            total += t
        weights[xx, lo:hi] = [np.floor((t / total if total else t) * (1 << 22) + 0.5) for t in taps]
    return weights


def _pil_pass(image: npt.NDArray[np.uint8], weights: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.uint8]:
    # float64 products and sums of these integers stay below 2**53, so the matmul is exact integer math.
    moved = np.moveaxis(image, axis, -1).astype(np.float64)
    acc = moved @ weights.T + (1 << 21)
    return np.moveaxis(np.clip(np.floor(acc / (1 << 22)), 0, 255).astype(np.uint8), -1, axis)


def pil_resize(image: Image, width: int, height: int) -> Image:
    """Bit-exact `PIL.Image.resize((width, height), BILINEAR)`: two 1-D passes with uint8 rounding between.

    Pillow 13 runs the vertical pass first when it shrinks the height by more than twice what the
    horizontal pass removes from the width (found by testing: it matched 100 % of 4,000 random
    size pairs, tests/pipeline checks it); the order changes the rounding, so it matters.
    """
    h, w = image.shape[:2]
    passes = [(1, w, width), (0, h, height)]
    if height < h and h - height > 2 * (w - width):
        passes.reverse()
    for axis, size, new_size in passes:
        if size != new_size:
            image = _pil_pass(image, _pil_bilinear_weights(size, new_size), axis=axis)
    return image


def classify_input(image: Image, shape: tuple[int, int]) -> Tensor:
    """Ultralytics `classify_transforms(imgsz)` on a BGR array: Resize + CenterCrop + ToTensor (mean 0, std 1).

    Square imgsz: shortest side to imgsz (torchvision's int truncation of the long side), then a
    centre crop with Python's round; non-square: resize to exactly (h, w).
    """
    h, w = image.shape[:2]
    out_h, out_w = shape
    if out_h == out_w:
        if w <= h:
            new_w, new_h = out_w, int(out_w * h / w)
        else:
            new_w, new_h = int(out_h * w / h), out_h
    else:
        new_w, new_h = out_w, out_h
    resized = pil_resize(image, new_w, new_h)
    top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
    return to_tensor(resized[top:top + out_h, left:left + out_w])
