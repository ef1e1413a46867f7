"""Karpathy caption JSON (UCM-Captions, Sydney-Captions, RSICD, NWPU-Captions).

``{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens"}], "sentids"}], "dataset"}``;
images live in ``image_dir`` (default: ``images/`` beside the JSON).
One ``caption`` / ``image`` sample per image whose target is its first
sentence and whose ``meta["references"]`` lists every sentence (for the
caption metrics); ``per_sentence=True`` gives one sample per sentence instead
(more training targets for the same image).
"""
from __future__ import annotations

from pathlib import Path

from skymoe.data.imagery import image_size
from skymoe.data.readers import Collector, SampleList, load_json, require
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

PROMPT = "Describe this remote sensing image in one sentence."


def read_karpathy(
    json_path: str | Path,
    split: str,
    *,
    image_dir: str | Path | None = None,
    per_sentence: bool = False,
    on_error: str = "raise",
    dataset: str | None = None,
) -> SampleList:
    json_path = Path(json_path)
    data = load_json(json_path)
    dataset = dataset or (data.get("dataset") if isinstance(data, dict) else None) or json_path.stem
    image_dir = Path(image_dir) if image_dir else json_path.parent / "images"
    file = str(json_path)
    out = Collector(json_path, on_error)

    def build(entry: dict, record: str, sentence: int | None) -> Sample:
        references = [str(require(s, "raw", file=file, record_id=record)).strip() for s in require(entry, "sentences", file=file, record_id=record)]
        if not references or not all(references):
            raise DataError("no (or an empty) caption sentence", file=file, record=record, field="sentences")
        path = image_dir / str(require(entry, "filename", file=file, record_id=record))
        target = references[sentence or 0]
        return Sample(
            id=f"{dataset}/{split}/{record}" + (f"/{sentence}" if sentence is not None else ""),
            image=str(path),
            task=Task.CAPTION,
            granularity=Granularity.IMAGE,
            conversation=[Turn("user", PROMPT), Turn("assistant", target)],
            image_size=image_size(path),
            dataset=dataset,
            split=split,
            meta={"references": references, "filename": entry["filename"]},
        )

    for index, entry in enumerate(require(data, "images", file=file, record_id=None)):
        record = str(entry.get("imgid", index)) if isinstance(entry, dict) else str(index)
        if isinstance(entry, dict) and entry.get("split", split) != split:
            continue
        if per_sentence and isinstance(entry, dict) and isinstance(entry.get("sentences"), list):
            for k in range(len(entry["sentences"])):
                out.add(lambda e=entry, r=record, k=k: build(e, r, k), record=f"{record}/{k}")
        else:
            out.add(lambda e=entry, r=record: build(e, r, None), record=record)
    return out.result()
