"""Facts about a scene that questions are built from: regions, membership, unique references.

Conventions (written down because every answer depends on them):

* an object is *in* a region when its box centre lies strictly inside the region;
* quadrants are the four halves-by-halves of the image; the generator keeps
  object centres off the mid-lines, so every object is in exactly one quadrant;
* region boxes are chosen on the 0-100 grid of the canonical box text, so the
  text a question shows is the region the answer was computed for, and no object
  centre lies within a few pixels of a region edge;
* A is *left of* B when A's centre is left of B's by at least
  :data:`POSITION_MARGIN` of the image width (likewise right/above/below);
  position questions are only asked where that margin holds one way or the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skymoe.data.mgrs_mini.scene import MIDLINE_CLEARANCE, SceneObject

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
POSITION_MARGIN = 0.1
# relation -> (axis, sign): "A <relation> B" holds when sign * (B - A) along the axis is positive
RELATIONS = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Region:
    """A part of the image: a named quadrant or a box on the 0-100 grid."""

    grid: tuple[int, int, int, int]  # 0-100 xyxy
    quadrant: str | None = None

    def pixels(self, size: int) -> tuple[float, float, float, float]:
        return tuple(v * size / 100 for v in self.grid)  # type: ignore[return-value]

    def contains(self, obj: SceneObject, size: int) -> bool:
        x1, y1, x2, y2 = self.pixels(size)
        cx, cy = obj.centre
        return x1 < cx < x2 and y1 < cy < y2


def quadrant_region(name: str) -> Region:
    col, row = QUADRANTS.index(name) % 2, QUADRANTS.index(name) // 2
    return Region((50 * col, 50 * row, 50 * col + 50, 50 * row + 50), quadrant=name)


def quadrant_of(obj: SceneObject, size: int) -> str:
    cx, cy = obj.centre
    return QUADRANTS[(2 if cy > size / 2 else 0) + (1 if cx > size / 2 else 0)]


def random_box_region(objects: list[SceneObject], size: int, rng: np.random.Generator, tries: int = 20) -> Region | None:
    """A 40-70 % wide box region with no object centre near its edges, or None."""
    for _ in range(tries):
        w, h = (int(v) for v in rng.integers(40, 71, size=2))
        x1, y1 = int(rng.integers(0, 101 - w)), int(rng.integers(0, 101 - h))
        region = Region((x1, y1, x1 + w, y1 + h))
        px = region.pixels(size)
        if all(_clear_of_edges(o.centre, px) for o in objects):
            return region
    return None


def _clear_of_edges(centre: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    cx, cy = centre
    return all(abs(c - e) >= MIDLINE_CLEARANCE for c, e in ((cx, box[0]), (cx, box[2]), (cy, box[1]), (cy, box[3])))


def in_region(objects: list[SceneObject], region: Region | None, size: int) -> list[int]:
    return [i for i, o in enumerate(objects) if region is None or region.contains(o, size)]


def count_by_category(objects: list[SceneObject], indices: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in indices:
        counts[objects[i].category] = counts.get(objects[i].category, 0) + 1
    return counts


@dataclass(frozen=True)
class Reference:
    """A description that picks out one object: category plus optional colour / quadrant / 'largest'.

    'largest' compares box areas and only counts when the largest is at least
    1.5 times the next one.
    """

    category: str
    colour: str | None = None
    quadrant: str | None = None
    largest: bool = False

    def text(self) -> str:
        words = ["the", "largest" if self.largest else "", self.colour or "", self.category]
        phrase = " ".join(w for w in words if w)
        return f"{phrase} in the {self.quadrant} quadrant" if self.quadrant else phrase

    def matches(self, objects: list[SceneObject], size: int) -> list[int]:
        """Indices of the objects this description fits (a unique reference fits exactly one)."""
        hits = [
            i
            for i, o in enumerate(objects)
            if o.category == self.category
            and (self.colour is None or o.colour == self.colour)
            and (self.quadrant is None or quadrant_of(o, size) == self.quadrant)
        ]
        if self.largest and hits:
            areas = sorted((objects[i].area for i in hits), reverse=True)
            if len(areas) > 1 and areas[0] < 1.5 * areas[1]:  # 'largest' only when clearly the largest
                return hits
            hits = [max(hits, key=lambda i: objects[i].area)]
        return hits

    def to_dict(self) -> dict:
        return {"category": self.category, "colour": self.colour, "quadrant": self.quadrant, "largest": self.largest}


def unique_references(index: int, objects: list[SceneObject], size: int, *, with_colour: bool = True) -> list[Reference]:
    """Every description from the simplest forms that refers to ``objects[index]`` alone."""
    obj = objects[index]
    colours = (None, obj.colour) if with_colour else (None,)
    candidates = [Reference(obj.category, c, q) for q in (None, quadrant_of(obj, size)) for c in colours]
    candidates.append(Reference(obj.category, largest=True))
    return [r for r in candidates if r.matches(objects, size) == [index]]


def relation_holds(a: SceneObject, b: SceneObject, relation: str, size: int) -> bool | None:
    """True/False when the centres are separated by the margin along the relation's axis; None when too close."""
    axis, sign = RELATIONS[relation]
    delta = (b.centre[axis] - a.centre[axis]) * sign
    if abs(delta) < POSITION_MARGIN * size:
        return None
    return delta > 0
