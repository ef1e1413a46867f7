"""Outlines of the catalogue's objects as polygons, seen from above.

Each builder returns ``(body, detail)``: lists of ``[K, 2]`` vertex arrays in
object coordinates (centre at the origin, long axis along +x, pixels). The body
polygons are the object's footprint; detail polygons (a roof ridge, a
windshield, a ship's bridge) are drawn slightly darker on top of the body.
Polygons rather than sprites keep the shapes exact at any scene size and make
rotation one matrix product.
"""
from __future__ import annotations

import numpy as np

Polygons = list[np.ndarray]


def _rect(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def _circle(cx: float, cy: float, r: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def building(length: float, width: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    ridge = max(1.0, 0.12 * width)
    return [_rect(-length / 2, -width / 2, length / 2, width / 2)], [_rect(-length / 2, -ridge / 2, length / 2, ridge / 2)]


def vehicle(length: float, width: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    return [_rect(-length / 2, -width / 2, length / 2, width / 2)], [_rect(0.1 * length, -width / 2, 0.3 * length, width / 2)]


def tank(length: float, width: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    r = length / 2
    return [_circle(0, 0, r)], [_circle(0, 0, 0.35 * r, 12)]


def ship(length: float, width: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    half_l, half_w = length / 2, width / 2
    hull = np.array([[-half_l, -half_w], [0.25 * length, -half_w], [half_l, 0], [0.25 * length, half_w], [-half_l, half_w]])
    bridge = _rect(-0.4 * length, -0.3 * width, -0.15 * length, 0.3 * width)
    return [hull], [bridge]


def aircraft(length: float, span: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    half_f = max(1.5, 0.08 * length)  # fuselage half-width; at least 3 px wide so it never vanishes
    fuselage = np.array([[-length / 2, -half_f], [0.35 * length, -half_f], [length / 2, 0], [0.35 * length, half_f], [-length / 2, half_f]])
    wings = np.array([[0.15 * length, -half_f], [-0.1 * length, -span / 2], [-0.22 * length, -span / 2], [-0.08 * length, 0],
                      [-0.22 * length, span / 2], [-0.1 * length, span / 2], [0.15 * length, half_f]])
    tail = _rect(-length / 2, -0.18 * span, -0.38 * length, 0.18 * span)
    return [fuselage, wings, tail], [_rect(0.2 * length, -half_f / 2, 0.35 * length, half_f / 2)]


def trees(length: float, width: float, rng: np.random.Generator) -> tuple[Polygons, Polygons]:
    """A clump of 3-6 overlapping crowns inside a length x width ellipse."""
    n = int(rng.integers(3, 7))
    r = 0.3 * min(length, width)
    t = rng.uniform(0, 2 * np.pi, n)
    rho = rng.uniform(0, 1, n) ** 0.5
    cx, cy = (length / 2 - r) * rho * np.cos(t), (width / 2 - r) * rho * np.sin(t)
    crowns = [_circle(x, y, r * s, 14) for x, y, s in zip(cx, cy, rng.uniform(0.8, 1.0, n))]
    return crowns, crowns[: n // 2]  # half the crowns shaded: a clump, not a blob


BUILDERS = {"building": building, "vehicle": vehicle, "tank": tank, "ship": ship, "aircraft": aircraft, "trees": trees}


def place(polygons: Polygons, centre: tuple[float, float], angle_deg: float) -> Polygons:
    """Rotate object-frame polygons by ``angle_deg`` (counter-clockwise on the map) and move them to ``centre``."""
    a = np.deg2rad(angle_deg)
    # image y points down, so a map-counter-clockwise turn negates the sine terms
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    shift = np.asarray(centre, dtype=np.float64)
    return [p @ rot + shift for p in polygons]
