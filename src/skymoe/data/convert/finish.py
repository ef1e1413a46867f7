"""From a format's labelled images to written samples: chips, band composites, derived tasks, counts."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from PIL import Image

from skymoe.data.convert import DEFAULT_BOX_TASKS, ConvertOptions
from skymoe.data.convert.chips import crop, tile_image
from skymoe.data.convert.derive import derive_samples
from skymoe.data.convert.labelled import LabelledImage
from skymoe.data.convert.report import Converted, Tally
from skymoe.data.imagery import image_size, is_raster_source, load_image, read_window, scene_limits
from skymoe.errors import DataError


def finish(images: list[LabelledImage], options: ConvertOptions, tally: Tally, classes: list[str], *,
           dataset: str, default_tasks=DEFAULT_BOX_TASKS, whole_window: bool = False, chipped: bool = False) -> Converted:
    """Samples of ``images`` for ``options.tasks``; chips/composites are written to ``options.derived_dir``.

    ``chipped``: the format cut its own chips (label rasters). ``whole_window``: apply the half-area rule at the image border too (vector labels may reach past the raster).
    """
    _unique_names(images)
    if options.rename:
        classes = _rename(images, classes, options.rename)
    if options.tile and not chipped:
        images = [chip for image in images for chip in tile_image(image, options.tile, options.overlap)]
    elif whole_window:
        images = [crop(image, (0, 0, *image.size), image.name) for image in images]
    tasks = options.tasks or default_tasks
    classes = classes or sorted({b.label for image in images for b in image.boxes if b.label})
    derived = derive_samples(images, tasks, classes, dataset=dataset, split=options.split, seed=options.seed)
    used = [image for image, _ in derived]
    if options.bands or any(image.window for image in used):  # chips and composites are written; whole images used in place
        paths = write_images(used, options)
        for image, samples in derived:
            for sample in samples:
                sample.image = str(paths[image.name])
    tally.images = len(used)
    tally.objects = sum(len(image.boxes) for image in used)
    return Converted.from_tally([s for _, samples in derived for s in samples], tally)


def _rename(images: list[LabelledImage], classes: list[str], names: dict[str, str]) -> list[str]:
    """Class names as the questions should say them; names not in ``names`` are kept."""
    for image in images:
        image.boxes = [replace(b, label=names.get(b.label, b.label)) for b in image.boxes]
        if image.shares is not None:
            image.shares = {names.get(c, c): share for c, share in image.shares.items()}
    return [names.get(c, c) for c in classes]


def _unique_names(images: list[LabelledImage]) -> None:
    """Names become sample ids and chip file names: two images named alike (a/x.png, b/x.png) get -2, -3, ..."""
    seen: dict[str, int] = {}
    for image in images:
        n = seen[image.name] = seen.get(image.name, 0) + 1
        if n > 1:
            image.name = f"{image.name}-{n}"


def _window(image: LabelledImage, options: ConvertOptions, limits, decoded: dict) -> Image.Image:
    """The RGB image of ``image``'s window. An 8-bit PNG/JPEG is decoded once and cut: it has no random
    access, so a window read decodes it from the top, every time (minutes for a 2,000 px scene's chips)."""
    x, y, w, h = image.window or (0, 0, *image_size(image.image))
    if limits is None and not options.bands and not is_raster_source(image.image):
        if image.image not in decoded:
            decoded.clear()  # one source image at a time in memory
            decoded[image.image] = load_image(image.image)
        return decoded[image.image].crop((x, y, x + w, y + h))
    return read_window(image.image, x, y, w, h, bands=options.bands, limits=limits)


def write_images(images: list[LabelledImage], options: ConvertOptions) -> dict[str, Path]:
    """Each image's window as an 8-bit RGB PNG (``options.bands``), all or nothing: written to a staging
    folder that replaces ``derived_dir`` only when every image is written."""
    if options.derived_dir is None:
        raise DataError("chips (--tile) and band composites (--bands) need a folder to be written to", field="derived_dir")
    final = Path(options.derived_dir)
    paths = {image.name: final / f"{image.name}.png" for image in images}
    if options.reuse_images and all(p.is_file() for p in paths.values()):
        return paths  # a cache folder keyed by the labels: written by an earlier run (or another DDP rank)
    staging = final.with_name(f"{final.name}.{os.getpid()}.partial")  # per process: ranks may convert at once
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    limits: dict[Path, object] = {}
    decoded: dict[Path, Image.Image] = {}
    try:
        for image in images:
            if image.image not in limits:  # one stretch per source image, so its chips agree
                limits[image.image] = scene_limits(image.image, bands=options.bands)
            _window(image, options, limits[image.image], decoded).save(staging / f"{image.name}.png")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if options.reuse_images and final.is_dir():  # another process finished first with the same content
        shutil.rmtree(staging, ignore_errors=True)
        return paths
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return paths
