"""Pascal-VOC XML: one file per image (``filename``, ``size/width|height``, ``object`` with ``name``
and ``bndbox/xmin|ymin|xmax|ymax``). SOURCE is a folder of ``*.xml`` (sorted) or one file.

Images live in ``options.images`` (default: ``JPEGImages/`` beside the XML folder when it
exists, as in VOC and DeepForest's data, else the XML's own folder).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import finish
from skymoe.data.convert.labelled import LabelledImage, checked_box, find_image, header_size, require_nonempty
from skymoe.data.convert.report import Converted, Tally
from skymoe.data.readers.dior_rsvg import xml_number, xml_text
from skymoe.errors import DataError

CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _xml_files(source: Path) -> list[Path]:
    require_nonempty(source)
    files = sorted(source.glob("*.xml")) if source.is_dir() else [source]
    if not files:
        raise DataError("no *.xml annotation files", file=str(source))
    return files


def _image(xml: Path, folder: Path) -> LabelledImage:
    file = str(xml)
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise DataError(f"malformed XML ({exc})", file=file) from None
    name = xml_text(root, "filename", file=file, record=xml.stem)
    path = find_image(folder, name, file=file, record=xml.stem)
    declared = None
    if root.find("size/width") is not None:
        declared = tuple(int(xml_number(root, f"size/{k}", file=file, record=xml.stem)) for k in ("width", "height"))
    size = header_size(path, declared, file=file, record=xml.stem)
    image = LabelledImage(path, size, xml.stem)
    for k, obj in enumerate(root.findall("object")):
        record = f"object {k}"
        corners = [xml_number(obj, f"bndbox/{c}", file=file, record=record) for c in CORNERS]
        image.add(checked_box(*corners, xml_text(obj, "name", file=file, record=record), size, file=file, record=record))
    return image


def read_voc(source: Path, options: ConvertOptions) -> Converted:
    files = _xml_files(source)
    xml_dir = source if source.is_dir() else source.parent
    folder = options.images or (xml_dir.parent / "JPEGImages" if (xml_dir.parent / "JPEGImages").is_dir() else xml_dir)
    tally, labelled = Tally(options.on_error), []
    for xml in files:
        try:
            labelled.append(_image(xml, folder))
        except DataError as exc:
            tally.skip(exc, xml.name)
    return finish(labelled, options, tally, [], dataset=options.dataset or xml_dir.name)
