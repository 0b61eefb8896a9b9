"""Drawing of vehicles seen from the front, and of the fixed camera's background.

Vehicles are drawn at twice their target size and shrunk with area interpolation, so that
small (far) vehicles get the soft edges a real camera gives them instead of aliased polygons.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .catalog import Bgr, BodyType, Brand

Image = npt.NDArray[np.uint8]
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Appearance:
    """Everything that decides how one vehicle looks."""

    brand: Brand
    body: BodyType
    colour: Bgr
    plate_seed: int


@dataclass(frozen=True)
class Sprite:
    """A rendered vehicle: colour image, coverage mask and the Frontal box inside it."""

    image: Image
    mask: npt.NDArray[np.float32]  # 0..1 coverage
    frontal: tuple[int, int, int, int]  # x1, y1, x2, y2 in sprite pixels


def _shade(colour: Bgr, factor: float) -> Bgr:
    b, g, r = (int(np.clip(c * factor, 0, 255)) for c in colour)
    return (b, g, r)


class _Canvas:
    """Relative-coordinate drawing on a supersampled canvas."""

    def __init__(self, width: int, height: int) -> None:
        self.w = width * SUPERSAMPLE
        self.h = height * SUPERSAMPLE
        self.img = np.zeros((self.h, self.w, 3), np.uint8)
        self.mask = np.zeros((self.h, self.w), np.uint8)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return int(round(x * self.w)), int(round(y * self.h))

    def poly(self, pts: list[tuple[float, float]], colour: Bgr, body: bool = False) -> None:
        arr = np.array([self.pt(x, y) for x, y in pts], np.int32)
        cv2.fillPoly(self.img, [arr], colour, cv2.LINE_AA)
        if body:
            cv2.fillPoly(self.mask, [arr], 255, cv2.LINE_AA)

    def rect(self, x1: float, y1: float, x2: float, y2: float, colour: Bgr, body: bool = False) -> None:
        self.poly([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], colour, body)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour: Bgr, thickness: int = -1) -> None:
        axes = (max(1, int(rx * self.w)), max(1, int(ry * self.h)))
        cv2.ellipse(self.img, self.pt(cx, cy), axes, 0, 0, 360, colour, thickness, cv2.LINE_AA)

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: Bgr, width: float) -> None:
        t = max(1, int(round(width * self.w)))
        cv2.line(self.img, self.pt(x1, y1), self.pt(x2, y2), colour, t, cv2.LINE_AA)

    def finish(self, width: int, height: int) -> tuple[Image, npt.NDArray[np.float32]]:
        img = np.asarray(cv2.resize(self.img, (width, height), interpolation=cv2.INTER_AREA), np.uint8)
        mask = np.asarray(cv2.resize(self.mask, (width, height), interpolation=cv2.INTER_AREA), np.float32)
        return img, mask / np.float32(255.0)


def _grille(c: _Canvas, brand: Brand, x1: float, y1: float, x2: float, y2: float, body_colour: Bgr) -> None:
    cx = (x1 + x2) / 2
    fill = body_colour if brand.grille_pattern == "solid" else brand.grille_fill
    frame = brand.grille_finish
    w, h = x2 - x1, y2 - y1
    shape = brand.grille_shape
    regions: list[tuple[float, float, float, float]]
    if shape == "kidney":
        gap = w * 0.06
        regions = [(x1 + w * 0.12, y1, cx - gap, y2), (cx + gap, y1, x2 - w * 0.12, y2)]
    elif shape == "split":
        regions = [(x1, y1, x2, y1 + h * 0.28), (x1 + w * 0.08, y1 + h * 0.45, x2 - w * 0.08, y2)]
    elif shape == "tall_rect":
        regions = [(cx - w * 0.28, y1 - h * 0.1, cx + w * 0.28, y2 + h * 0.1)]
    elif shape == "bar":
        regions = [(x1 - w * 0.1, y1 + h * 0.35, x2 + w * 0.1, y1 + h * 0.62)]
    else:
        regions = [(x1, y1, x2, y2)]
    for rx1, ry1, rx2, ry2 in regions:
        rw, rh = rx2 - rx1, ry2 - ry1
        if shape == "hexagon":
            outline = [(rx1 + rw * 0.18, ry1), (rx2 - rw * 0.18, ry1), (rx2, ry1 + rh * 0.5),
                       (rx2 - rw * 0.18, ry2), (rx1 + rw * 0.18, ry2), (rx1, ry1 + rh * 0.5)]
        elif shape == "trapezoid":
            outline = [(rx1, ry1), (rx2, ry1), (rx2 - rw * 0.15, ry2), (rx1 + rw * 0.15, ry2)]
        else:
            outline = [(rx1, ry1), (rx2, ry1), (rx2, ry2), (rx1, ry2)]
        if shape in ("oval", "kidney"):
            c.ellipse((rx1 + rx2) / 2, (ry1 + ry2) / 2, rw / 2, rh / 2, fill)
            c.ellipse((rx1 + rx2) / 2, (ry1 + ry2) / 2, rw / 2, rh / 2, frame, thickness=max(1, c.w // 90))
        else:
            c.poly(outline, frame)
            ix, iy = rw * 0.06, rh * 0.12
            inner = [(px + (ix if px < (rx1 + rx2) / 2 else -ix), py + (iy if py < (ry1 + ry2) / 2 else -iy))
                     for px, py in outline]
            c.poly(inner, fill)
        _pattern(c, brand, rx1 + rw * 0.1, ry1 + rh * 0.18, rx2 - rw * 0.1, ry2 - rh * 0.18)
        if shape == "bar":
            c.line(rx1, (ry1 + ry2) / 2, rx2, (ry1 + ry2) / 2, frame, 0.035)


def _pattern(c: _Canvas, brand: Brand, x1: float, y1: float, x2: float, y2: float) -> None:
    col = brand.grille_finish
    p = brand.grille_pattern
    if p == "h_bars":
        for i in range(4):
            y = y1 + (y2 - y1) * (i + 0.5) / 4
            c.line(x1, y, x2, y, col, 0.012)
    elif p == "v_bars":
        for i in range(7):
            x = x1 + (x2 - x1) * (i + 0.5) / 7
            c.line(x, y1, x, y2, col, 0.010)
    elif p == "mesh":
        for i in range(8):
            x = x1 + (x2 - x1) * i / 7
            c.line(x, y1, x + (x2 - x1) * 0.1, y2, (90, 90, 95), 0.006)
            c.line(x + (x2 - x1) * 0.1, y1, x, y2, (90, 90, 95), 0.006)
    elif p == "dots":
        for j in range(3):
            for i in range(7):
                c.ellipse(x1 + (x2 - x1) * (i + 0.5) / 7, y1 + (y2 - y1) * (j + 0.5) / 3, 0.012, 0.02, col)
    elif p == "diamond":
        n = 6
        for i in range(n):
            xa = x1 + (x2 - x1) * i / n
            xb = x1 + (x2 - x1) * (i + 1) / n
            xm, ym = (xa + xb) / 2, (y1 + y2) / 2
            c.poly([(xm, y1), (xb, ym), (xm, y2), (xa, ym)], col)


def _badge(c: _Canvas, brand: Brand, cx: float, cy: float, r: float) -> None:
    col = brand.badge_colour
    ry = r * c.w / c.h  # keep the badge round on a non-square canvas
    s = brand.badge_shape
    if s == "circle":
        c.ellipse(cx, cy, r, ry, col)
    elif s == "ring":
        c.ellipse(cx, cy, r, ry, col, thickness=max(2, c.w // 70))
    elif s == "oval":
        c.ellipse(cx, cy, r * 1.6, ry * 0.8, col)
    elif s == "diamond":
        c.poly([(cx, cy - ry), (cx + r, cy), (cx, cy + ry), (cx - r, cy)], col)
    elif s == "triangle":
        c.poly([(cx, cy - ry), (cx + r, cy + ry * 0.8), (cx - r, cy + ry * 0.8)], col)
    elif s == "shield":
        c.poly([(cx - r, cy - ry), (cx + r, cy - ry), (cx + r, cy + ry * 0.2), (cx, cy + ry),
                (cx - r, cy + ry * 0.2)], col)
    elif s == "cross":
        c.rect(cx - r * 0.3, cy - ry, cx + r * 0.3, cy + ry, col)
        c.rect(cx - r, cy - ry * 0.3, cx + r, cy + ry * 0.3, col)
    elif s == "star":
        pts = []
        for k in range(10):
            ang = -np.pi / 2 + k * np.pi / 5
            rr = 1.0 if k % 2 == 0 else 0.45
            pts.append((cx + r * rr * float(np.cos(ang)), cy + ry * rr * float(np.sin(ang))))
        c.poly(pts, col)


def _lights(c: _Canvas, brand: Brand, y: float, h: float) -> None:
    lit: Bgr = (225, 245, 250)
    rim: Bgr = (90, 90, 90)
    for side in (-1, 1):
        cx = 0.5 + side * 0.36
        s = brand.light_shape
        if s == "slim":
            c.poly([(cx - 0.11, y - h * 0.08), (cx + 0.11, y - h * 0.14), (cx + 0.11, y + h * 0.02),
                    (cx - 0.11, y + h * 0.06)], rim)
            c.rect(cx - 0.10, y - h * 0.06, cx + 0.10, y + 0.0, lit)
        elif s == "rect":
            c.rect(cx - 0.09, y - h * 0.12, cx + 0.09, y + h * 0.12, rim)
            c.rect(cx - 0.08, y - h * 0.09, cx + 0.08, y + h * 0.09, lit)
        elif s == "tall_rect":
            c.rect(cx - 0.05, y - h * 0.2, cx + 0.05, y + h * 0.22, rim)
            c.rect(cx - 0.04, y - h * 0.17, cx + 0.04, y + h * 0.19, lit)
        elif s == "round":
            c.ellipse(cx, y, 0.07, h * 0.16, rim)
            c.ellipse(cx, y, 0.055, h * 0.12, lit)
        elif s == "twin_round":
            for dx in (-0.045, 0.045):
                c.ellipse(cx + dx, y, 0.04, h * 0.11, rim)
                c.ellipse(cx + dx, y, 0.03, h * 0.08, lit)
        elif s == "angular":
            inner, outer = cx - side * 0.10, cx + side * 0.10
            c.poly([(inner, y + h * 0.08), (outer, y - h * 0.14), (outer, y + h * 0.04), (inner, y + h * 0.14)], rim)
            c.poly([(inner, y + h * 0.09), (outer, y - h * 0.10), (outer, y + h * 0.02)], lit)


def draw_vehicle(look: Appearance, width: int) -> Sprite:
    """Render `look` so that the vehicle (mirrors and wheels included) is `width` pixels wide."""
    body = look.body
    width = max(8, int(width))
    height = max(6, int(round(width * body.aspect)))
    c = _Canvas(width, height)
    col = look.colour
    dark = _shade(col, 0.55)
    ch = body.cabin_height
    bb = body.bumper_bottom
    # wheels first: the body covers their top
    ww = body.wheel_width
    for x in (0.05, 0.95 - ww):
        c.rect(x, bb - 0.08, x + ww, 1.0, (22, 22, 22), body=True)
    # cabin: roof and windshield
    rw, cw = body.roof_width, body.cabin_width
    c.poly([(0.5 - rw / 2, 0.0), (0.5 + rw / 2, 0.0), (0.5 + cw / 2, ch), (0.5 - cw / 2, ch)], col, body=True)
    glass_top = 0.03 + ch * 0.12
    inset = 0.035
    c.poly([(0.5 - rw / 2 + inset, glass_top), (0.5 + rw / 2 - inset, glass_top),
            (0.5 + cw / 2 - inset, ch - 0.01), (0.5 - cw / 2 + inset, ch - 0.01)], (70, 52, 40))
    c.poly([(0.5 - rw / 4, glass_top), (0.5 - rw / 4 + 0.06, glass_top),
            (0.5 - cw / 4 + 0.03, ch - 0.01), (0.5 - cw / 4 - 0.03, ch - 0.01)], (110, 95, 85))
    if body.roof_rails:
        for side in (-1, 1):
            x = 0.5 + side * (rw / 2 - 0.04)
            c.line(x - 0.03, 0.01, x + 0.03, 0.01, (40, 40, 40), 0.02)
    # mirrors
    for side in (-1, 1):
        x = 0.5 + side * cw / 2
        c.poly([(x, ch - 0.1), (x + side * 0.06, ch - 0.12), (x + side * 0.06, ch - 0.03), (x, ch - 0.02)],
               dark, body=True)
    # lower body: hood edge and front face
    c.poly([(0.03, ch + 0.04), (0.08, ch - 0.01), (0.92, ch - 0.01), (0.97, ch + 0.04), (0.97, bb), (0.03, bb)],
           col, body=True)
    c.rect(0.08, ch - 0.01, 0.92, ch + 0.03, _shade(col, 1.15))
    fh = bb - ch
    fy = ch + 0.02
    _lights(c, look.brand, fy + fh * 0.3, fh)
    gy1, gy2 = fy + fh * 0.2, fy + fh * 0.62
    _grille(c, look.brand, 0.30, gy1, 0.70, gy2, col)
    # bumper, plate
    c.rect(0.03, fy + fh * 0.74, 0.97, bb, _shade(col, 0.8))
    plate_rng = np.random.default_rng(look.plate_seed)
    c.rect(0.39, fy + fh * 0.78, 0.61, bb - fh * 0.04, (230, 230, 230))
    for i in range(6):
        if plate_rng.random() < 0.9:
            x = 0.405 + i * 0.034
            c.rect(x, fy + fh * 0.81, x + 0.022, bb - fh * 0.07, (30, 30, 30))
    if body.bull_bar:
        c.line(0.27, gy1 - fh * 0.05, 0.27, bb, (25, 25, 25), 0.03)
        c.line(0.73, gy1 - fh * 0.05, 0.73, bb, (25, 25, 25), 0.03)
        c.line(0.27, gy1 - fh * 0.05, 0.73, gy1 - fh * 0.05, (25, 25, 25), 0.03)
    # badge goes last so nothing covers it
    _badge(c, look.brand, 0.5, gy1 + (gy2 - gy1) * 0.12 if look.brand.grille_shape != "bar" else gy1 + fh * 0.05, 0.035)
    img, mask = c.finish(width, height)
    frontal = (int(0.03 * width), int(round((ch - 0.01) * height)), int(round(0.97 * width)), int(round(bb * height)))
    return Sprite(img, mask, frontal)


def draw_background(rng: np.random.Generator, width: int, height: int) -> tuple[Image, int]:
    """A fuel-station lane seen by a fixed camera. Returns the image and the horizon row."""
    horizon = int(height * rng.uniform(0.30, 0.40))
    wall = np.array(rng.integers(90, 200, 3), np.float64)
    asphalt = rng.uniform(70, 120)
    rows = np.arange(height, dtype=np.float64)[:, None]
    upper = wall * (0.85 + 0.25 * rows / max(1, horizon))
    lower = asphalt * (0.85 + 0.3 * (rows - horizon) / max(1, height - horizon)) + np.array([4.0, 2.0, 0.0])
    column = np.clip(np.where(rows < horizon, upper, lower), 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(column[:, None, :], width, axis=1))
    # canopy edge and pillars
    canopy = tuple(int(v) for v in rng.integers(30, 230, 3))
    cv2.rectangle(img, (0, 0), (width, int(horizon * 0.25)), canopy, -1)
    for x in rng.integers(0, width, 2):
        cv2.rectangle(img, (int(x), int(horizon * 0.25)), (int(x) + width // 40, horizon), (200, 200, 200), -1)
    # lane markings converging to a vanishing point
    vx = width * rng.uniform(0.4, 0.6)
    for lane in (-0.45, 0.45):
        cv2.line(img, (int(vx), horizon), (int(width * (0.5 + lane)), height), (215, 215, 215), 3, cv2.LINE_AA)
    # a pump island on one side
    side = rng.choice([0.06, 0.80])
    px = int(width * side)
    py = int(horizon + (height - horizon) * 0.15)
    cv2.rectangle(img, (px, py), (px + width // 7, height), (60, 60, 60), -1)
    cv2.rectangle(img, (px + width // 40, py - height // 5), (px + width // 9, py + 10), (40, 40, 170), -1)
    cv2.rectangle(img, (px + width // 28, py - height // 6), (px + width // 11, py - height // 10), (30, 200, 30), -1)
    # oil stains and texture
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(horizon, height))
        axes = (int(rng.integers(8, 40)), int(rng.integers(4, 15)))
        cv2.ellipse(img, (cx, cy), axes, 0, 0, 360, (45, 45, 48), -1, cv2.LINE_AA)
    texture = rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(4.0)
    return np.clip(img + texture, 0, 255).astype(np.uint8), horizon


def composite(frame: Image, sprite: Sprite, x: int, y: int) -> tuple[int, int, int, int] | None:
    """Blend `sprite` into `frame` with its top-left at (x, y); returns the visible box or None."""
    fh, fw = frame.shape[:2]
    sh, sw = sprite.image.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + sw), min(fh, y + sh)
    if x2 <= x1 or y2 <= y1:
        return None
    sx1, sy1 = x1 - x, y1 - y
    region = frame[y1:y2, x1:x2].astype(np.float32)
    alpha = sprite.mask[sy1:sy1 + (y2 - y1), sx1:sx1 + (x2 - x1), None]
    src = sprite.image[sy1:sy1 + (y2 - y1), sx1:sx1 + (x2 - x1)].astype(np.float32)
    frame[y1:y2, x1:x2] = (region * (1 - alpha) + src * alpha).astype(np.uint8)
    return x1, y1, x2, y2


def apply_camera(img: Image, gain: float, tint: tuple[float, float, float], noise: float,
                 rng: np.random.Generator) -> Image:
    """What the camera adds: exposure (`gain`), white balance (`tint`) and sensor noise."""
    scale = np.array(tint, np.float32) * np.float32(gain)
    out = img.astype(np.float32) * scale + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)
