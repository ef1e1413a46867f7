"""Large scenes: tile a GeoTIFF with rasterio windows, run the Pipeline in batches, write GeoJSON.

* The raster is never read whole: each tile is one windowed read, and the
  stretch limits come from a decimated overview read, so peak memory depends
  on the tile and batch size, not on the scene size.
* ``gsd`` (metres per pixel) resamples each window so that a model tile covers
  ``tile_size * gsd`` metres on the ground whatever the sensor and CRS: the
  scene's ground pixel size is measured at its centre along x and y (on the
  WGS84 ellipsoid), so degrees, feet, Web Mercator and non-square pixels are
  handled.
* Boxes found in overlapping tiles are merged with non-maximum suppression.
* Output: one GeoJSON FeatureCollection in the raster's CRS, written as GDAL
  writes GeoJSON: coordinates in traditional GIS order (x = easting or
  longitude), the CRS named in the ``crs`` member GDAL/QGIS read (OGC CRS84 for
  lon/lat WGS84), outer rings counter-clockwise (RFC 7946). Two layers told
  apart by ``properties.layer``:
  ``detections`` (grounding boxes as polygons) and ``tiles`` (the tile grid
  with each tile's answer: caption, class or count). For counting,
  ``skymoe.count_estimate`` adds each tile's count times the share of the tile
  it owns (overlaps split at their middle), so objects in overlaps are not
  counted twice (assuming objects spread evenly within a tile); ``count_tiles``
  says how many tiles answered with a number. It is rewritten
  atomically after every batch, so an interrupted run (Ctrl-C) leaves a
  valid file holding the tiles done so far (``skymoe.complete: false``).
* Tiles with no valid pixel (nodata collars, masked areas) are not run: they
  are kept in the tile layer with ``nodata: true`` and no answer, so they add
  no phantom counts or captions (``skymoe.tiles_nodata``).
* A raster without georeferencing (no CRS, or no geotransform) is processed
  in pixel coordinates (y down), with a warning saying which part is missing.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from skymoe.data.schema import Box, Task
from skymoe.errors import ConfigError, DataError
from skymoe.infer.georef import GeoReference, georeference, ground_pixel_size
from skymoe.infer.tiles import Tile, as_is, centrality, check_tiling, nms, tile_grid

SCENE_TASKS = (Task.CAPTION, Task.GROUNDING, Task.COUNTING, Task.CLASSIFICATION)
CHECKPOINT_SECONDS = 2.0  # rewrite the output at most this often (and always at the end)


def check_scene_options(task: Task | str, query: str | None, tile_size: int, overlap: int, gsd: float | None = None, spell=as_is) -> Task:
    """The scene task, once its settings are checked (ConfigError naming the setting otherwise); see check_tiling."""
    task = Task(task)
    if task not in SCENE_TASKS:
        raise ConfigError(f"{spell('task')} {task.value}: expected one of {', '.join(t.value for t in SCENE_TASKS)}")
    if task in (Task.GROUNDING, Task.COUNTING) and not query:
        raise ConfigError(f"{spell('task')} {task.value} needs {spell('query')} (what to find or count)")
    if gsd is not None and not (math.isfinite(gsd) and gsd > 0):
        raise ConfigError(f"{spell('gsd')} {gsd} must be a positive ground resolution in metres/pixel")
    check_tiling(tile_size, overlap, spell)
    return task


@dataclass
class SceneOutput:
    """The GeoJSON being built; ``write`` replaces the file atomically."""

    path: Path
    georef: GeoReference
    meta: dict
    tiles: list[dict] = field(default_factory=list)
    detections: list[tuple[Box, float, int]] = field(default_factory=list)  # box (scene px), score, tile index
    merge_threshold: float = 0.5  # intersection over the smaller box

    def add(self, tile: Tile, image, answer) -> None:
        """One tile's feature and boxes; ``answer`` None for a tile without valid pixels (not run)."""
        self.tiles.append(_tile_feature(tile, answer, self.georef))
        if answer is None:
            return
        # back through the resize this image actually got (edge tiles round differently)
        sx, sy = tile.width / image.width, tile.height / image.height
        for b in answer.boxes:
            box = Box(tile.x + b.x1 * sx, tile.y + b.y1 * sy, tile.x + b.x2 * sx, tile.y + b.y2 * sy, self.meta["query"])
            self.detections.append((box, centrality(box, tile), tile.index))

    def merged(self) -> list[tuple[Box, float, int]]:
        if not self.detections:
            return []
        boxes = np.array([d[0].as_tuple() for d in self.detections], dtype=float)
        scores = np.array([d[1] for d in self.detections], dtype=float)
        return [self.detections[i] for i in nms(boxes, scores, self.merge_threshold, metric="ios")]

    def count_summary(self) -> dict:
        """``count_estimate`` (owned shares summed) and ``count_tiles`` (tiles whose answer held a number).

        A tile without a number adds nothing to the estimate: compare ``count_tiles`` with ``tiles_done - tiles_nodata``.
        """
        counted = [t["properties"]["count_owned"] for t in self.tiles if "count_owned" in t["properties"]]
        return {"count_estimate": round(sum(counted), 2), "count_tiles": len(counted)}

    def feature_collection(self, complete: bool) -> dict:
        features = [
            {
                "type": "Feature",
                "geometry": self.georef.polygon(*box.as_tuple()),
                "properties": {"layer": "detections", "label": box.label, "score": round(score, 4), "tile": tile,
                               "pixel_xyxy": [round(v, 2) for v in box.as_tuple()]},
            }
            for box, score, tile in self.merged()
        ]
        summary = {**self.meta, "complete": complete, "tiles_done": len(self.tiles), "detections": len(features),
                   "tiles_nodata": sum(1 for t in self.tiles if t["properties"].get("nodata")), "georeferenced": self.georef.georeferenced}
        if self.meta.get("task") == Task.COUNTING.value:
            summary.update(self.count_summary())
        collection = {
            "type": "FeatureCollection",
            "skymoe": summary,
            "features": features + self.tiles,
        }
        crs = self.georef.crs_member()
        if crs is not None:
            collection["crs"] = crs
        return collection

    def write(self, complete: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.feature_collection(complete)), encoding="utf-8")
        os.replace(tmp, self.path)


