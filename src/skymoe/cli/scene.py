"""``skymoe scene``: run a task over a large GeoTIFF tile by tile and write GeoJSON."""
from __future__ import annotations

import sys

from skymoe.cli.predict import add_model_arguments, load_pipeline


def _bands(text: str) -> list[int]:
    return [int(b) for b in text.split(",")]


def register(subparsers) -> None:
    from skymoe.infer.scene import SCENE_TASKS

    parser = subparsers.add_parser("scene", help="tile a large (Geo)TIFF, run a task per tile, write GeoJSON in its CRS")
    add_model_arguments(parser)
    parser.add_argument("scene", help="raster file (GeoTIFF; any size)")
    parser.add_argument("--task", required=True, choices=[t.value for t in SCENE_TASKS])
    parser.add_argument("--query", help="what to locate (grounding) or count (counting)")
    parser.add_argument("--labels", help="comma-separated classes (classification)")
    parser.add_argument("--out", required=True, help="output GeoJSON")
    parser.add_argument("--tile-size", type=int, default=512, help="model tile side in pixels")
    parser.add_argument("--overlap", type=int, default=64, help="overlap between tiles in model pixels")
    parser.add_argument("--gsd", type=float, help="ground resolution of a model tile in metres/pixel (projected CRS)")
    parser.add_argument("--bands", type=_bands, help="1-based bands to show as RGB, e.g. 4,3,2 (default 1,2,3)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from skymoe.infer.scene import run_scene

    pipeline = load_pipeline(args)
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    try:
        result = run_scene(pipeline, args.scene, args.out, task=args.task, query=args.query, labels=labels, tile_size=args.tile_size,
                           overlap=args.overlap, gsd=args.gsd, bands=args.bands, batch_size=args.batch_size)
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} holds the tiles finished so far (marked complete: false)", file=sys.stderr)
        return 130
    counted = "" if result.count_estimate is None else f", about {result.count_estimate:g} {args.query} in the scene"
    print(f"{result.tiles} tiles, {result.detections} detections{counted} in {result.seconds:.1f} s -> {result.path}"
          + ("" if result.georeferenced else " (pixel coordinates: the scene has no georeferencing)"))
    return 0
