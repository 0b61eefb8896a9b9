"""Small image helpers shared by the pipeline and the tools that train its models.

A classifier branch sees its crop resized to the node's `resizeTarget` (width, height) exactly,
aspect ratio not kept, as the backend's original pipeline meant it to. The stand-in classifiers
are trained on crops made by these same functions, so training and inference agree.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return (int(max(0, min(width, round(x1)))), int(max(0, min(height, round(y1)))),
            int(max(0, min(width, round(x2)))), int(max(0, min(height, round(y2)))))


def crop(image: Image, box: tuple[float, float, float, float]) -> Image:
    """The part of `image` inside `box` (x1, y1, x2, y2), clipped to the image; may be empty."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = clip_box(box, w, h)
    return image[y1:y2, x1:x2]


def resize_to(image: Image, size: tuple[int, int]) -> Image:
    """Resize to exactly `size` = (width, height); area filter when shrinking, linear otherwise."""
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("cannot resize an empty image")
    shrinking = size[0] * size[1] < w * h
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR),
                      dtype=np.uint8)