@dataclass
class SceneResult:
    path: Path
    tiles: int
    tiles_done: int
    detections: int
    complete: bool
    georeferenced: bool
    seconds: float
    count_estimate: float | None = None  # counting: the scene total (see SceneOutput.count_summary)


def _source_tile(georef: GeoReference, info, tile_size: int, gsd: float | None, scene: str) -> tuple[int, int]:
    """Source pixels per tile (x, y) so that the model tile has ground resolution ``gsd`` along both axes."""
    if gsd is None:
        return tile_size, tile_size
    if not georef.georeferenced:
        raise DataError(f"gsd={gsd} m needs a georeferenced scene (a CRS and a geotransform)", file=scene, field="gsd")
    pixel_x, pixel_y = ground_pixel_size(georef, info.width, info.height)
    return max(1, round(tile_size * gsd / pixel_x)), max(1, round(tile_size * gsd / pixel_y))


@dataclass
class _TileJob:
    """What every tile of a scene run is read and asked with."""

    scene: str
    task: Task
    query: str | None
    labels: Sequence[str] | None
    tile_size: int
    source: tuple[int, int]  # source pixels per tile, x and y
    bands: Sequence[int] | None
    limits: list | None  # the scene-wide stretch

    def run(self, pipeline, batch: list[Tile]) -> list[tuple[Tile, object, object]]:
        """(tile, model image, answer) per tile in order; (tile, None, None) for a tile without valid pixels, which is not run."""
        from skymoe.data.imagery import read_window, valid_fraction

        valid = [t for t in batch if valid_fraction(self.scene, t.x, t.y, t.width, t.height, bands=self.bands) > 0]
        images = [_resampled(read_window(self.scene, t.x, t.y, t.width, t.height, bands=self.bands, limits=self.limits),
                             self.tile_size, self.source) for t in valid]
        answers = pipeline.run(images, self.task, self.query, labels=self.labels) if images else []
        ran = {t.index: (image, answer) for t, image, answer in zip(valid, images, answers)}
        return [(t, *ran.get(t.index, (None, None))) for t in batch]


