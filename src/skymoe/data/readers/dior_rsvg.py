"""DIOR-RSVG (Zhan et al., IEEE TGRS 2023): visual grounding in VOC-style XML.

Layout: ``Annotations/*.xml`` (one ``<object>`` per referred box with
``<name>``, ``<bndbox>`` and ``<description>``), ``JPEGImages/`` and
``{train,val,test}.txt`` holding integer indices into the list of ALL objects,
enumerated over the XML files **sorted by name** and then in file order (the
published split files assume that order; an unsorted directory listing
silently mixes splits).

``task="grounding"`` (default): description -> canonical box text, granularity
``object``. ``task="region_caption"``: box -> description.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from skymoe.data.boxes import format_box
from skymoe.data.readers import Collector, SampleList
from skymoe.data.schema import Box, Granularity, Sample, Task, Turn
from skymoe.errors import DataError

GROUNDING_PROMPT = "Give the bounding box of: {description}"
REGION_PROMPT = "Describe the object in {box}."


def xml_text(node: ET.Element, path: str, *, file: str, record: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DataError("missing element", file=file, record=record, field=path)
    return found.text.strip()


def xml_number(node: ET.Element, path: str, *, file: str, record: str) -> float:
    value = xml_text(node, path, file=file, record=record)
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{value!r} is not a number", file=file, record=record, field=path) from None


def list_objects(annotation_dir: Path) -> list[tuple[Path, int]]:
    """(xml file, object index in file) for every object, in the order the split indices use."""
    objects = []
    for xml in sorted(annotation_dir.glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise DataError(f"malformed XML ({exc})", file=str(xml)) from None
        objects.extend((xml, i) for i in range(len(root.findall("object"))))
    return objects


def _read_indices(path: Path) -> list[int]:
    if not path.is_file():
        raise DataError("split file not found", file=str(path))
    indices = []
    for lineno, line in enumerate(path.read_text().split("\n"), 1):
        if line.strip():
            try:
                indices.append(int(line.strip()))
            except ValueError:
                raise DataError(f"{line.strip()!r} is not an object index", file=str(path), record=f"line {lineno}") from None
    return indices


def read_dior_rsvg(root: str | Path, split: str, *, task: str | Task = Task.GROUNDING, on_error: str = "raise", dataset: str = "dior_rsvg") -> SampleList:
    root, task = Path(root), Task(task)
    if task not in (Task.GROUNDING, Task.REGION_CAPTION):
        raise ValueError(f"task must be grounding or region_caption, got {task.value}")
    objects = list_objects(root / "Annotations")
    split_file = root / f"{split}.txt"
    out = Collector(split_file, on_error)

    def build(index: int) -> Sample:
        if not 0 <= index < len(objects):
            raise DataError(f"object index {index} out of range (0..{len(objects) - 1})", file=str(split_file), record=index)
        xml, k = objects[index]
        file, record = str(xml), f"object {k}"
        ann = ET.parse(xml).getroot()
        obj = ann.findall("object")[k]
        size = (int(xml_number(ann, "size/width", file=file, record=record)), int(xml_number(ann, "size/height", file=file, record=record)))
        box = Box(*(xml_number(obj, f"bndbox/{c}", file=file, record=record) for c in ("xmin", "ymin", "xmax", "ymax")),
                  label=xml_text(obj, "name", file=file, record=record))  # fmt: skip
        box.validate(size, file=file, record=record)
        description = xml_text(obj, "description", file=file, record=record)
        box_text = format_box(box, size)
        if task == Task.GROUNDING:
            turns = [Turn("user", GROUNDING_PROMPT.format(description=description)), Turn("assistant", box_text)]
        else:
            turns = [Turn("user", REGION_PROMPT.format(box=box_text)), Turn("assistant", description)]
        image = root / "JPEGImages" / (ann.findtext("filename") or f"{xml.stem}.jpg")
        if not image.is_file():
            raise DataError("image file not found", file=str(image), record=record, field="filename")
        return Sample(
            id=f"{dataset}/{split}/{index}",
            image=str(image),
            task=task,
            granularity=Granularity.OBJECT,
            conversation=turns,
            image_size=size,
            boxes=[box],
            question_type=box.label,
            dataset=dataset,
            split=split,
            meta={"description": description, "annotation": xml.name, "object": k},
        )

    for index in _read_indices(split_file):
        out.add(lambda index=index: build(index), record=str(index))
    return out.result()
