"""The vehicle catalogue of the synthetic world: brands and body types.

Brands are fictional on purpose: the stand-in models must never be mistaken for the real
(private) ones. Each brand differs from every other in at least two cues a small classifier can
see on a low-resolution front crop: grille shape, grille pattern, grille finish, badge shape
and badge colour. Body types differ in silhouette (height/width ratio, cabin shape, clearance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Bgr = tuple[int, int, int]

GrilleShape = Literal["hexagon", "wide_rect", "kidney", "trapezoid", "oval", "split", "tall_rect", "bar"]
GrillePattern = Literal["mesh", "h_bars", "v_bars", "dots", "diamond", "solid"]
BadgeShape = Literal["circle", "oval", "diamond", "star", "triangle", "shield", "cross", "ring"]
LightShape = Literal["slim", "rect", "round", "angular", "twin_round", "tall_rect"]


@dataclass(frozen=True)
class Brand:
    name: str
    grille_shape: GrilleShape
    grille_pattern: GrillePattern
    grille_finish: Bgr  # colour of the grille frame and pattern
    grille_fill: Bgr  # colour behind the pattern
    badge_shape: BadgeShape
    badge_colour: Bgr
    light_shape: LightShape


@dataclass(frozen=True)
class BodyType:
    name: str
    aspect: float  # sprite height / width
    cabin_height: float  # share of the sprite height taken by roof + windshield
    roof_width: float  # top edge of the cabin, share of the sprite width
    cabin_width: float  # bottom edge of the cabin
    bumper_bottom: float  # where the body ends and the wheels show, share of height
    wheel_width: float
    roof_rails: bool = False
    bull_bar: bool = False


CHROME: Bgr = (205, 205, 200)
BLACK: Bgr = (28, 28, 30)
GOLD: Bgr = (60, 170, 215)

BRANDS: tuple[Brand, ...] = (
    Brand("Aurex", "hexagon", "mesh", BLACK, (10, 10, 12), "circle", (200, 90, 20), "slim"),
    Brand("Borvik", "wide_rect", "h_bars", CHROME, (40, 40, 40), "oval", (200, 200, 200), "rect"),
    Brand("Castell", "kidney", "v_bars", CHROME, (20, 20, 20), "ring", (230, 160, 40), "twin_round"),
    Brand("Delmar", "trapezoid", "dots", (60, 60, 65), (15, 15, 15), "diamond", (40, 40, 220), "angular"),
    Brand("Elvora", "oval", "h_bars", GOLD, (30, 25, 20), "star", GOLD, "round"),
    Brand("Fenwick", "split", "diamond", CHROME, (25, 35, 25), "triangle", (60, 170, 40), "angular"),
    Brand("Gantry", "tall_rect", "v_bars", BLACK, (70, 70, 70), "shield", (20, 120, 240), "tall_rect"),
    Brand("Hollis", "bar", "solid", CHROME, (0, 0, 0), "cross", (40, 40, 210), "slim"),
)

BODY_TYPES: tuple[BodyType, ...] = (
    BodyType("Sedan", aspect=0.62, cabin_height=0.40, roof_width=0.58, cabin_width=0.86,
             bumper_bottom=0.90, wheel_width=0.13),
    BodyType("SUV", aspect=0.86, cabin_height=0.42, roof_width=0.80, cabin_width=0.92,
             bumper_bottom=0.86, wheel_width=0.15, roof_rails=True),
    BodyType("Pickup", aspect=0.84, cabin_height=0.38, roof_width=0.60, cabin_width=0.76,
             bumper_bottom=0.84, wheel_width=0.17, bull_bar=True),
    BodyType("Van", aspect=1.08, cabin_height=0.55, roof_width=0.90, cabin_width=0.95,
             bumper_bottom=0.91, wheel_width=0.12),
    BodyType("Coupe", aspect=0.48, cabin_height=0.36, roof_width=0.38, cabin_width=0.80,
             bumper_bottom=0.90, wheel_width=0.13),
)

BODY_COLOURS: tuple[Bgr, ...] = (
    (235, 235, 235),  # white
    (30, 30, 32),  # black
    (180, 178, 175),  # silver
    (110, 110, 112),  # grey
    (40, 40, 180),  # red
    (150, 70, 30),  # blue
    (50, 90, 40),  # dark green
    (150, 185, 205),  # beige
    (30, 190, 225),  # yellow
    (90, 50, 95),  # plum
)

DETECTOR_CLASSES: tuple[str, ...] = ("Car", "Frontal")
BRAND_NAMES: tuple[str, ...] = tuple(b.name for b in BRANDS)
BODY_TYPE_NAMES: tuple[str, ...] = tuple(b.name for b in BODY_TYPES)


def brand_by_name(name: str) -> Brand:
    for brand in BRANDS:
        if brand.name == name:
            return brand
    raise KeyError(f"unknown brand {name!r}; known: {', '.join(BRAND_NAMES)}")


def body_type_by_name(name: str) -> BodyType:
    for body in BODY_TYPES:
        if body.name == name:
            return body
    raise KeyError(f"unknown body type {name!r}; known: {', '.join(BODY_TYPE_NAMES)}")
