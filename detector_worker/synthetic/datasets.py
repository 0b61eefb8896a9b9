"""Training and evaluation sets for the stand-in models, rendered from the synthetic world.

Detector: whole frames with 0-2 vehicles anywhere (partly out of frame too), in YOLO format.
Classifiers: the Frontal crop (brand) and the Car crop (body type) of one vehicle, with the
box jittered as a detector's box would be, resized to a square exactly as the pipeline
feeds them (`detector_worker.imaging.resize_to`).

Every sample is a pure function of (seed, index), so a set is reproducible and a held-out set
is simply another seed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..imaging import crop, resize_to
from .catalog import BODY_TYPE_NAMES, BRAND_NAMES, DETECTOR_CLASSES
from .render import Image, apply_camera, draw_background, draw_vehicle
from .scene import GroundTruthObject, place_vehicle, random_look

Box = tuple[int, int, int, int]
VAL_OFFSET = 10_000_000  # sample indices of a set's val split start here, far from train's


@dataclass(frozen=True)
class Sample:
    image: Image
    objects: list[GroundTruthObject]


def _degrade(img: Image, rng: np.random.Generator) -> Image:
    """Compression and focus artefacts like those of a decoded H.264 camera stream."""
    if rng.random() < 0.3:
        img = np.asarray(cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0)), np.uint8)
    quality = int(rng.integers(35, 95))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)


def render_sample(seed: int, index: int, width: int = 640, height: int = 480, *,
                  max_vehicles: int = 2, fully_visible: bool = False) -> Sample:
    """One random still of the lane: a fresh background, 0..max_vehicles vehicles, a camera."""
    rng = np.random.default_rng((seed, index))
    img, horizon = draw_background(rng, width, height)
    count = 1 if max_vehicles == 1 else int(rng.choice([0, 1, 2], p=[0.08, 0.67, 0.25]))
    shares = sorted(float(rng.uniform(0.04, 0.62)) for _ in range(count))  # far (small) first
    objects: list[GroundTruthObject] = []
    for k, share in enumerate(shares):
        look = random_look(rng)
        sprite = draw_vehicle(look, int(share * width))
        half = share / 2
        lo, hi = (half, 1 - half) if fully_visible else (-half * 0.6, 1 + half * 0.6)
        if count == 2:  # keep two vehicles mostly apart: one each side
            lo, hi = (lo, 0.5) if k == 0 else (0.5, hi)
        cx = float(rng.uniform(lo, max(lo, hi)))
        obj = place_vehicle(img, sprite, look, k + 1, cx, horizon, stopped=False)
        if obj is not None:
            objects.append(obj)
    tint = rng.uniform(0.9, 1.1, 3)
    img = apply_camera(img, float(rng.uniform(0.6, 1.3)), (float(tint[0]), float(tint[1]), float(tint[2])),
                       float(rng.uniform(1.0, 7.0)), rng)
    return Sample(_degrade(img, rng), objects)


def _yolo_line(cls: int, box: Box, width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    return (f"{cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")


def _parallel(fn: Callable[[int, int], None], n: int, workers: int) -> None:
    """Run fn(start, stop) over [0, n) in chunks on `workers` processes (inline for one)."""
    if workers <= 1 or n < 64:
        fn(0, n)
        return
    step = -(-n // (workers * 4))
    with ProcessPoolExecutor(workers) as pool:
        for future in [pool.submit(fn, a, min(n, a + step)) for a in range(0, n, step)]:
            future.result()


@dataclass(frozen=True)
class _DetectionChunk:
    root: Path
    split: str
    seed: int
    offset: int
    scale: float
    size: tuple[int, int] = (640, 480)

    def __call__(self, start: int, stop: int) -> None:
        images, labels = self.root / "images" / self.split, self.root / "labels" / self.split
        for i in range(start, stop):
            sample = render_sample(self.seed, self.offset + i, *self.size)
            h, w = sample.image.shape[:2]
            image = sample.image
            if self.scale != 1.0:
                size = (int(w * self.scale), int(h * self.scale))
                image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
            cv2.imwrite(str(images / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines = []
            for o in sample.objects:
                lines.append(_yolo_line(0, o.car_box, w, h))
                if o.frontal_box is not None:
                    lines.append(_yolo_line(1, o.frontal_box, w, h))
            (labels / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def write_detection_set(root: Path, seed: int, n_train: int, n_val: int, workers: int = 1,
                        scale: float = 1.0, *, size: tuple[int, int] = (640, 480)) -> Path:
    """A YOLO detect dataset under `root`; returns its data.yaml.

    Frames are rendered at `size` (width, height). `scale` < 1 stores smaller images: a detector
    trained at imgsz 320 sees them at that size anyway, and smaller files make every epoch's
    loading and augmentation cheaper.
    """
    for split, n, offset in (("train", n_train, 0), ("val", n_val, VAL_OFFSET)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        _parallel(_DetectionChunk(root, split, seed, offset, scale, size), n, workers)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "images/train", "val": "images/val",
                                    "names": dict(enumerate(DETECTOR_CLASSES))}, sort_keys=False))
    return data


def jitter_box(box: Box, rng: np.random.Generator, amount: float = 0.06) -> tuple[float, float, float, float]:
    """Move each edge by up to `amount` of the box size, as a detector's box would wobble."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = rng.uniform(-amount, amount, 4)
    return x1 + d[0] * w, y1 + d[1] * h, x2 + d[2] * w, y2 + d[3] * h


