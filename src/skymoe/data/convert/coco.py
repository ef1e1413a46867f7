"""COCO detection JSON: ``images`` (id, file_name, width, height), ``annotations`` (image_id,
category_id, bbox = [x, y, width, height] in pixels), ``categories`` (id, name).

Images live in ``options.images`` (default: the JSON's folder). Duplicate ids in any of the
three lists are an error: COCO tools silently keep the last one, mixing two images' labels.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import LabelledImage, checked_box, class_name, find_image, header_size, require_nonempty
from skymoe.data.convert.report import Converted, Tally
from skymoe.data.readers import load_json, require
from skymoe.errors import DataError


def _by_id(records, key: str, *, file: str) -> dict:
    if not isinstance(records, list):
        raise DataError("expected a list", file=file, field=key)
    ids = [require(r, "id", file=file, record_id=f"{key}[{i}]") for i, r in enumerate(records)]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise DataError(f"duplicate ids {duplicates[:5]}; every id must be unique", file=file, field=key)
    return dict(zip(ids, records))


def _image(record: dict, annotations: list[dict], categories: dict[int, str], folder: Path, file: str) -> LabelledImage:
    name = str(require(record, "file_name", file=file, record_id=record["id"]))
    path = find_image(folder, name, file=file, record=f"image {record['id']}")
    declared = (record["width"], record["height"]) if "width" in record and "height" in record else None
    size = header_size(path, declared, file=file, record=f"image {record['id']}")
    image = LabelledImage(path, size, Path(name).stem)
    for ann in annotations:
        record_id = f"annotation {ann.get('id')}"
        label = class_name(categories, require(ann, "category_id", file=file, record_id=record_id), file=file, record=record_id, class_file=None)
        bbox = require(ann, "bbox", file=file, record_id=record_id)
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"expected [x, y, width, height], got {bbox!r}", file=file, record=record_id, field="bbox")
        x, y, w, h = bbox
        image.add(checked_box(x, y, x + w, y + h, label, size, file=file, record=record_id))
    return image


def read_coco(source: Path, options: ConvertOptions) -> Converted:
    require_nonempty(source)
    file = str(source)
    data = load_json(source)
    if not isinstance(data, dict) or not data.get("images"):
        raise DataError("no images; expected a COCO object with 'images', 'annotations' and 'categories'", file=file)
    images = _by_id(data["images"], "images", file=file)
    annotations = _by_id(data.get("annotations", []), "annotations", file=file)
    categories = {k: str(require(c, "name", file=file, record_id=f"category {k}"))
                  for k, c in _by_id(data.get("categories", []), "categories", file=file).items()}
    per_image: dict = {k: [] for k in images}
    for ann in annotations.values():
        image_id = require(ann, "image_id", file=file, record_id=f"annotation {ann['id']}")
        if image_id not in per_image:
            raise DataError(f"refers to image id {image_id!r}, which 'images' does not list", file=file,
                                  record=f"annotation {ann['id']}", field="image_id")
        per_image[image_id].append(ann)
    tally, folder, labelled = Tally(options.on_error), options.images or source.parent, []
    for image_id, record in images.items():
        try:
            labelled.append(_image(record, per_image[image_id], categories, folder, file))
        except DataError as exc:
            tally.skip(exc, f"image {image_id}")
    return finish(labelled, options, tally, list(categories.values()), dataset=options.dataset or source.stem)
