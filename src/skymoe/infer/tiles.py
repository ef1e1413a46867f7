"""Tiling a large raster: the grid of overlapping windows, and merging the boxes found in them.

Each tile owns the part of its window nearer to its own centre than to a neighbour's, so per-tile
counts add up without counting overlaps twice; boxes seen twice in an overlap are merged by
non-maximum suppression, keeping the one furthest from a tile border.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skymoe.data.schema import Box
from skymoe.errors import ConfigError


def as_is(name: str) -> str:
    """A setting's name as written in code (the default ``spell``: the CLI spells them as options)."""
    return name


def check_tiling(tile_size: int, overlap: int, spell=as_is) -> None:
    """ConfigError unless a tile is at least a pixel and each step at least one (0 <= overlap < tile_size).

    ``spell`` shows a parameter name the way the caller's user knows it (the CLI: ``tile_size`` -> ``--tile-size``).
    """
    if tile_size < 1:
        raise ConfigError(f"{spell('tile_size')} {tile_size} must be at least 1 pixel")
    if overlap < 0:
        raise ConfigError(f"{spell('overlap')} {overlap} must be 0 or more")
    if overlap >= tile_size:
        raise ConfigError(f"{spell('overlap')} {overlap} must be smaller than {spell('tile_size')} {tile_size}")


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    x: int  # source-pixel window
    y: int
    width: int
    height: int
    core_fraction: float = 1.0  # share of the tile that no other tile owns (see tile_grid)


def _core_lengths(starts: list[int], size: int, length: int) -> list[float]:
    """Per tile along one axis, the length of the part it owns: overlaps are split at their middle."""
    cuts = [0.0] + [(s + prev + size) / 2 for prev, s in zip(starts, starts[1:])] + [float(length)]
    return [end - begin for begin, end in zip(cuts, cuts[1:])]


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Fewest window starts covering ``length`` with steps <= ``stride``, spread evenly from 0 to the border."""
    if length <= size:
        return [0]
    steps = math.ceil((length - size) / stride)
    return [round(i * (length - size) / steps) for i in range(steps + 1)]


def tile_grid(width: int, height: int, tile: int | tuple[int, int], overlap: int | tuple[int, int]) -> list[Tile]:
    """Windows of ``tile`` source pixels overlapping by at least ``overlap`` that cover the raster.

    ``tile`` and ``overlap`` are one size for both axes or (x, y) pairs. Each tile owns the part of
    its window nearer to its own centre than to a neighbour's (overlaps split at their middle): the
    owned parts partition the raster, so per-tile counts weighted by ``core_fraction`` add up without
    counting the overlaps twice.
    """
    (size_x, size_y), (overlap_x, overlap_y) = _pair(tile), _pair(overlap)
    check_tiling(size_x, overlap_x)
    check_tiling(size_y, overlap_y)
    tile_w, tile_h = min(size_x, width), min(size_y, height)
    ys, xs = _starts(height, size_y, size_y - overlap_y), _starts(width, size_x, size_x - overlap_x)
    core_h, core_w = _core_lengths(ys, tile_h, height), _core_lengths(xs, tile_w, width)
    tiles = []
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            fraction = core_w[col] * core_h[row] / (tile_w * tile_h)
            tiles.append(Tile(len(tiles), row, col, x, y, tile_w, tile_h, fraction))
    return tiles


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, metric: str = "iou") -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first).

    ``metric="ios"`` (intersection over the smaller box, as SAHI merges tiles) also
    removes the clipped part of an object that a tile border cut, which IoU keeps.
    Hand-written: torchvision (which has NMS) is not a dependency here; its wheels pull a CUDA build.
    """
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order:
        i, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(i))
        if not rest.size:
            break
        ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        denominator = np.minimum(areas[i], areas[rest]) if metric == "ios" else areas[i] + areas[rest] - inter
        overlap = inter / np.maximum(denominator, 1e-12)
        order = [int(j) for j in rest[overlap <= threshold]]
    return keep


def centrality(box: Box, tile: Tile) -> float:
    """How far inside its tile a box lies (0 at the edge, 1 at the centre).

    The model gives no confidence; among duplicates from overlapping tiles the
    one seen furthest from a tile border is the least likely to be cut off.
    """
    cx, cy = (box.x1 + box.x2) / 2 - tile.x, (box.y1 + box.y2) / 2 - tile.y
    margin = min(cx, tile.width - cx, cy, tile.height - cy)
    return max(0.0, 2 * margin / min(tile.width, tile.height))