def classification_crops(seed: int, index: int, brand_size: int, body_size: int, *,
                         size: tuple[int, int] = (640, 480)) -> tuple[Image, str, Image, str] | None:
    """(frontal crop, brand, car crop, body type) of one vehicle in a frame of `size` (width,
    height), or None if it fell out of view."""
    sample = render_sample(seed, index, *size, max_vehicles=1, fully_visible=True)
    if not sample.objects or sample.objects[0].frontal_box is None:
        return None
    obj = sample.objects[0]
    rng = np.random.default_rng((seed, index, 1))
    assert obj.frontal_box is not None
    front = crop(sample.image, jitter_box(obj.frontal_box, rng))
    car = crop(sample.image, jitter_box(obj.car_box, rng))
    if front.size == 0 or car.size == 0:
        return None
    return resize_to(front, (brand_size, brand_size)), obj.brand, resize_to(car, (body_size, body_size)), obj.body_type


@dataclass(frozen=True)
class _ClassificationChunk:
    brand_root: Path
    body_root: Path
    split: str
    seed: int
    offset: int
    brand_size: int
    body_size: int
    size: tuple[int, int] = (640, 480)

    def __call__(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            crops = classification_crops(self.seed, self.offset + i, self.brand_size, self.body_size,
                                         size=self.size)
            if crops is None:
                continue
            front, brand, car, body = crops
            cv2.imwrite(str(self.brand_root / self.split / brand / f"{i:06d}.png"), front)
            cv2.imwrite(str(self.body_root / self.split / body / f"{i:06d}.png"), car)


def write_classification_sets(brand_root: Path, body_root: Path, seed: int, n_train: int, n_val: int,
                              brand_size: int, body_size: int, workers: int = 1, *,
                              size: tuple[int, int] = (640, 480)) -> None:
    """ImageFolder trees (`<root>/<split>/<class>/*.png`) for the brand and body-type classifiers,
    cropped from frames of `size` (width, height)."""
    for root, names in ((brand_root, BRAND_NAMES), (body_root, BODY_TYPE_NAMES)):
        for split in ("train", "val"):
            for name in names:
                (root / split / name).mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("val", n_val, VAL_OFFSET)):
        _parallel(_ClassificationChunk(brand_root, body_root, split, seed, offset, brand_size, body_size, size),
                  n, workers)
