"""Images that arrive over the network: ``data:`` URLs and uploaded bytes, decoded with a pixel guard.

The server never opens server-side paths or fetches remote URLs on a client's
behalf (that would let any client read local files or make the server scan a
network), so only inline ``data:`` URLs are accepted.
"""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from skymoe.errors import DataError


class ImageTooLarge(DataError):
    """The image has more pixels than the server accepts."""


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 ``data:image/...`` URL; anything else is refused."""
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = url[:40] if isinstance(url, str) else type(url).__name__
        raise DataError(
            f"image_url {shown!r} is not a data: URL; send the image inline as data:image/png;base64,... "
            "(the server never reads server paths or fetches remote URLs)",
            field="image_url",
        )
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise DataError("data: URL must be base64 encoded (data:image/png;base64,...)", field="image_url")
    if not payload:
        raise DataError("image is empty (0 bytes after data:...;base64,)", field="image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("data: URL payload is not valid base64", field="image_url") from None


def decode_image(data: bytes, *, max_pixels: int, name: str = "upload", bands=None) -> Image.Image:
    """RGB image from PNG/JPEG/TIFF/GeoTIFF bytes; the pixel count is checked before decoding.

    ``bands`` (1-based) picks the RGB bands of a TIFF; PNG and JPEG are RGB already.
    """
    from skymoe.data.imagery import load_image

    if not data:
        raise DataError("image is empty (0 bytes)", file=name)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF / BigTIFF: rasterio handles bands and dtypes
        return _decode_tiff(data, max_pixels, name, bands)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.width, image.height, max_pixels, name)
            image.load()
    except ImageTooLarge:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # PIL's "cannot identify image file" names its in-memory buffer, not the upload
        unknown = isinstance(exc, Image.UnidentifiedImageError)
        reason = "not PNG, JPEG, TIFF or another format PIL decodes" if unknown else str(exc)
        raise DataError(f"not a readable image ({reason})", file=name) from None
    return load_image(image, max_pixels=max_pixels)


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} pixels exceeds the server limit of {max_pixels:,} pixels", file=name)


def _decode_tiff(data: bytes, max_pixels: int, name: str, bands) -> Image.Image:
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    from skymoe.data.imagery import load_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as memory, memory.open() as dataset:
                _check_size(dataset.width, dataset.height, max_pixels, name)
                return load_image(dataset, bands=bands, max_pixels=max_pixels)
    except RasterioError as exc:
        raise DataError(f"not a readable TIFF ({exc})", file=name) from None
