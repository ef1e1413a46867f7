"""Reading remote-sensing imagery into 8-bit RGB: PNG/JPEG via PIL, TIFF/GeoTIFF via rasterio.

Conventions:

* ``bands`` are 1-based band indices (rasterio's convention). Default: bands
  1-3 when there are at least three, else band 1 shown as grey.
* 8-bit data is already display-ready and is used as is. Other data (16-bit
  Sentinel-2, float DEMs) is stretched per band between the ``stretch``
  percentiles (default 2-98) to 0-255; ``stretch=None`` uses the full
  min-max range. Nodata pixels (the raster's own or ``nodata=``) are left out
  of the percentiles and written as 0.
* A pixel-count guard (``max_pixels``) refuses images that would not fit in
  memory (decompression bombs) before they are decoded; large scenes are read
  with :func:`read_window`.
* Unreadable, truncated or empty files raise :class:`DataError` naming the file.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skymoe.errors import DataError

DEFAULT_MAX_PIXELS = 120_000_000  # ~11k x 11k: larger scenes go through read_window
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
Limits = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class RasterInfo:
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: str | None
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f)
    nodata: float | None
    bounds: tuple[float, float, float, float]


def _rasterio_open(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise DataError(f"not a readable raster ({exc})", file=str(path)) from None


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError("is a folder; expected an image file", file=str(path))
    if not path.is_file():
        raise DataError("image file not found", file=str(path))
    if path.stat().st_size == 0:
        raise DataError("image file is empty (0 bytes)", file=str(path))


def _check_pixels(width: int, height: int, max_pixels: int, file: str | None) -> None:
    if width * height > max_pixels:
        raise DataError(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,}; read it in windows (read_window)",
            file=file,
        )


def raster_info(path: str | Path) -> RasterInfo:
    """Size, band count, dtypes, CRS and geotransform of a raster (PNG/JPEG give an identity transform)."""
    with _rasterio_open(Path(path)) as ds:
        return RasterInfo(
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtypes=tuple(ds.dtypes),
            crs=ds.crs.to_string() if ds.crs else None,
            transform=tuple(ds.transform)[:6],
            nodata=ds.nodata,
            bounds=tuple(ds.bounds),
        )


def _default_bands(count: int) -> list[int]:
    return [1, 2, 3] if count >= 3 else [1]


def check_bands(bands: Sequence[int], count: int, file: str | None) -> list[int]:
    bands = list(bands)
    if not bands or len(bands) not in (1, 3) or any(not 1 <= b <= count for b in bands):
        raise DataError(f"bands {bands} invalid: give 1 or 3 band indices in 1..{count}", file=file, field="bands")
    return bands


def valid_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """[H, W] mask of usable pixels of [C, H, W] data: not nodata in every band, finite in all.

    Like GDAL's dataset mask: a bright 255 in one band of an image whose nodata
    is 255 is still data; only pixels that are nodata in all bands are empty.
    """
    valid = np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else np.ones(data.shape[1:], bool)
    if nodata is not None:
        valid &= ~(data == nodata).all(axis=0)
    return valid


def band_limits(data: np.ndarray, stretch: tuple[float, float] | None = (2, 98), nodata: float | None = None) -> list[tuple[float, float]]:
    """Per-band (low, high) stretch values of ``data`` [C, H, W] over its valid pixels."""
    lo_p, hi_p = stretch if stretch is not None else (0, 100)
    valid = valid_pixels(data, nodata)
    limits = []
    for band in data:
        values = band[valid]
        limits.append(tuple(float(v) for v in np.percentile(values, [lo_p, hi_p])) if values.size else (0.0, 1.0))
    return limits


def to_uint8(data: np.ndarray, stretch: tuple[float, float] | None = (2, 98), nodata: float | None = None, limits: Limits | None = None) -> np.ndarray:
    """[C, H, W] array -> [C, H, W] uint8 (8-bit input kept as is; see the module notes)."""
    if data.dtype == np.uint8 and limits is None:
        out = data.copy()
    else:
        limits = limits or band_limits(data, stretch, nodata)
        out = np.empty(data.shape, np.uint8)
        for i, (band, (lo, hi)) in enumerate(zip(data, limits)):
            scaled = (band.astype(np.float64) - lo) / max(hi - lo, 1e-12)
            out[i] = np.round(np.clip(np.nan_to_num(scaled), 0, 1) * 255)
    out[:, ~valid_pixels(data, nodata)] = 0
    return out


def _to_rgb(data: np.ndarray) -> Image.Image:
    """[1 or 3, H, W] uint8 -> RGB PIL image (one band is repeated as grey)."""
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return Image.fromarray(np.ascontiguousarray(data.transpose(1, 2, 0)), "RGB")


def _as_chw(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise DataError(f"array of shape {array.shape} is not an image; expected HW, HWC or CHW", field="image")
    # Channels-last only when the last axis is strictly the shortest (a 120x120x12 Sentinel-2 stack);
    # otherwise channels-first (13x120x120, and a 200x145x145 hyperspectral cube).
    first, middle, last = array.shape
    return array.transpose(2, 0, 1) if last < min(first, middle) else array


def _pil_chw(image: Image.Image) -> np.ndarray:
    """A PIL image's pixels as [C, H, W]: PIL arrays are HW or HWC, never a guess."""
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _select(data: np.ndarray, bands: Sequence[int] | None, file: str | None) -> np.ndarray:
    chosen = check_bands(bands if bands is not None else _default_bands(data.shape[0]), data.shape[0], file)
    return data[[b - 1 for b in chosen]]


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    _check_file(path)
    try:
        with Image.open(path) as im:
            _check_pixels(im.width, im.height, max_pixels, str(path))
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                return np.asarray(im)[None]
            return _pil_chw(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL's "cannot identify image file '<path>'" would name the file a second time
        reason = "not an image format PIL or GDAL decodes" if isinstance(exc, Image.UnidentifiedImageError) else exc
        raise DataError(f"cannot decode image ({reason})", file=str(path)) from None


def _unreadable(file: str | None, what: str, reason) -> DataError:
    return DataError(f"cannot read {what}: truncated or corrupt file ({reason})", file=file)


def _read(ds, bands: list[int], what: str, **kwargs) -> np.ndarray:
    """``ds.read(bands, **kwargs)``; a failed read raises DataError naming the file and ``what`` was read."""
    from rasterio.errors import RasterioError

    try:
        return ds.read(bands, **kwargs)
    except RasterioError as exc:
        # rasterio's own message only says "see previous exception": GDAL's reason is the cause
        raise _unreadable(ds.name, what, exc.__cause__ or exc) from None


def _window_text(x, y, w, h) -> str:
    return f"window x={x} y={y} w={w} h={h}"


def _read_raster(ds, bands: Sequence[int] | None, max_pixels: int, window=None) -> np.ndarray:
    file = getattr(ds, "name", None)
    chosen = check_bands(bands if bands is not None else _default_bands(ds.count), ds.count, file)
    width, height = (window.width, window.height) if window is not None else (ds.width, ds.height)
    _check_pixels(int(width), int(height), max_pixels, file)
    what = "raster data" if window is None else _window_text(window.col_off, window.row_off, window.width, window.height)
    return _read(ds, chosen, what, window=window)


def _verify_pil(path: Path, what: str) -> None:
    """Raise DataError if PIL finds ``path`` cut short (PNG: every chunk and its checksum, without decoding)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(str(path), what, exc) from None


def is_raster_source(src) -> bool:
    """True for inputs whose bands are chosen (TIFF/GeoTIFF paths, rasterio datasets, arrays); PNG/JPEG and PIL images are RGB already."""
    if isinstance(src, Image.Image):
        return False
    return not (isinstance(src, (str, Path)) and Path(src).suffix.lower() in _PIL_SUFFIXES)


def load_image(
    src,
    *,
    bands: Sequence[int] | None = None,
    stretch: tuple[float, float] | None = (2, 98),
    nodata: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """An RGB PIL image from a path, PIL image, numpy array (HW, HWC or CHW) or open rasterio dataset."""
    if isinstance(src, Image.Image):
        _check_pixels(src.width, src.height, max_pixels, None)
        data = _pil_chw(src if src.mode in ("I;16", "I", "F", "L", "RGB") else src.convert("RGB"))
    elif isinstance(src, np.ndarray):
        data = _as_chw(src)
        _check_pixels(data.shape[2], data.shape[1], max_pixels, None)
    elif hasattr(src, "read") and hasattr(src, "count"):  # open rasterio dataset
        nodata = nodata if nodata is not None else src.nodata
        return _to_rgb(to_uint8(_read_raster(src, bands, max_pixels), stretch, nodata))
    else:
        path = Path(src)
        if path.suffix.lower() in _PIL_SUFFIXES:
            data = _read_pil(path, max_pixels)
        else:
            with _rasterio_open(path) as ds:
                nodata = nodata if nodata is not None else ds.nodata
                return _to_rgb(to_uint8(_read_raster(ds, bands, max_pixels), stretch, nodata))
    file = str(src) if isinstance(src, (str, Path)) else None
    if bands is None and data.shape[0] == 4:  # RGBA / RGB+NIR: colour bands only
        bands = [1, 2, 3]
    return _to_rgb(to_uint8(_select(data, bands, file), stretch, nodata))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in _PIL_SUFFIXES:
        _check_file(path)
        try:
            with Image.open(path) as im:
                return im.size
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot decode image ({exc})", file=str(path)) from None
    info = raster_info(path)
    return info.width, info.height


def read_window(
    path: str | Path,
    x: int,
    y: int,
    w: int,
    h: int,
    *,
    bands: Sequence[int] | None = None,
    stretch: tuple[float, float] | None = (2, 98),
    limits: Limits | None = None,
    nodata: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """RGB image of the pixel window (x, y, w, h) of a raster, read without loading the rest.

    Pass ``limits`` (from :func:`scene_limits`) so every tile of a scene gets
    the same stretch; otherwise each window is stretched on its own.
    """
    from rasterio.windows import Window

    path = Path(path)
    with _rasterio_open(path) as ds:
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > ds.width or y + h > ds.height:
            raise DataError(
                f"{_window_text(x, y, w, h)} is not inside the raster of {ds.width}x{ds.height}", file=str(path), field="window"
            )
        if (w, h) == (ds.width, ds.height) and path.suffix.lower() in _PIL_SUFFIXES:
            # GDAL's PNG driver reads a cut-off file whole without an error (garbage pixels); partial windows do fail
            _verify_pil(path, _window_text(x, y, w, h))
        data = _read_raster(ds, bands, max_pixels, Window(x, y, w, h))
        nodata = nodata if nodata is not None else ds.nodata
    return _to_rgb(to_uint8(data, stretch, nodata, limits))


def valid_fraction(path: str | Path, x: int, y: int, w: int, h: int, *, bands: Sequence[int] | None = None) -> float:
    """Share of the window's pixels that hold data in at least one of ``bands`` (default: those shown, see
    :func:`read_window`), from GDAL's masks: nodata value, alpha band or internal mask."""
    from rasterio.windows import Window

    with _rasterio_open(Path(path)) as ds:
        chosen = check_bands(bands if bands is not None else _default_bands(ds.count), ds.count, str(path))
        mask = ds.read_masks(chosen, window=Window(x, y, w, h)).any(axis=0)
    return float(np.count_nonzero(mask)) / mask.size


def scene_limits(
    path: str | Path, *, bands: Sequence[int] | None = None, stretch: tuple[float, float] | None = (2, 98), overview: int = 1024
) -> list[tuple[float, float]] | None:
    """Per-band stretch limits of a whole raster from a decimated read (at most ``overview`` px a side).

    Returns None for 8-bit rasters, which need no stretch.
    """
    with _rasterio_open(Path(path)) as ds:
        chosen = check_bands(bands if bands is not None else _default_bands(ds.count), ds.count, str(path))
        if all(ds.dtypes[b - 1] == "uint8" for b in chosen):
            return None
        factor = max(1, -(-max(ds.width, ds.height) // overview))
        shape = (len(chosen), max(1, ds.height // factor), max(1, ds.width // factor))
        data = _read(ds, chosen, f"the {shape[2]}x{shape[1]} overview for the stretch limits", out_shape=shape)
        return band_limits(data, stretch, ds.nodata)