def _resampled(image, tile_size: int, source: tuple[int, int]):
    """A window at the model's ground resolution: each axis scaled by tile_size / source side."""
    if source == (tile_size, tile_size):
        return image
    size = (max(1, round(image.width * tile_size / source[0])), max(1, round(image.height * tile_size / source[1])))
    return image.resize(size)


def _tile_feature(tile: Tile, answer, georef: GeoReference) -> dict:
    """The tile-layer feature; ``answer`` None: a tile without valid pixels, which was not run."""
    properties = {"layer": "tiles", "tile": tile.index, "row": tile.row, "col": tile.col, "answer": answer and answer.text,
                  "window": [tile.x, tile.y, tile.width, tile.height]}
    if answer is None:
        properties["nodata"] = True
    elif answer.count is not None:
        # The tile's count spread evenly over the window; the owned share adds up over the scene.
        properties["count"] = answer.count
        properties["count_owned"] = round(answer.count * tile.core_fraction, 4)
    return {"type": "Feature", "geometry": georef.polygon(tile.x, tile.y, tile.x + tile.width, tile.y + tile.height), "properties": properties}


def run_scene(
    pipeline,
    scene: str | Path,
    out: str | Path,
    *,
    task: Task | str,
    query: str | None = None,
    labels: Sequence[str] | None = None,
    tile_size: int = 512,
    overlap: int = 64,
    gsd: float | None = None,
    bands: Sequence[int] | None = None,
    batch_size: int | None = None,
    merge_threshold: float = 0.5,
    progress: bool = True,
) -> SceneResult:
    """Run ``task`` over every tile of ``scene`` and write GeoJSON to ``out`` (see the module notes).

    ``bands`` (1-based RGB bands of the scene) defaults to the pipeline's.
    """
    from tqdm.auto import tqdm

    from skymoe.data.imagery import raster_info, scene_limits

    task = check_scene_options(task, query, tile_size, overlap, gsd)
    scene, started = str(scene), time.perf_counter()
    info = raster_info(scene)
    georef = georeference(info, scene)
    source = _source_tile(georef, info, tile_size, gsd, scene)
    # overlap < tile_size is checked above; the clamp only catches rounding on tiny source tiles (large gsd)
    tiles = tile_grid(info.width, info.height, source, tuple(min(round(overlap * side / tile_size), side - 1) for side in source))
    bands = list(bands) if bands is not None else pipeline.bands
    meta = {"scene": Path(scene).name, "task": task.value, "query": query, "tiles": len(tiles), "tile_size": tile_size,
            "source_tile": source[0] if source[0] == source[1] else list(source), "gsd": gsd, "bands": bands}
    output = SceneOutput(Path(out), georef, meta, merge_threshold=merge_threshold)
    job = _TileJob(scene, task, query, labels, tile_size, source, bands, scene_limits(scene, bands=bands))
    batch_size = batch_size or pipeline.batch_size
    complete, last_write = False, time.monotonic()
    try:
        with tqdm(total=len(tiles), desc=f"scene {task.value}", unit="tile", disable=not progress) as bar:
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start : start + batch_size]
                for tile, image, answer in job.run(pipeline, batch):
                    output.add(tile, image, answer)
                bar.update(len(batch))
                if time.monotonic() - last_write >= CHECKPOINT_SECONDS:
                    output.write(complete=False)
                    last_write = time.monotonic()
        complete = True
    finally:  # Ctrl-C or an error: what is done so far is still written, marked incomplete
        output.write(complete=complete)
    return SceneResult(Path(out), len(tiles), len(output.tiles), len(output.merged()), complete, georef.georeferenced,
                       time.perf_counter() - started, output.count_summary()["count_estimate"] if task == Task.COUNTING else None)
