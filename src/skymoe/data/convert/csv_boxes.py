"""CSV boxes, the DeepForest convention: ``image_path,xmin,ymin,xmax,ymax,label`` with a header;
one row per object. A row whose four coordinates are all 0 marks an image with no objects
(DeepForest's way of listing background images). Image paths are relative to
``options.images`` (default: the CSV's folder).
"""
from __future__ import annotations

import csv
from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import LabelledImage, checked_box, find_image, header_size, require_nonempty
from skymoe.data.convert.report import Converted, Tally
from skymoe.errors import DataError

COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def _rows(source: Path) -> list[dict]:
    require_nonempty(source)
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing columns {missing}; expected a header {','.join(COLUMNS)}", file=str(source))
        rows = list(reader)
    if not rows:
        raise DataError("has a header but no rows", file=str(source))
    return rows


def _add_row(image: LabelledImage, row: dict, file: str, record: str) -> None:
    try:
        corners = [float(row[c]) for c in COLUMNS[1:5]]
    except (TypeError, ValueError):
        raise DataError(f"expected numbers in xmin..ymax, got {[row[c] for c in COLUMNS[1:5]]}", file=file, record=record) from None
    if any(corners):
        image.add(checked_box(*corners, str(row["label"]).strip(), image.size, file=file, record=record))


def read_csv_boxes(source: Path, options: ConvertOptions) -> Converted:
    file, folder = str(source), options.images or source.parent
    grouped: dict[str, list[tuple[int, dict]]] = {}
    for lineno, row in enumerate(_rows(source), 2):  # line 1 is the header
        grouped.setdefault(row["image_path"], []).append((lineno, row))
    tally, labelled = Tally(options.on_error), []
    for name, rows in grouped.items():
        try:
            path = find_image(folder, name, file=file, record=f"line {rows[0][0]}")
            image = LabelledImage(path, header_size(path, None, file=file, record=name), Path(name).stem)
            for lineno, row in rows:
                _add_row(image, row, file, f"line {lineno}")
            labelled.append(image)
        except DataError as exc:
            tally.skip(exc, name)
    return finish(labelled, options, tally, [], dataset=options.dataset or source.stem)
