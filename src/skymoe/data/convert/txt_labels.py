"""One text file of labels per image: YOLO and DOTA.

* YOLO: ``CLASS_ID CX CY W H`` per line, normalised to 0-1 by the image size; class names in a
  separate file (``--classes``: one name a line, line number = id). An empty file is an image
  with no objects (YOLO's convention for background images), not an error.
* DOTA: optional ``imagesource:`` / ``gsd:`` header lines, then ``x1 y1 x2 y2 x3 y3 x4 y4 CLASS
  DIFFICULT`` per object: an oriented box. The quadrilateral is kept (``meta["polygons"]``, image
  pixels) and the horizontal box around it is the sample's box.

SOURCE is the folder of ``*.txt`` files (sorted); images share their stem and live in
``options.images`` (default: ``images/`` beside the labels folder, as in YOLO and DOTA releases,
else the labels folder itself).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import (
    LabelledImage,
    checked_box,
    class_name,
    find_image,
    header_size,
    polygon_box,
    read_class_file,
)
from skymoe.data.convert.report import Converted, Tally
from skymoe.errors import DataError

LineParser = Callable[[list[str], LabelledImage, str, str], None]


def _numbers(fields: list[str], *, file: str, record: str) -> list[float]:
    try:
        return [float(v) for v in fields]
    except ValueError:
        raise DataError(f"expected numbers, got {' '.join(fields)!r}", file=file, record=record) from None


def _read_folder(source: Path, options: ConvertOptions, parse: LineParser, classes: list[str], *, keep_polygons: bool = False) -> Converted:
    if not source.is_dir():
        raise DataError("expected a folder of *.txt label files", file=str(source))
    files = sorted(p for p in source.glob("*.txt") if p.name not in ("classes.txt", "obj.names"))
    if not files:
        raise DataError("no *.txt label files", file=str(source))
    folder = options.images or (source.parent / "images" if (source.parent / "images").is_dir() else source)
    tally, labelled = Tally(options.on_error), []
    for txt in files:
        file = str(txt)
        try:
            path = find_image(folder, txt.stem, file=file, record=txt.stem)
            image = LabelledImage(path, header_size(path, None, file=file, record=txt.stem), txt.stem, keep_polygons=keep_polygons)
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    parse(line.split(), image, file, f"line {lineno}")
            labelled.append(image)
        except DataError as exc:
            tally.skip(exc, txt.name)
    return finish(labelled, options, tally, classes, dataset=options.dataset or source.parent.name)


def read_yolo(source: Path, options: ConvertOptions) -> Converted:
    if options.classes is None:
        raise DataError("YOLO labels need the class-name file (--classes classes.txt: one name a line)", file=str(source))
    names = read_class_file(options.classes)

    def parse(fields: list[str], image: LabelledImage, file: str, record: str) -> None:
        if len(fields) != 5:
            raise DataError(f"expected 'CLASS CX CY W H', got {' '.join(fields)!r}", file=file, record=record)
        label = class_name(names, fields[0], file=file, record=record, class_file=options.classes)
        cx, cy, w, h = _numbers(fields[1:], file=file, record=record)
        width, height = image.size
        image.add(checked_box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                              label, image.size, file=file, record=record))

    return _read_folder(source, options, parse, list(names.values()))


def read_dota(source: Path, options: ConvertOptions) -> Converted:
    def parse(fields: list[str], image: LabelledImage, file: str, record: str) -> None:
        if fields[0].startswith(("imagesource:", "gsd:")):
            return
        if len(fields) not in (9, 10):
            raise DataError(f"expected 'x1 y1 x2 y2 x3 y3 x4 y4 CLASS [DIFFICULT]', got {' '.join(fields)!r}", file=file, record=record)
        xy = _numbers(fields[:8], file=file, record=record)
        polygon = list(zip(xy[0::2], xy[1::2]))
        box = polygon_box(polygon, fields[8])
        image.add(checked_box(*box.as_tuple(), fields[8], image.size, file=file, record=record), polygon)

    classes = sorted(read_class_file(options.classes).values()) if options.classes else []
    return _read_folder(source, options, parse, classes, keep_polygons=True)
