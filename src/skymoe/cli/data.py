"""``skymoe data list|show|tour|convert|check`` (and ``make-mgrs-mini`` where that module is installed)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from collections import Counter

from skymoe.cli.options import non_negative_int, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect the embedded datasets, convert your own labels, check JSONL files")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="every embedded dataset with sample counts per split and task")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these datasets (default: all)")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="print samples of a dataset")
    p.add_argument("name")
    p.add_argument("--split", default=None, help="default: the first split")
    p.add_argument("--limit", type=non_negative_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON sample per line (the project's JSONL schema)")
    p.set_defaults(func=_show)

    p = sub.add_parser("tour", help="render real samples of every embedded dataset to a PNG contact sheet")
    p.add_argument("--out", required=True, help="output folder (writes tour.png)")
    p.add_argument("--per-dataset", type=positive_int, default=4)
    p.add_argument("names", nargs="*", metavar="NAME", help="only these datasets (default: all)")
    p.set_defaults(func=_tour)

    importlib.import_module("skymoe.cli.data_convert").register(sub)

    # MGRS-mini adds its own sub-command when present (optional part of the package)
    if importlib.util.find_spec("skymoe.cli.data_mgrs") is not None:
        importlib.import_module("skymoe.cli.data_mgrs").register(sub)


def _names(args: argparse.Namespace) -> list[str]:
    from skymoe.data.datasets import dataset_info, list_datasets

    return [dataset_info(n).name for n in args.names] if args.names else list_datasets()


def _list(args: argparse.Namespace) -> int:
    from skymoe.data.datasets import dataset_info, load_all_splits

    for name in _names(args):
        splits = load_all_splits(name)
        total = sum(len(s) for s in splits.values())
        images = len({s.image for samples in splits.values() for s in samples})
        print(f"{name}: {total:,} samples over {images:,} images — {dataset_info(name).description}")
        for split, samples in splits.items():
            tasks = Counter(s.task.value for s in samples)
            per_task = ", ".join(f"{t} {n:,}" for t, n in sorted(tasks.items()))
            print(f"    {split:<11} {len(samples):>6,}  ({per_task})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from skymoe.data.datasets import dataset_splits, load_dataset

    split = args.split or dataset_splits(args.name)[0]
    for sample in load_dataset(args.name, split)[: args.limit]:
        if args.json:
            print(json.dumps(sample.to_dict(), ensure_ascii=False))
            continue
        qtype = f" [{sample.question_type}]" if sample.question_type else ""
        print(f"{sample.id}  {sample.task.value}/{sample.granularity.value}{qtype}  {sample.image}")
        for turn in sample.conversation:
            print(f"    {turn.role}: {turn.text}")
        if sample.boxes:
            print(f"    boxes: {[b.to_dict() for b in sample.boxes]}")
    return 0


def _tour(args: argparse.Namespace) -> int:
    from pathlib import Path

    from skymoe.data.datasets import dataset_splits, load_dataset
    from skymoe.data.tour import pick_samples, render_contact_sheet

    rows = {}
    for name in _names(args):
        split = dataset_splits(name)[0]
        samples = load_dataset(name, split)
        rows[f"{name} ({split}, {len(samples):,} samples)"] = pick_samples(samples, args.per_dataset)
    path = render_contact_sheet(rows, Path(args.out) / "tour.png", per_row=args.per_dataset)
    print(f"contact sheet: {path}")
    return 0
