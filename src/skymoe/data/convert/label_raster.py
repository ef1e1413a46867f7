"""A label raster (land cover: one class value per pixel) over an image: per-chip class and multilabel samples.

SOURCE is the label raster, ``options.raster`` the imagery. A label raster on another grid is
resampled onto the imagery's grid (nearest neighbour: class values must not be averaged). Class
names come from ``--classes`` (``VALUE: NAME`` lines); without it a value is its own name. The
label raster's nodata value is no class; a chip with no labelled pixel gives no samples.
Per chip: ``classification`` = the class with the largest area, ``multilabel`` = the classes
covering at least ``options.min_share`` of the labelled pixels (default 1%: a few stray pixels of a class
are label noise, not content).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.chips import starts
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import LabelledImage, read_class_file, require_nonempty
from skymoe.data.convert.report import Converted, Tally
from skymoe.data.imagery import raster_info
from skymoe.errors import DataError

DEFAULT_TASKS = ("classification", "multilabel")


def _labels_on_grid(source: Path, raster: Path) -> tuple[np.ndarray, float | None]:
    """The label band on the imagery's pixel grid, and its nodata value."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    info = raster_info(raster)
    with rasterio.open(source) as ds:
        labels, nodata = ds.read(1), ds.nodata
        same_grid = (ds.width, ds.height) == (info.width, info.height) and tuple(ds.transform)[:6] == info.transform
        if same_grid or (ds.crs is None and (ds.width, ds.height) == (info.width, info.height)):
            return labels, nodata
        if ds.crs is None or info.crs is None:
            raise DataError(f"label raster is {ds.width}x{ds.height} on another grid than {raster} and one of them has no CRS",
                                  file=str(source))
        fill = nodata if nodata is not None else 0
        out = np.full((info.height, info.width), fill, dtype=labels.dtype)
        reproject(labels, out, src_transform=ds.transform, src_crs=ds.crs, src_nodata=nodata, dst_transform=rasterio.Affine(*info.transform),
                  dst_crs=info.crs, dst_nodata=fill, resampling=Resampling.nearest)
        return out, fill


def _names(options: ConvertOptions, values: np.ndarray, source: Path) -> dict[int, str]:
    if options.classes is None:
        return {int(v): str(int(v)) for v in values}
    names = read_class_file(options.classes)
    unknown = sorted(int(v) for v in values if int(v) not in names)
    if unknown:
        raise DataError(f"holds class values {unknown[:10]} that the class file {options.classes} does not name "
                              f"(it names {sorted(names)[:10]})", file=str(source), field="class")
    return names


def read_label_raster(source: Path, options: ConvertOptions) -> Converted:
    if options.raster is None:
        raise DataError("a label raster needs the imagery it labels (--raster FILE.tif)", file=str(source))
    require_nonempty(source)
    labels, nodata = _labels_on_grid(source, options.raster)
    valid = labels != nodata if nodata is not None else np.ones(labels.shape, bool)
    names = _names(options, np.unique(labels[valid]), source)
    height, width = labels.shape
    tile = options.tile or max(width, height)
    min_share = options.min_share
    tally, chips = Tally(options.on_error), []
    for y in starts(height, tile, options.overlap):
        for x in starts(width, tile, options.overlap):
            w, h = min(tile, width), min(tile, height)
            block, ok = labels[y : y + h, x : x + w], valid[y : y + h, x : x + w]
            if not ok.any():
                tally.excluded["chips without labelled pixels"] += 1
                continue
            values, counts = np.unique(block[ok], return_counts=True)
            shares = {names[int(v)]: n / ok.sum() for v, n in zip(values, counts) if n / ok.sum() >= min_share}
            whole = (x, y, w, h) == (0, 0, width, height)
            name = Path(options.raster).stem + ("" if whole else f"_{x}_{y}")
            chips.append(LabelledImage(Path(options.raster), (w, h), name, shares=shares, window=None if whole else (x, y, w, h)))
    if not chips:
        raise DataError("has no labelled pixel (every pixel is nodata)", file=str(source))
    classes = [names[k] for k in sorted(names)]
    return finish(chips, options, tally, classes, dataset=options.dataset or source.stem, default_tasks=DEFAULT_TASKS, chipped=True)
