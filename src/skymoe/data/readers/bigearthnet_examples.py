"""The six BigEarthNet-S2 example patches of ``bigearthnet-common`` (none of them among ConfigILM's 30).

Layout: ``BigEarthNet-S2-Example.tar.bz2`` holding one folder per patch with a GeoTIFF per band
(``<patch>_B04.tif`` ...) and ``<patch>_labels_metadata.json`` (``labels``: the original
43-class CORINE nomenclature; no 19-class labels). Read from the archive without unpacking it;
each patch becomes one ``multilabel`` sample (``question_type`` ``land_cover_43``) whose image is
the B04/B03/B02 composite written once as PNG under ``$SKYMOE_CACHE/derived/``, as
:mod:`skymoe.data.readers.bigearthnet` does for the LMDB patches.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from skymoe.data.prompts import LABEL_SEPARATOR
from skymoe.data.prompts import MULTILABEL_QUESTION as QUESTION
from skymoe.data.readers import Collector, SampleList
from skymoe.data.readers.bigearthnet import RGB_BANDS, _write_rgb
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

ARCHIVE = "BigEarthNet-S2-Example.tar.bz2"


def _patches(archive: Path) -> dict[str, dict]:
    """{patch: {"bands": {name: array}, "labels": [...]}} of every patch folder in the archive."""
    import rasterio

    patches: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:bz2") as tar:
            for member in tar.getmembers():
                path = Path(member.name)
                if not member.isfile() or len(path.parts) != 3:
                    continue
                patch = patches.setdefault(path.parts[1], {"bands": {}, "labels": None})
                data = tar.extractfile(member).read()
                if path.name.endswith("_labels_metadata.json"):
                    patch["labels"] = json.loads(data)["labels"]
                elif path.stem.rsplit("_", 1)[-1] in RGB_BANDS:
                    with rasterio.MemoryFile(data) as mem, mem.open() as ds:
                        patch["bands"][path.stem.rsplit("_", 1)[-1]] = ds.read(1)
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, KeyError) as exc:
        raise DataError(f"cannot read the example archive ({type(exc).__name__}: {exc})", file=str(archive)) from None
    return patches


def read_bigearthnet_examples(root: str | Path, split: str = "test", *, on_error: str = "raise",
                              dataset: str = "bigearthnet_examples") -> SampleList:
    from skymoe.assets import cache_dir

    archive = Path(root) / ARCHIVE
    derived = cache_dir() / "derived" / "bigearthnet-examples-rgb"
    out = Collector(archive, on_error)

    def build(name: str, patch: dict) -> Sample:
        if not patch["labels"]:
            raise DataError("patch has no labels", file=str(archive), record=name, field="labels")
        image = derived / f"{name}.png"
        if not image.is_file():
            _write_rgb(patch, image, file=str(archive), record=name)
        classes = sorted(patch["labels"])
        h, w = patch["bands"]["B04"].shape
        return Sample(id=f"{dataset}/{split}/{name}", image=str(image), task=Task.MULTILABEL, granularity=Granularity.IMAGE,
                      conversation=[Turn("user", QUESTION), Turn("assistant", LABEL_SEPARATOR.join(classes))],
                      image_size=(w, h), question_type="land_cover_43", dataset=dataset, split=split,
                      meta={"labels": classes, "patch": name})

    for name, patch in sorted(_patches(archive).items()):
        out.add(lambda name=name, patch=patch: build(name, patch), record=name)
    return out.result()
