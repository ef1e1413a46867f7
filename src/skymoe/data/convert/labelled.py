"""The common middle of every label format: one image and what is on it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from skymoe.data.imagery import image_size
from skymoe.data.readers.image_folder import IMAGE_SUFFIXES
from skymoe.data.schema import Box
from skymoe.errors import DataError

Polygon = list[tuple[float, float]]


@dataclass
class LabelledImage:
    """An image (or a window of one) with labelled objects and/or per-class area shares.

    ``polygons[i]`` is object i's outline in the image's pixels (a box's four corners for
    box formats; DOTA's quadrilateral; a vector polygon), so chips can clip it;
    ``boxes[i]`` is its horizontal box. ``shares`` (label raster) maps class -> area fraction.
    """

    image: Path
    size: tuple[int, int]  # (width, height)
    name: str  # unique within the conversion: sample ids start with it
    boxes: list[Box] = field(default_factory=list)
    polygons: list[Polygon] = field(default_factory=list)
    shares: dict[str, float] | None = None
    window: tuple[int, int, int, int] | None = None  # (x, y, w, h) of ``image`` when this is a chip
    keep_polygons: bool = False  # DOTA: the oriented outline is part of the label, kept in meta

    def add(self, box: Box, polygon: Polygon | None = None) -> None:
        self.boxes.append(box)
        self.polygons.append(polygon or box_polygon(box))


def box_polygon(box: Box) -> Polygon:
    return [(box.x1, box.y1), (box.x2, box.y1), (box.x2, box.y2), (box.x1, box.y2)]


def polygon_box(polygon: Polygon, label: str | None) -> Box:
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return Box(min(xs), min(ys), max(xs), max(ys), label)


def checked_box(x1, y1, x2, y2, label: str, size: tuple[int, int], *, file: str, record) -> Box:
    """A Box inside an image of ``size``; x2 < x1, an empty box or one outside the image is an error naming the file."""
    return Box(float(x1), float(y1), float(x2), float(y2), label).validate(size, file=file, record=record)


def find_image(folder: Path, name: str, *, file: str, record) -> Path:
    """``folder/name``; a bare stem (YOLO, DOTA) matches any image suffix. Missing: an error naming the label file."""
    path = folder / name
    if path.is_file():
        return path
    if not Path(name).suffix:
        for suffix in sorted(IMAGE_SUFFIXES):
            for candidate in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    raise DataError(f"names image {name!r}, which is not in {folder}", file=file, record=record, field="image")


def header_size(path: Path, declared: tuple[int, int] | None, *, file: str, record) -> tuple[int, int]:
    """The image's real size; a label file that declares another size is an error (its boxes would be scaled wrong)."""
    size = image_size(path)
    if declared is not None and tuple(declared) != size:
        raise DataError(f"declares size {declared[0]}x{declared[1]} but {path} is {size[0]}x{size[1]}",
                              file=file, record=record, field="size")
    return size


_VALUE_LINE = re.compile(r"^\s*(-?\d+)\s*[:,\t=]\s*(.+?)\s*$")


def read_class_file(path: Path) -> dict[int, str]:
    """Class id -> name. Lines ``NAME`` (id = 0-based line number: YOLO's classes.txt / obj.names) or
    ``VALUE: NAME`` / ``VALUE,NAME`` / ``VALUE<tab>NAME`` (label rasters: pixel value -> name)."""
    if not path.is_file():
        raise DataError("class-name file not found", file=str(path))
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataError("class-name file is empty; expected one class name a line", file=str(path))
    matches = [_VALUE_LINE.match(line) for line in lines]
    if all(matches):
        return {int(m.group(1)): m.group(2) for m in matches}
    return dict(enumerate(lines))


def class_name(classes: dict[int, str], value, *, file: str, record, class_file: Path | None) -> str:
    """The name of class ``value``; an unknown id is an error that names both files."""
    try:
        return classes[int(value)]
    except (KeyError, ValueError):
        known = f"{min(classes)}..{max(classes)}" if classes else "none"
        source = f" (the class file {class_file} names {len(classes)} classes, ids {known})" if class_file else ""
        raise DataError(f"unknown class id {value!r}{source}", file=file, record=record, field="class") from None


def require_nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError("label file not found", file=str(path))
    if path.is_file() and path.stat().st_size == 0:
        raise DataError("label file is empty (0 bytes)", file=str(path))
