"""``skymoe data convert FORMAT SOURCE --out FILE.jsonl`` and ``skymoe data check FILE.jsonl|CONFIG``."""
from __future__ import annotations

import argparse
from pathlib import Path

from skymoe.cli.options import band_list, non_negative_int, number_type, positive_float, positive_int


def register(sub) -> None:
    from skymoe.data.convert import BOX_TASKS, format_names

    p = sub.add_parser("convert", help="turn labelled imagery (COCO, VOC, YOLO, DOTA, CSV, GeoJSON, label rasters, ...) into JSONL samples",
                       description="Turn a dataset or a label file into the project's JSONL samples; see configs/examples/README.md.")
    p.add_argument("format", choices=format_names())
    p.add_argument("source", help="label file or folder (COCO JSON, VOC XML folder, YOLO/DOTA txt folder, CSV, GeoJSON, "
                                  "label raster) or dataset root (rsvqa, hrvqa, dior-rsvg, bigearthnet, image-folder)")
    p.add_argument("--out", required=True, help="output JSONL; chips and band composites go to <stem>_images/ beside it")
    p.add_argument("--images", type=Path, help="image folder (default: the format's usual place beside the labels)")
    p.add_argument("--raster", type=Path, help="the GeoTIFF under vector labels / the imagery of a label raster")
    p.add_argument("--classes", type=Path, help="class-name file: NAME per line (id = line number) or VALUE: NAME lines")
    p.add_argument("--split", default="train", help="split to read (dataset formats) or to record (default: %(default)s)")
    p.add_argument("--tasks", type=_tasks(BOX_TASKS), help=f"comma-separated tasks derived from labels: {','.join(BOX_TASKS)} "
                                                         "(default: grounding,counting,region_caption; label-raster: classification,multilabel)")
    p.add_argument("--tile", type=positive_int, help="cut images into TILE x TILE pixel chips")
    p.add_argument("--overlap", type=non_negative_int, default=0, help="overlap between neighbouring chips in pixels")
    p.add_argument("--bands", type=band_list, help="1-based bands of multiband/grey rasters written as RGB, e.g. 4,3,2")
    p.add_argument("--label-field", help="vector: the property holding the class (default: label, class, name or category)")
    p.add_argument("--point-size", type=positive_float, default=8.0, help="vector: box side in pixels around a point label")
    p.add_argument("--min-share", type=number_type(float, lambda v: 0 <= v <= 1, "a fraction from 0 to 1"), default=0.01,
                   help="label-raster: least share of a chip's labelled pixels for a class to be present (default: %(default)s)")
    p.add_argument("--dataset", help="dataset name recorded in the samples (default: from the source)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="stop at the first bad record, or skip and count it")
    p.set_defaults(func=_convert)

    p = sub.add_parser("check", help="open every image of a JSONL file (or of a training config's mix) and check every box")
    p.add_argument("target", help="samples JSONL or training config YAML")
    p.add_argument("--show", type=positive_int, default=5, help="errors printed (default: %(default)s)")
    p.set_defaults(func=_check)


def _tasks(allowed):
    def parse(text: str) -> tuple[str, ...]:
        tasks = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in tasks if t not in allowed]
        if not tasks or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: expected some of {','.join(allowed)}")
        return tasks

    return parse


def _convert(args: argparse.Namespace) -> int:
    from skymoe.data.convert import ConvertOptions, convert
    from skymoe.data.convert.output import images_dir, write_converted

    options = ConvertOptions(
        images=args.images, raster=args.raster, classes=args.classes, split=args.split, tasks=args.tasks, tile=args.tile,
        overlap=args.overlap, bands=args.bands, label_field=args.label_field, point_size=args.point_size, min_share=args.min_share,
        on_error=args.on_error, derived_dir=images_dir(args.out), dataset=args.dataset,
    )
    converted = convert(args.format, args.source, options)
    write_converted(converted, args.out)
    print(converted.summary(args.out))
    return 0


def _check(args: argparse.Namespace) -> int:
    from skymoe.data.convert.check import CheckResult, check_jsonl, check_samples

    if Path(args.target).suffix.lower() not in (".yaml", ".yml"):
        result = check_jsonl(args.target)
    else:  # every entry of the config's mix, bad records collected rather than raised
        from skymoe.train.config import load_config
        from skymoe.train.data import load_mix_entry

        result = CheckResult()
        for spec in load_config(args.target).data.mix:
            label, samples = load_mix_entry(spec, "skip")
            part = check_samples(samples)
            part.errors = [f"{label}: {r}: {why}" for r, why in samples.skipped.items()] + [f"{label}: {e}" for e in part.errors]
            result.add(part)
    print(result.summary(args.show))
    return 0 if result.ok else 1
