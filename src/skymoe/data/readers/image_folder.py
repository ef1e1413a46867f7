"""Image-folder classification layouts (UCM, AID, RESISC45, EuroSAT): ``root/<class>/<image>``.

``classes`` fixes the label set (a list of folder names, or a mapping folder
name -> label); folders outside it are an error (or skips). Without it every
sub-folder is a class, sorted. Labels are written with spaces for
underscores (``dense_residential`` -> ``dense residential``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from skymoe.data.imagery import image_size
from skymoe.data.readers import Collector, SampleList
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
PROMPT = "What is the scene category of this image?"


def read_image_folder(
    root: str | Path,
    *,
    classes: Sequence[str] | Mapping[str, str] | None = None,
    split: str = "",
    on_error: str = "raise",
    dataset: str | None = None,
) -> SampleList:
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", file=str(root))
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = folders
    labels = dict(classes) if isinstance(classes, Mapping) else {c: c.replace("_", " ") for c in classes}
    missing = sorted(set(labels) - set(folders))
    if missing:
        raise DataError(f"class folders {missing} not found", file=str(root), field="classes")
    dataset = dataset or root.name
    out = Collector(root, on_error)
    for folder in folders:
        for path in sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            record = f"{folder}/{path.name}"

            def build(folder=folder, path=path, record=record) -> Sample:
                if folder not in labels:
                    raise DataError(f"folder {folder!r} is not one of the classes {sorted(labels)}", file=str(path), record=record, field="class")
                return Sample(
                    id=f"{dataset}/{record}",
                    image=str(path),
                    task=Task.CLASSIFICATION,
                    granularity=Granularity.IMAGE,
                    conversation=[Turn("user", PROMPT), Turn("assistant", labels[folder])],
                    image_size=image_size(path),
                    question_type="scene",
                    dataset=dataset,
                    split=split,
                    meta={"label": labels[folder], "classes": sorted(labels.values())},
                )

            out.add(build, record=record)
    return out.result()
