"""Compose one MGRS-mini scene (which objects, where) and render it onto a real background.

The scene's object list is the ground truth every question is derived from.
Boxes are measured from the rendered pixels (the tight box of each object's
footprint), so they are exact by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from skymoe.data.cda import PALETTE
from skymoe.data.mgrs_mini.backgrounds import BackgroundPool
from skymoe.data.mgrs_mini.catalogue import CATEGORIES, REFERENCE_SIZE, SCENE_OF_DOMINANT, Category
from skymoe.data.mgrs_mini.shapes import BUILDERS, place

WATER_RGB = np.array([38, 62, 82], dtype=np.float32)
SHADOW_DARKEN = 0.55
DETAIL_SHADE = 0.9  # detail polygons: dark enough to see, light enough to keep the colour name (see tests)
MIDLINE_CLEARANCE = 3  # px: object centres keep off the image mid-lines, so quadrant membership is unambiguous
_GAP = 2  # px between the placement boxes of two objects: boxes never overlap
_PLACEMENT_TRIES = 40


@dataclass
class SceneObject:
    category: str
    colour: str
    box: tuple[int, int, int, int]  # tight pixel box xyxy (x2, y2 exclusive = continuous coordinates)
    angle: float  # heading in degrees, counter-clockwise from east
    length: float
    width: float

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def area(self) -> int:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)

    def to_dict(self) -> dict:
        return {"category": self.category, "colour": self.colour, "box": list(self.box),
                "angle": round(self.angle, 2), "length": round(self.length, 2), "width": round(self.width, 2)}


@dataclass
class Scene:
    id: str
    size: int
    scene_class: str
    objects: list[SceneObject]
    background: str
    background_window: tuple[int, int, int, int]
    water: tuple[int, int, int, int] | None = None  # xyxy of the water band, if any
    split: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "size": self.size, "scene_class": self.scene_class,
                "background": self.background, "background_window": list(self.background_window),
                "water": list(self.water) if self.water else None, "objects": [o.to_dict() for o in self.objects]}


@dataclass
class _Planned:
    category: Category
    colour: str
    centre: tuple[float, float]
    angle: float
    length: float
    width: float
    body: list[np.ndarray]
    detail: list[np.ndarray]
    extent: tuple[float, float, float, float]  # xyxy of the polygons' vertices


def scene_class_of(objects: list[SceneObject]) -> str:
    """The scene type: named after the category with the most instances (strict maximum)."""
    counts = {c.name: 0 for c in CATEGORIES}
    for o in objects:
        counts[o.category] += 1
    top = max(counts.values())
    leaders = [name for name, n in counts.items() if n == top]
    if len(leaders) != 1:
        raise ValueError(f"no single dominant category among {counts}")
    return SCENE_OF_DOMINANT[leaders[0]]


def compose_scene(scene_id: str, rng: np.random.Generator, pool: BackgroundPool) -> tuple[Scene, np.ndarray, np.ndarray]:
    """Draw a scene from ``rng``.

    Returns its ground truth, its RGB pixels [H, W, 3] uint8 and the label map
    [H, W] (0 = background, k = footprint of ``scene.objects[k - 1]``).
    """
    size = pool.size
    while True:  # a plan whose dominant category did not fit is re-drawn (rare; still deterministic)
        dominant = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        plan = _plan_counts(dominant, rng)
        water = _water_band(size, rng, harbour=dominant.on_water) if any(c.on_water for c, _ in plan) else None
        placed = _place_all(plan, size, water, rng)
        if sum(p.category is dominant for p in placed) >= 2:
            break
    crop = pool.crop(rng)
    pixels, label, objects = _render(crop.pixels, placed, water, rng)
    scene = Scene(scene_id, size, scene_class_of(objects), objects, crop.source, crop.window, water)
    return scene, pixels, label


def _plan_counts(dominant: Category, rng: np.random.Generator) -> list[tuple[Category, int]]:
    """Dominant category first with 3-6 instances, then 1-3 others with fewer each.

    The first of the others has a single instance, so every scene has an object
    that "the <category>" names uniquely (grounding and colour questions need one).
    """
    n_dom = int(rng.integers(3, 7))
    others = [c for c in CATEGORIES if c is not dominant]
    chosen = rng.choice(len(others), size=int(rng.integers(1, 4)), replace=False)
    counts = [1] + [int(rng.integers(1, n_dom)) for _ in chosen[1:]]
    return [(dominant, n_dom)] + [(others[i], n) for i, n in zip(chosen, counts)]


def _water_band(size: int, rng: np.random.Generator, harbour: bool) -> tuple[int, int, int, int]:
    depth = int(size * rng.uniform(0.45, 0.6) if harbour else size * rng.uniform(0.3, 0.42))
    side = int(rng.integers(4))
    return [(0, 0, depth, size), (size - depth, 0, size, size), (0, 0, size, depth), (0, size - depth, size, size)][side]


def _place_all(plan, size: int, water, rng: np.random.Generator) -> list[_Planned]:
    placed: list[_Planned] = []
    dominant_placed = None
    for category, target in plan:
        if dominant_placed is not None:  # keep the dominant category a strict maximum
            target = min(target, dominant_placed - 1)
        n = 0
        for _ in range(target):
            obj = _place_one(category, size, water, placed, rng)
            if obj is not None:
                placed.append(obj)
                n += 1
        if dominant_placed is None:
            dominant_placed = n
    return placed


def _place_one(category: Category, size: int, water, placed: list[_Planned], rng: np.random.Generator) -> _Planned | None:
    scale = size / REFERENCE_SIZE
    length = rng.uniform(*category.length) * scale
    width = length if category.shape == "tank" else rng.uniform(*category.width) * scale
    angle = float(rng.uniform(0, 360)) if category.rotates else 0.0
    colour = category.colours[int(rng.integers(len(category.colours)))]
    body, detail = BUILDERS[category.shape](length, width, rng)
    for _ in range(_PLACEMENT_TRIES):
        centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
        moved = place(body, centre, angle)
        v = np.concatenate(moved)
        extent = (float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max()))
        if _fits(extent, size, category, water, placed):
            return _Planned(category, colour, centre, angle, length, width, moved, place(detail, centre, angle), extent)
    return None


def _fits(extent, size: int, category: Category, water, placed: list[_Planned]) -> bool:
    x1, y1, x2, y2 = extent
    if x1 < 1 or y1 < 1 or x2 > size - 1 or y2 > size - 1:
        return False
    cx, cy, mid = (x1 + x2) / 2, (y1 + y2) / 2, size / 2
    if abs(cx - mid) < MIDLINE_CLEARANCE or abs(cy - mid) < MIDLINE_CLEARANCE:
        return False
    in_water = water is not None and x1 >= water[0] and y1 >= water[1] and x2 <= water[2] and y2 <= water[3]
    touches_water = water is not None and x1 < water[2] and water[0] < x2 and y1 < water[3] and water[1] < y2
    if (category.on_water and not in_water) or (not category.on_water and touches_water):
        return False
    return not any(
        x1 - _GAP < p.extent[2] and p.extent[0] < x2 + _GAP and y1 - _GAP < p.extent[3] and p.extent[1] < y2 + _GAP for p in placed
    )


def _render(background: np.ndarray, placed: list[_Planned], water, rng: np.random.Generator):
    """Water, then shadows, then the objects; one label map gives every object's exact footprint."""
    size = background.shape[0]
    img = background.astype(np.float32)
    if water is not None:
        x1, y1, x2, y2 = water
        texture = img[y1:y2, x1:x2].mean(axis=2, keepdims=True)  # keep a trace of the real texture: waves, not paint
        img[y1:y2, x1:x2] = 0.85 * WATER_RGB + 0.15 * texture
    sun = rng.uniform(0, 2 * np.pi)
    shadow = Image.new("L", (size, size), 0)
    labels = Image.new("L", (size, size), 0)
    details = Image.new("L", (size, size), 0)
    draw_shadow, draw_label, draw_detail = ImageDraw.Draw(shadow), ImageDraw.Draw(labels), ImageDraw.Draw(details)
    for k, p in enumerate(placed, start=1):
        offset = p.category.shadow * max(p.length, p.width) * np.array([np.cos(sun), np.sin(sun)])
        for poly in p.body:
            draw_shadow.polygon([tuple(v) for v in poly + offset], fill=1)
            draw_label.polygon([tuple(v) for v in poly], fill=k)
        for poly in p.detail:
            draw_detail.polygon([tuple(v) for v in poly], fill=1)
    label = np.asarray(labels)
    img[np.asarray(shadow).astype(bool)] *= SHADOW_DARKEN
    lut = np.zeros((len(placed) + 1, 3), dtype=np.float32)
    for k, p in enumerate(placed, start=1):
        lut[k] = np.array(PALETTE[p.colour], dtype=np.float32) * rng.uniform(0.95, 1.03)
    on_object = label > 0
    shade = np.where(np.asarray(details).astype(bool) & on_object, DETAIL_SHADE, 1.0)[..., None]
    noise = rng.integers(-6, 7, size=img.shape).astype(np.float32)
    img = np.where(on_object[..., None], lut[label] * shade + noise, img)
    objects = []
    for k, p in enumerate(placed, start=1):
        ys, xs = np.nonzero(label == k)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SceneObject(p.category.name, p.colour, box, p.angle, p.length, p.width))
    return np.clip(img, 0, 255).astype(np.uint8), label, objects

