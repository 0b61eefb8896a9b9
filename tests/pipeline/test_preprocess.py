"""The numpy re-implementations of Ultralytics' pre/post-processing against Ultralytics itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision  # type: ignore[import-untyped]
from PIL import Image as PILImage
from ultralytics.data.augment import LetterBox, classify_transforms
from ultralytics.utils import ops

from detector_worker.pipeline import preprocess
from detector_worker.synthetic.datasets import render_sample


@pytest.mark.parametrize("size", [(480, 640), (720, 1280), (517, 333), (3, 5), (80, 100), (320, 320)])
def test_letterbox_is_ultralytics_letterbox(size: tuple[int, int]) -> None:
    frame = np.asarray(cv2.resize(render_sample(4101, 0).image, size[::-1], interpolation=cv2.INTER_AREA), np.uint8)
    tensor, box = preprocess.letterbox(frame, (320, 320))
    expected = LetterBox((320, 320), auto=False, stride=32)(image=frame)
    assert np.array_equal(tensor, (expected[:, :, ::-1].transpose(2, 0, 1)[None] / np.float32(255)))
    # and boxes go back exactly as Ultralytics' scale_boxes brings them back
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 320, (20, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (20, 2)).astype(np.float32)], axis=1)
    ours = preprocess.decode(_head_output(boxes), 0.1, box, size, iou=1.0)
    theirs = ops.scale_boxes((320, 320), boxes.copy(), size)
    got = np.array(sorted(b for b, _, _ in ours))
    assert np.allclose(got, np.array(sorted(map(tuple, theirs.tolist()))), atol=1e-3)


def _head_output(boxes: np.ndarray) -> preprocess.Tensor:
    """A fake (1, 4+2, N) YOLOv8 output holding `boxes` (xyxy) with distinct class-0 scores."""
    n = len(boxes)
    out = np.zeros((1, 6, n), np.float32)
    out[0, 0], out[0, 1] = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    out[0, 2], out[0, 3] = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out[0, 4] = np.linspace(0.9, 0.2, n)
    return out


def test_nms_keeps_what_torchvision_keeps() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(1, 300))
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], axis=1).astype(np.float32)
        scores = rng.permutation(np.linspace(0.01, 1.0, n)).astype(np.float32)  # distinct: no tie order
        classes = rng.integers(0, 3, n)
        ours = preprocess.nms(boxes, scores, classes, 0.7, 300)
        shifted = torch.from_numpy(boxes + classes[:, None].astype(np.float32) * 7680)  # Ultralytics' trick
        theirs = torchvision.ops.nms(shifted, torch.from_numpy(scores), 0.7).tolist()
        assert ours == theirs


def test_pil_resize_is_bit_exact() -> None:
    """torchvision's Resize on a PIL image (what Ultralytics' classifier predictor runs) is Pillow's
    antialiased bilinear filter; `pil_resize` must reproduce it exactly, pass order included."""
    rng = np.random.default_rng(3)
    for _ in range(150):
        h, w, out_h, out_w = (int(v) for v in rng.integers(2, 260, 4))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(PILImage.fromarray(image).resize((out_w, out_h), PILImage.Resampling.BILINEAR))
        assert np.array_equal(preprocess.pil_resize(image, out_w, out_h), expected), (w, h, out_w, out_h)


@pytest.mark.parametrize("shape", [(96, 96), (64, 64), (224, 224), (96, 128)])
@pytest.mark.parametrize("size", [(96, 96), (64, 64), (57, 133), (301, 180), (30, 41)])
def test_classify_input_is_ultralytics_classify_transforms(shape: tuple[int, int], size: tuple[int, int]) -> None:
    image = np.asarray(cv2.resize(render_sample(4102, 1).image[100:400, 100:500], size[::-1],
                                  interpolation=cv2.INTER_AREA), np.uint8)
    ours = preprocess.classify_input(image, shape)
    # as ClassificationPredictor does: the transforms on a PIL image of the BGR array, then BGR->RGB
    theirs = classify_transforms(shape[0] if shape[0] == shape[1] else shape)(PILImage.fromarray(image))
    assert ours.shape == (1, 3, *shape)
    assert np.array_equal(ours, theirs.numpy()[None, ::-1])
