"""skymoe data convert: vector labels (GeoJSON in EPSG:4326) over a UTM GeoTIFF, chips, label rasters, bands."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _convert_fixtures import feature, lonlat_ring, read_out, rect, run_cli, write_geotiff
from skymoe.data.schema import read_jsonl


@pytest.fixture()
def scene(tmp_path):
    return write_geotiff(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 100, 100), dtype=np.uint8))


def write_geojson(path, features, crs=None):
    data = {"type": "FeatureCollection", "features": features}
    if crs:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


def test_geojson_in_4326_lands_on_the_utm_pixel_grid(tmp_path, scene):
    point = {"type": "Feature", "properties": {"class": "well"},
             "geometry": {"type": "Point", "coordinates": lonlat_ring([(70, 60)])[0]}}
    labels = write_geojson(tmp_path / "l.geojson", [feature(lonlat_ring(rect(10.5, 20.25, 30, 35))), point])
    out = tmp_path / "v.jsonl"
    assert run_cli("convert", "vector", labels, "--raster", scene, "--out", out, "--tasks", "grounding") == 0
    building, well = list(read_jsonl(out))
    assert building.image.endswith("scene.tif") and building.image_size == (100, 100)
    assert np.allclose(building.boxes[0].as_tuple(), (10.5, 20.25, 30, 35), atol=1e-3)  # exact within a pixel
    assert np.allclose(well.boxes[0].as_tuple(), (66, 56, 74, 64), atol=1e-3) and well.boxes[0].label == "well"


def test_geojson_with_a_legacy_crs_member_is_read_in_that_crs(tmp_path, scene):
    ring = [[500000 + 10 * x, 5000000 - 10 * y] for x, y in rect(1, 2, 5, 9)]
    labels = write_geojson(tmp_path / "l.geojson", [feature(ring + [ring[0]])], crs="urn:ogc:def:crs:EPSG::32633")
    out = tmp_path / "v.jsonl"
    assert run_cli("convert", "vector", labels, "--raster", scene, "--out", out, "--tasks", "grounding") == 0
    assert np.allclose(next(read_jsonl(out)).boxes[0].as_tuple(), (1, 2, 5, 9), atol=1e-6)


def test_geojson_elsewhere_on_earth_is_an_error_naming_both_crs(tmp_path, scene, capsys):
    far = [[lon + 20, lat] for lon, lat in lonlat_ring(rect(10, 10, 20, 20))]
    labels = write_geojson(tmp_path / "far.geojson", [feature(far)])
    assert run_cli("convert", "vector", labels, "--raster", scene, "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert f"file {labels}: no feature overlaps the raster: the labels (CRS EPSG:4326) and the raster (CRS EPSG:32633" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_chips_keep_an_object_cut_by_a_border_only_where_half_of_it_is(tmp_path, scene):
    cut = feature(lonlat_ring(rect(42, 10, 62, 20)))  # 40% in the chip at x=0, 60% in the chip at x=50
    whole = feature(lonlat_ring(rect(5, 60, 15, 70)), label="pond")
    labels = write_geojson(tmp_path / "l.geojson", [cut, whole])
    out = tmp_path / "chips.jsonl"
    assert run_cli("convert", "vector", labels, "--raster", scene, "--out", out, "--tile", "50", "--tasks", "grounding") == 0
    samples = list(read_jsonl(out))
    assert [(s.image.split("/")[-1], s.meta["window"]) for s in samples] == [("scene_50_0.png", [50, 0, 50, 50]), ("scene_0_50.png", [0, 50, 50, 50])]
    assert np.allclose(samples[0].boxes[0].as_tuple(), (0, 10, 12, 20), atol=1e-3)  # the clipped box, in chip pixels
    assert np.allclose(samples[1].boxes[0].as_tuple(), (5, 10, 15, 20), atol=1e-3)
    assert read_out(out)[0]["image"] == "chips_images/scene_50_0.png"
    chip = Image.open(tmp_path / "chips_images" / "scene_50_0.png")
    assert chip.size == (50, 50)
    import rasterio

    with rasterio.open(scene) as ds:
        expected = ds.read(window=((0, 50), (50, 100))).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(chip), expected)  # 8-bit bands are written unstretched


def write_land_cover(tmp_path, *, extra_value=None):
    labels = np.zeros((40, 40), np.uint8)
    labels[:, :20], labels[:20, 20:], labels[20:, 20:] = 1, 2, 3
    labels[:20, 14:20] = 2  # the top-left chip: 70% water, 30% forest
    labels[20:30, 20:] = 0  # nodata, left out of the shares
    if extra_value is not None:
        labels[5, 5] = extra_value
    image = np.random.default_rng(0).integers(0, 4000, (4, 40, 40)).astype(np.uint16)
    write_geotiff(tmp_path / "s2.tif", image)
    write_geotiff(tmp_path / "lc.tif", labels, nodata=0)
    (tmp_path / "classes.txt").write_text("1: water\n2: forest\n3: urban\n")
    return tmp_path / "lc.tif", tmp_path / "s2.tif", tmp_path / "classes.txt"


def test_label_raster_gives_per_chip_class_and_multilabel_on_band_composites(tmp_path, capsys):
    labels, raster, classes = write_land_cover(tmp_path)
    out = tmp_path / "lc.jsonl"
    assert run_cli("convert", "label-raster", labels, "--raster", raster, "--classes", classes, "--tile", "20",
                   "--bands", "4,3,2", "--out", out) == 0
    assert capsys.readouterr().out.startswith(f"wrote 8 samples from 4 images (0 objects) to {out}")
    samples = list(read_jsonl(out))
    answers = [(s.image.split("/")[-1], s.task.value, s.answer) for s in samples]
    assert answers == [
        ("s2_0_0.png", "classification", "water"), ("s2_0_0.png", "multilabel", "forest; water"),
        ("s2_20_0.png", "classification", "forest"), ("s2_20_0.png", "multilabel", "forest"),
        ("s2_0_20.png", "classification", "water"), ("s2_0_20.png", "multilabel", "water"),
        ("s2_20_20.png", "classification", "urban"), ("s2_20_20.png", "multilabel", "urban"),
    ]
    assert "water, forest, urban" in samples[0].question  # the classification template lists every class
    assert run_cli("convert", "label-raster", labels, "--raster", raster, "--classes", classes, "--tile", "20", "--min-share", "0.5",
                   "--tasks", "multilabel", "--out", out) == 0
    assert next(read_jsonl(out)).answer == "water"  # forest covers 30% of the first chip: below the 50% asked for
    chip = Image.open(tmp_path / "lc_images" / "s2_0_0.png")
    assert chip.mode == "RGB" and chip.size == (20, 20)


def test_label_raster_value_missing_from_the_class_file_is_an_error(tmp_path, capsys):
    labels, raster, classes = write_land_cover(tmp_path, extra_value=7)
    assert run_cli("convert", "label-raster", labels, "--raster", raster, "--classes", classes, "--out", tmp_path / "o.jsonl") == 2
    assert f"file {labels}, field 'class': holds class values [7] that the class file {classes} does not name" in capsys.readouterr().err


def test_a_shapefile_in_web_mercator_is_read_through_fiona(tmp_path, scene):
    fiona = pytest.importorskip("fiona")
    from rasterio.warp import transform

    x, y = transform("EPSG:32633", "EPSG:3857", [500000 + 10 * 40], [5000000 - 10 * 25])
    schema = {"geometry": "Point", "properties": {"kind": "str"}}
    with fiona.open(tmp_path / "wells.shp", "w", driver="ESRI Shapefile", crs="EPSG:3857", schema=schema) as layer:
        layer.write({"geometry": {"type": "Point", "coordinates": (x[0], y[0])}, "properties": {"kind": "well"}})
    out = tmp_path / "w.jsonl"
    assert run_cli("convert", "vector", tmp_path / "wells.shp", "--raster", scene, "--label-field", "kind", "--point-size", "4",
                   "--out", out, "--tasks", "counting,grounding") == 0
    counting, grounding = list(read_jsonl(out))
    assert counting.answer == "1" and np.allclose(grounding.boxes[0].as_tuple(), (38, 23, 42, 27), atol=1e-3)


def test_a_label_raster_on_a_coarser_grid_is_resampled_by_nearest_neighbour(tmp_path):
    labels = np.ones((10, 10), np.uint8)
    labels[:, 5:] = 2  # east half forest, on 20 m pixels over the same 200 m x 200 m as the 10 m imagery
    write_geotiff(tmp_path / "lc.tif", labels, pixel=20.0)
    write_geotiff(tmp_path / "img.tif", np.zeros((3, 20, 20), np.uint8))
    out = tmp_path / "o.jsonl"
    assert run_cli("convert", "label-raster", tmp_path / "lc.tif", "--raster", tmp_path / "img.tif", "--tile", "10",
                   "--tasks", "classification", "--out", out) == 0
    assert [(s.meta["window"], s.answer) for s in read_jsonl(out)] == [([0, 0, 10, 10], "1"), ([10, 0, 10, 10], "2"),
                                                                     ([0, 10, 10, 10], "1"), ([10, 10, 10, 10], "2")]
