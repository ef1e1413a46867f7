"""What MGRS-mini scenes are made of: object categories, their look, and scene types.

Sizes are in pixels of a 128-px scene and scale with the scene size. Colours
are names from :data:`skymoe.data.cda.PALETTE`, so that the colour answers this
benchmark writes are exactly the ones context-disentangled augmentation can edit.
"""
from __future__ import annotations

from dataclasses import dataclass

from skymoe.data.cda import PALETTE

REFERENCE_SIZE = 128  # the scene size the pixel dimensions below are given for


@dataclass(frozen=True)
class Category:
    name: str
    plural: str
    shape: str  # key of the shape builder in :mod:`skymoe.data.mgrs_mini.shapes`
    length: tuple[float, float]  # long side range (px at REFERENCE_SIZE)
    width: tuple[float, float]  # short side range
    colours: tuple[str, ...]
    shadow: float  # shadow length as a fraction of the object's long side (a proxy for height)
    on_water: bool = False
    rotates: bool = True


CATEGORIES: tuple[Category, ...] = (
    Category("building", "buildings", "building", (10, 16), (8, 12), ("white", "red", "orange", "blue", "black"), 0.35),
    Category("vehicle", "vehicles", "vehicle", (6, 8), (3.5, 5), ("red", "blue", "white", "black", "yellow", "orange", "purple"), 0.15),
    Category("storage tank", "storage tanks", "tank", (8, 13), (8, 13), ("white", "yellow", "green", "blue"), 0.3, rotates=False),
    Category("ship", "ships", "ship", (14, 22), (4.5, 7), ("white", "red", "orange", "yellow"), 0.1, on_water=True),
    Category("aircraft", "aircraft", "aircraft", (12, 18), (12, 18), ("white", "blue", "purple", "red"), 0.12),
    Category("tree cluster", "tree clusters", "trees", (10, 16), (9, 14), ("green",), 0.3, rotates=False),
)
CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}

# Scene type = the category with strictly the most instances (the generator guarantees a strict maximum).
SCENE_OF_DOMINANT: dict[str, str] = {
    "ship": "harbour",
    "aircraft": "airport",
    "storage tank": "industrial area",
    "building": "residential area",
    "vehicle": "parking lot",
    "tree cluster": "park",
}
SCENE_CLASSES: tuple[str, ...] = tuple(SCENE_OF_DOMINANT.values())

assert all(c in PALETTE for cat in CATEGORIES for c in cat.colours)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

