"""Pixel <-> map coordinates of a raster: the CRS member GeoJSON readers expect, and ground pixel sizes.

Used by :mod:`skymoe.infer.scene`. Hand-written: pyproj (which has geodesics) is not a dependency
here, and rasterio's transforms are all that is needed for short baselines on the ellipsoid.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from skymoe.errors import DataError

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
WGS84_A, WGS84_F = 6378137.0, 1 / 298.257223563
# GeoJSON (2008) names for lon/lat order: urn:ogc:def:crs:EPSG::4326 formally means lat/lon.
LON_LAT_URNS = {4326: "urn:ogc:def:crs:OGC:1.3:CRS84", 4269: "urn:ogc:def:crs:OGC:1.3:CRS83", 4267: "urn:ogc:def:crs:OGC:1.3:CRS27"}


@dataclass
class GeoReference:
    crs: str | None
    transform: tuple[float, ...]  # affine a, b, c, d, e, f (pixel -> CRS)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def to_crs(self, x: float, y: float) -> list[float]:
        a, b, c, d, e, f = self.transform
        return [a * x + b * y + c, d * x + e * y + f]

    def polygon(self, x1: float, y1: float, x2: float, y2: float) -> dict:
        """A pixel box as a closed ring, counter-clockwise in output coordinates (RFC 7946) whatever the transform's handedness."""
        ring = [self.to_crs(x, y) for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1))]
        signed_area = sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(ring, ring[1:]))
        return {"type": "Polygon", "coordinates": [ring if signed_area >= 0 else ring[::-1]]}

    def crs_member(self) -> dict | None:
        if self.crs is None:
            return None
        from rasterio.crs import CRS

        crs = CRS.from_string(self.crs)
        epsg = crs.to_epsg()
        # As GDAL and QGIS read and write GeoJSON, an EPSG URN here goes with traditional GIS axis order
        # (x first), whatever order the EPSG definition gives; CRS84 and kin state lon/lat formally.
        name = LON_LAT_URNS.get(epsg) or (f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt())
        return {"type": "name", "properties": {"name": name}}


def georeference(info, scene: str) -> GeoReference:
    """The scene's CRS and geotransform; pixel coordinates (with a warning saying what is missing) unless it has both."""
    has_crs, has_transform = info.crs is not None, tuple(info.transform) != IDENTITY
    if has_crs and has_transform:
        return GeoReference(info.crs, tuple(info.transform))
    missing = "no georeferencing" if not (has_crs or has_transform) else "a geotransform but no CRS" if has_transform else "a CRS but no geotransform"
    warnings.warn(f"{scene} has {missing}: output coordinates are pixels (x right, y down)", stacklevel=3)
    return GeoReference(None, IDENTITY)


def ground_pixel_size(georef: GeoReference, width: int, height: int) -> tuple[float, float]:
    """Metres on the ground of one pixel step along x and along y, at the scene centre.

    Points 16 pixels apart are taken to WGS84 and measured as straight chords between their
    Earth-centred (ECEF) positions: over such short baselines a chord equals the ground distance to
    well under 0.01%, at the poles and across the antimeridian too. A CRS that cannot be taken to
    WGS84 (a local engineering CRS) falls back to its linear units.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform as reproject_points

    cx, cy, step = width / 2, height / 2, 16.0
    points = [georef.to_crs(x, y) for x, y in ((cx, cy), (cx + step, cy), (cx, cy + step))]
    try:
        lons, lats = reproject_points(georef.crs, "EPSG:4326", [p[0] for p in points], [p[1] for p in points])
    except Exception:  # GDAL's CPLE_* errors (not public in rasterio): PROJ knows no way from this CRS to WGS84
        return _pixel_size_in_linear_units(CRS.from_string(georef.crs), georef.transform)
    centre, along_x, along_y = (_ecef(lon, lat) for lon, lat in zip(lons, lats))
    return math.dist(centre, along_x) / step, math.dist(centre, along_y) / step


def _ecef(lon: float, lat: float) -> tuple[float, float, float]:
    """Earth-centred coordinates (metres) of a point on the WGS84 ellipsoid."""
    e2 = WGS84_F * (2 - WGS84_F)
    phi, lam = math.radians(lat), math.radians(lon)
    normal = WGS84_A / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    return normal * math.cos(phi) * math.cos(lam), normal * math.cos(phi) * math.sin(lam), normal * (1 - e2) * math.sin(phi)


def _pixel_size_in_linear_units(crs, transform) -> tuple[float, float]:
    from rasterio.errors import CRSError

    try:
        _, metres_per_unit = crs.units_factor
    except CRSError:
        raise DataError(f"gsd needs ground distances, and the scene's CRS has no units: {crs}", field="gsd") from None
    a, b, _, d, e, _ = transform
    return math.hypot(a, d) * metres_per_unit, math.hypot(b, e) * metres_per_unit
