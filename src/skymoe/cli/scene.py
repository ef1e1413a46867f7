"""``skymoe scene``: run a task over a large GeoTIFF tile by tile and write GeoJSON."""
from __future__ import annotations

import contextlib
import math
import sys
import warnings

from skymoe.cli.options import number_type
from skymoe.cli.predict import add_model_arguments, load_pipeline


def _option(name: str) -> str:
    """How the library's parameter ``name`` is spelt on this command line (tile_size -> --tile-size)."""
    return "--" + name.replace("_", "-")


def register(subparsers) -> None:
    from skymoe.infer.scene import SCENE_TASKS

    parser = subparsers.add_parser("scene", help="tile a large (Geo)TIFF, run a task per tile, write GeoJSON in its CRS")
    add_model_arguments(parser)
    parser.add_argument("scene", help="raster file (GeoTIFF; any size)")
    parser.add_argument("--task", required=True, choices=[t.value for t in SCENE_TASKS])
    parser.add_argument("--query", help="what to locate (grounding) or count (counting)")
    parser.add_argument("--labels", help="comma-separated classes (classification)")
    parser.add_argument("--out", required=True, help="output GeoJSON")
    parser.add_argument("--tile-size", type=number_type(int, lambda v: v >= 1, "a whole number of pixels, at least 1"), default=512,
                        help="model tile side in pixels (default: %(default)s)")
    parser.add_argument("--overlap", type=number_type(int, lambda v: v >= 0, "a whole number of pixels, 0 or more"), default=64,
                        help="least overlap between neighbouring tiles in model pixels (smaller than --tile-size); tiles are spread evenly, so it can be more (default: %(default)s)")
    parser.add_argument("--gsd", type=number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number of metres/pixel"),
                        help="ground resolution of a model tile in metres/pixel, measured on the ground at the scene centre (any CRS)")
    parser.set_defaults(func=run)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"skymoe: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _plain_warnings():
    """Warnings as one ``skymoe: warning: ...`` line each, without the Python source line warnings.warn shows."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # run_scene says it in its own words
        warnings.showwarning = _print_warning
        yield


def run(args) -> int:
    from skymoe.data.imagery import check_bands, raster_info
    from skymoe.infer.scene import check_scene_options, run_scene

    # Bad settings and a missing or unreadable scene fail before the (slow) model load.
    check_scene_options(args.task, args.query, args.tile_size, args.overlap, args.gsd, spell=_option)
    info = raster_info(args.scene)
    if args.bands:
        check_bands(args.bands, info.count, args.scene)
    pipeline = load_pipeline(args)
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    try:
        with _plain_warnings():
            result = run_scene(pipeline, args.scene, args.out, task=args.task, query=args.query, labels=labels, tile_size=args.tile_size,
                               overlap=args.overlap, gsd=args.gsd, batch_size=args.batch_size)
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} holds the tiles finished so far (marked complete: false)", file=sys.stderr)
        return 130
    counted = "" if result.count_estimate is None else f", about {result.count_estimate:g} {args.query} in the scene"
    print(f"{result.tiles} tiles, {result.detections} detections{counted} in {result.seconds:.1f} s -> {result.path}"
          + ("" if result.georeferenced else " (pixel coordinates: the scene has no georeferencing)"))
    return 0
