"""Cutting labelled images into chips, and the half-area rule for objects a chip border cuts.

An object cut by a chip border keeps its clipped box only when at least half of its area
(polygon area, so a diagonal ship counts by its hull, not its box) lies inside the chip;
a smaller sliver would teach the model to box fragments. The same rule applies at the
image border for vector labels reaching past the raster.
"""
from __future__ import annotations

from dataclasses import replace

from skymoe.data.convert.labelled import LabelledImage, Polygon, polygon_box

MIN_INSIDE = 0.5


def polygon_area(polygon: Polygon) -> float:
    """Shoelace area (absolute)."""
    n = len(polygon)
    return abs(sum(polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1] for i in range(n))) / 2


def clip_polygon(polygon: Polygon, rect: tuple[float, float, float, float]) -> Polygon:
    """Sutherland-Hodgman clip of a polygon to the rectangle (x1, y1, x2, y2); [] when nothing is inside."""
    x1, y1, x2, y2 = rect
    edges = (
        (lambda p: p[0] >= x1, lambda p, q: _at_x(p, q, x1)),
        (lambda p: p[0] <= x2, lambda p, q: _at_x(p, q, x2)),
        (lambda p: p[1] >= y1, lambda p, q: _at_y(p, q, y1)),
        (lambda p: p[1] <= y2, lambda p, q: _at_y(p, q, y2)),
    )
    points = list(polygon)
    for inside, cross in edges:
        if not points:
            return []
        out = []
        for i, p in enumerate(points):
            q = points[i - 1]  # the previous vertex: edge q -> p
            if inside(p):
                if not inside(q):
                    out.append(cross(q, p))
                out.append(p)
            elif inside(q):
                out.append(cross(q, p))
        points = out
    return points


def _beyond_an_edge(polygon: Polygon, rect: tuple[float, float, float, float]) -> bool:
    """Whether every vertex lies past one edge of the rectangle: clipping would leave nothing, so skip it."""
    x1, y1, x2, y2 = rect
    return (all(p[0] < x1 for p in polygon) or all(p[0] > x2 for p in polygon)
            or all(p[1] < y1 for p in polygon) or all(p[1] > y2 for p in polygon))


def _at_x(p, q, x):
    t = (x - p[0]) / (q[0] - p[0])
    return (x, p[1] + t * (q[1] - p[1]))


def _at_y(p, q, y):
    t = (y - p[1]) / (q[1] - p[1])
    return (p[0] + t * (q[0] - p[0]), y)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Chip offsets along one side: every ``tile - overlap`` pixels, the last chip flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    offsets = list(range(0, length - tile + 1, step))
    if offsets[-1] != length - tile:
        offsets.append(length - tile)
    return offsets


def crop(image: LabelledImage, window: tuple[int, int, int, int], name: str) -> LabelledImage:
    """The objects of ``image`` inside the window (x, y, w, h), in the window's pixels, by the half-area rule."""
    x, y, w, h = window
    whole = window == (0, 0, *image.size)  # the image itself: used in place, nothing to write
    chip = replace(image, name=name, size=(w, h), boxes=[], polygons=[], window=None if whole else window)
    rect = (x, y, x + w, y + h)
    for box, polygon in zip(image.boxes, image.polygons):
        if _beyond_an_edge(polygon, rect):  # most objects of a large image, for any one chip
            continue
        area = polygon_area(polygon)
        inside = clip_polygon(polygon, rect)
        if not inside or polygon_area(inside) < MIN_INSIDE * area:
            continue
        shifted = [(px - x, py - y) for px, py in inside]
        clipped = polygon_box(shifted, box.label)
        if clipped.width > 0 and clipped.height > 0:
            chip.add(clipped, shifted)
    return chip


def tile_image(image: LabelledImage, tile: int, overlap: int) -> list[LabelledImage]:
    """Chips of ``tile`` x ``tile`` pixels (the image itself when it is no larger than a chip)."""
    width, height = image.size
    if width <= tile and height <= tile:
        return [crop(image, (0, 0, width, height), image.name)]
    w, h = min(tile, width), min(tile, height)
    return [crop(image, (x, y, w, h), f"{image.name}_{x}_{y}")
            for y in starts(height, tile, overlap) for x in starts(width, tile, overlap)]
