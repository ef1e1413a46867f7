"""Vector labels over a GeoTIFF: polygons or points in any CRS, reprojected onto the raster's pixel grid.

GeoJSON is read directly (its legacy ``crs`` member is honoured; without one it is EPSG:4326, as
RFC 7946 says); other OGR formats (Shapefile, GeoPackage, ...) need ``fiona``. Geometries are
reprojected with GDAL (``rasterio.warp.transform_geom``) and mapped to pixels with the raster's
inverse geotransform. Each Polygon is one object (its outer ring; a MultiPolygon one object per
part); a Point becomes a box of ``point_size`` pixels around it. The class is the feature's
``label_field`` property (default: the first of label, class, name, category).
Objects reaching past the raster keep their clipped box by the half-area rule (:mod:`.chips`).
Under ``on_error="skip"`` a bad feature is skipped alone (not the whole scene, which is the only image).
"""
from __future__ import annotations

from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import LabelledImage, Polygon, polygon_box, require_nonempty
from skymoe.data.convert.report import Converted, Tally
from skymoe.data.imagery import raster_info
from skymoe.errors import DataError

LABEL_FIELDS = ("label", "class", "name", "category")


def _read_geojson(source: Path) -> tuple[str, list[dict]]:
    from skymoe.data.readers import load_json

    data = load_json(source)
    if not isinstance(data, dict) or data.get("type") not in ("FeatureCollection", "Feature"):
        raise DataError("expected a GeoJSON FeatureCollection or Feature", file=str(source))
    crs = ((data.get("crs") or {}).get("properties") or {}).get("name") or "EPSG:4326"
    return crs, data["features"] if data["type"] == "FeatureCollection" else [data]


def _read_ogr(source: Path) -> tuple[str, list[dict]]:
    try:
        import fiona
    except ImportError:
        raise DataError("reading this vector format needs fiona (pip install fiona); GeoJSON needs nothing", file=str(source)) from None
    with fiona.open(source) as layer:
        crs = layer.crs.to_string() if layer.crs else "EPSG:4326"
        return crs, [{"geometry": dict(f["geometry"]), "properties": dict(f["properties"])} for f in layer]


def read_features(source: Path) -> tuple[str, list[dict]]:
    """(CRS, features) of a vector file; a file with no features is an error."""
    require_nonempty(source)
    crs, features = (_read_geojson if source.suffix.lower() in (".geojson", ".json") else _read_ogr)(source)
    if not features:
        raise DataError("holds no features", file=str(source))
    return crs, features


def _label(feature: dict, field: str | None, *, file: str, record: str) -> str:
    properties = feature.get("properties") or {}
    for key in (field,) if field else LABEL_FIELDS:
        if properties.get(key) not in (None, ""):
            return str(properties[key])
    wanted = f"property {field!r}" if field else f"one of the properties {list(LABEL_FIELDS)} (or pass --label-field)"
    raise DataError(f"has no class label; expected {wanted}", file=file, record=record, field="properties")


def _rings(geometry: dict, point_size: float, inverse) -> list[Polygon]:
    """The geometry's objects as polygons in pixels."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        parts = [coords[0]]
    elif kind == "MultiPolygon":
        parts = [p[0] for p in coords]
    elif kind in ("Point", "MultiPoint"):
        points = [coords] if kind == "Point" else coords
        half = point_size / 2
        return [[(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
                for x, y in (inverse @ tuple(p[:2]) for p in points)]
    else:
        raise ValueError(f"geometry type {kind!r} is not a polygon or point")
    return [[inverse @ tuple(p[:2]) for p in ring[:-1]] for ring in parts]  # GeoJSON rings repeat the first point


def read_vector(source: Path, options: ConvertOptions) -> Converted:
    from affine import Affine
    from rasterio.warp import transform_geom

    if options.raster is None:
        raise DataError("vector labels need the GeoTIFF they lie on (--raster FILE.tif)", file=str(source))
    info = raster_info(options.raster)
    if info.crs is None:
        raise DataError("raster has no CRS; vector labels need a georeferenced raster", file=str(options.raster))
    crs, features = read_features(source)
    inverse, file = ~Affine(*info.transform), str(source)
    image = LabelledImage(Path(options.raster), (info.width, info.height), Path(options.raster).stem)
    tally = Tally(options.on_error)
    for i, feature in enumerate(features):
        record = f"feature {i}"
        try:
            label = _label(feature, options.label_field, file=file, record=record)
            geometry = transform_geom(crs, info.crs, feature["geometry"])
            for polygon in _rings(geometry, options.point_size, inverse):
                image.add(polygon_box(polygon, label), polygon)
        except DataError as exc:
            tally.skip(exc, record)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            tally.skip(DataError(f"unreadable geometry ({exc})", file=file, record=record, field="geometry"), record)
    _check_overlap(image, crs, info, file)
    return finish([image], options, tally, [], dataset=options.dataset or source.stem, whole_window=True)


def _check_overlap(image: LabelledImage, crs: str, info, file: str) -> None:
    width, height = image.size
    if not any(b.x2 > 0 and b.y2 > 0 and b.x1 < width and b.y1 < height for b in image.boxes):
        raise DataError(
            f"no feature overlaps the raster: the labels (CRS {crs}) and the raster (CRS {info.crs}, bounds "
            f"{tuple(round(v, 1) for v in info.bounds)}) cover different places", file=file)
