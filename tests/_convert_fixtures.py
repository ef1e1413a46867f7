"""Small label files and images written by the converter tests (COCO, VOC, YOLO, DOTA, CSV, GeoTIFF + GeoJSON)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from skymoe.cli import main

W, H = 64, 48


def write_png(path: Path, size=(W, H), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_coco(root: Path, *, annotations=None, images=None) -> Path:
    """a.png: two ships and a car; b.png: one car."""
    write_png(root / "a.png", seed=1)
    write_png(root / "b.png", seed=2)
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                             {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": annotations or [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 4, 10, 6]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 20, 8, 8]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 30, 12, 10]},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 64, 48]},
        ],
        "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "car"}],
    }
    path = root / "labels.json"
    path.write_text(json.dumps(data))
    return path


def run_cli(*argv) -> int:
    return main(["data", *map(str, argv)])


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_geotiff(path: Path, data: np.ndarray, *, crs="EPSG:32633", origin=(500000.0, 5000000.0), pixel=10.0, nodata=None) -> Path:
    """A north-up GeoTIFF (bands, rows, cols) with ``pixel`` metre pixels from the top-left ``origin``."""
    import rasterio
    from rasterio.transform import from_origin

    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=from_origin(*origin, pixel, pixel), nodata=nodata) as ds:
        ds.write(data)
    return path


def lonlat_ring(pixels, *, crs="EPSG:32633", origin=(500000.0, 5000000.0), pixel=10.0) -> list[list[float]]:
    """A closed GeoJSON ring in EPSG:4326 through the given raster pixel corners."""
    from rasterio.warp import transform

    xs = [origin[0] + px * pixel for px, _ in pixels]
    ys = [origin[1] - py * pixel for _, py in pixels]
    lon, lat = transform(crs, "EPSG:4326", xs, ys)
    ring = [[a, b] for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def feature(ring, label="building") -> dict:
    return {"type": "Feature", "properties": {"label": label}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


def rect(x1, y1, x2, y2):
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
