"""BigEarthNet v1 (Sumbul et al., IGARSS 2019) from the encoded LMDB + split CSVs.

Layout: ``BigEarthNetEncoded.lmdb/`` (key = S2 patch name, value = a pickled
``bigearthnet_patch_interface`` patch holding 12 Sentinel-2 bands + 2 S1
bands + labels) and ``{train,val,test}.csv`` (one patch name per row).

Each patch becomes one ``multilabel`` / ``image`` sample. Its image is the
true-colour composite (B04, B03, B02; 120x120 at 10 m) stretched per band to
8 bits (2-98 percentiles) and written once as PNG under
``$SKYMOE_CACHE/derived/bigearthnet-v1-rgb/`` so ``Sample.image`` is a file.
The answer lists the labels (19-class nomenclature by default, ``labels="43"``
for the original one) sorted and joined by ``"; "`` — not commas, because
class names contain commas ("... agriculture, with significant areas of
natural vegetation"). ``meta["labels"]`` holds the list.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
from pathlib import Path

import numpy as np

from skymoe.data.imagery import load_image
from skymoe.data.prompts import LABEL_SEPARATOR
from skymoe.data.prompts import MULTILABEL_QUESTION as QUESTION
from skymoe.data.readers import Collector, SampleList
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

RGB_BANDS = ("B04", "B03", "B02")
LMDB_DIR = "BigEarthNetEncoded.lmdb"


class _Record:
    """Stand-in for the patch classes of ``bigearthnet_patch_interface``: keeps their attribute dict."""

    def __setstate__(self, state):
        # pydantic v1 pickles (__dict__, __fields_set__, ...) as a dict holding "__dict__"
        self.fields = state.get("__dict__", state) if isinstance(state, dict) else state[0]


class _PatchUnpickler(pickle.Unpickler):
    """Unpickles BigEarthNet patches without their package (which pins pydantic<2).

    Hand-written because no library reads this encoding without installing
    that package; it also refuses every global except numpy arrays and the
    patch classes, so a tampered LMDB cannot run code.
    """

    _NUMPY = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                        ("numpy", "ndarray"), ("numpy", "dtype")})  # fmt: skip

    def find_class(self, module: str, name: str):
        if module.startswith("bigearthnet_patch_interface."):
            return _Record
        if (module, name) in self._NUMPY:
            return _numpy_global(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a BigEarthNet patch")


def _numpy_global(name: str):
    if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
        import importlib

        multiarray = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return importlib.import_module(multiarray)._reconstruct
    return getattr(np, name)


def decode_patch(blob: bytes, *, file: str, record: str) -> dict:
    """{"bands": {name: 2-D array}, "labels": [...43-class], "new_labels": [...19-class]} of one LMDB value."""
    try:
        patch = _PatchUnpickler(io.BytesIO(blob)).load().fields
        bands = {b.fields["name"]: b.fields["data"] for b in patch["s2_patch"].fields["bands"]}
        return {"bands": bands, "labels": list(patch["labels"]), "new_labels": list(patch["new_labels"])}
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise DataError(f"cannot decode BigEarthNet patch ({type(exc).__name__}: {exc})", file=file, record=record) from None


def _derived_dir() -> Path:
    from skymoe.assets import cache_dir

    return cache_dir() / "derived" / "bigearthnet-v1-rgb"


def _write_rgb(patch: dict, path: Path, *, file: str, record: str) -> None:
    try:
        data = np.stack([patch["bands"][b] for b in RGB_BANDS])
    except (KeyError, ValueError) as exc:
        raise DataError(f"patch lacks a 10 m band of {RGB_BANDS} ({exc})", file=file, record=record, field="bands") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    load_image(data, stretch=(2, 98)).save(tmp, format="PNG")
    os.replace(tmp, path)  # atomic: concurrent readers see the old file or the complete new one


def read_split_names(path: Path) -> list[str]:
    try:
        with path.open(newline="") as f:
            return [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
    except FileNotFoundError:
        raise DataError("split file not found", file=str(path)) from None


def read_bigearthnet(
    root: str | Path,
    split: str,
    *,
    labels: str = "19",
    derived_dir: str | Path | None = None,
    on_error: str = "raise",
    dataset: str = "bigearthnet",
) -> SampleList:
    import lmdb

    if labels not in ("19", "43"):
        raise ValueError(f"labels must be '19' or '43', got {labels!r}")
    root = Path(root)
    lmdb_path = root / LMDB_DIR
    if not (lmdb_path / "data.mdb").is_file():
        raise DataError("LMDB data.mdb not found", file=str(lmdb_path))
    names = read_split_names(root / f"{split}.csv")
    derived = Path(derived_dir) if derived_dir else _derived_dir()
    out = Collector(root / f"{split}.csv", on_error)
    try:
        env = lmdb.open(str(lmdb_path), readonly=True, lock=False, readahead=False)
    except lmdb.Error as exc:
        raise DataError(f"cannot open the LMDB ({exc})", file=str(lmdb_path)) from None

    def build(name: str) -> Sample:
        with env.begin() as txn:
            blob = txn.get(name.encode())
        if blob is None:
            raise DataError("patch not in the LMDB", file=str(lmdb_path), record=name)
        patch = decode_patch(blob, file=str(lmdb_path), record=name)
        classes = sorted(patch["new_labels" if labels == "19" else "labels"])
        if not classes:
            raise DataError("patch has no labels", file=str(lmdb_path), record=name, field="labels")
        image = derived / f"{name}.png"
        if not image.is_file():
            _write_rgb(patch, image, file=str(lmdb_path), record=name)
        h, w = patch["bands"]["B04"].shape
        return Sample(
            id=f"{dataset}/{split}/{name}",
            image=str(image),
            task=Task.MULTILABEL,
            granularity=Granularity.IMAGE,
            conversation=[Turn("user", QUESTION), Turn("assistant", LABEL_SEPARATOR.join(classes))],
            image_size=(w, h),
            question_type=f"land_cover_{labels}",
            dataset=dataset,
            split=split,
            meta={"labels": classes, "patch": name},
        )

    try:
        for name in names:
            out.add(lambda name=name: build(name), record=name)
    finally:
        env.close()
    return out.result()
