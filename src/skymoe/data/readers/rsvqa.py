"""RSVQA-LR and RSVQA-HR (Lobry et al., IEEE TGRS 2020) in their original JSON layout.

Per split three files ``{LR|USGS}_split_{split}_{questions,answers,images}.json``
(``USGS`` = HR; HR also has ``test_phili``). Images: LR ``Images_LR/{id}.tif``,
HR ``Images/Data/{id}.tif``. Questions and images carry ``active``; inactive
ones are left out and counted in ``SampleList.excluded``.

Sample conventions:

* granularity ``image``; task ``vqa`` for every question, count questions
  included: they are free-form questions of a VQA benchmark, scored by RSVQA's
  accuracy. Task ``counting`` is kept for instructions that ask for a count of
  annotated objects (MGRS-mini), which MGRS-mini also phrases as VQA questions
  with question type ``count`` — the same convention as here.
  ``question_type`` keeps RSVQA's type (``presence``, ``comp``, ``count``,
  ``rural_urban`` for LR, ``area`` for HR).
* count answers stay exact (``"442"``); ``meta["answer_bin"]`` holds the
  binned answer used by the RSVQA papers: ``0``, ``1-10``, ``11-100``,
  ``101-1000``, ``>1000``. HR area answers (``"859m2"``) are binned the same way
  in m² (``0m2``, ``1-10m2``, ``11-100m2``, ``101-1000m2``, ``>1000m2``).
"""
from __future__ import annotations

import re
from pathlib import Path

from skymoe.data.imagery import image_size
from skymoe.data.readers import Collector, SampleList, load_json, require
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

VARIANTS = {
    "lr": {"prefix": "LR", "images": "Images_LR", "types": ("presence", "comp", "count", "rural_urban"),
           "splits": ("train", "val", "test")},
    "hr": {"prefix": "USGS", "images": "Images/Data", "types": ("presence", "comp", "count", "area"),
           "splits": ("train", "val", "test", "test_phili")},
}  # fmt: skip
COUNT_BIN_EDGES = (0, 10, 100, 1000)  # bin i holds values <= edge i; beyond the last: one more bin
_BIN_LABELS = ("0", "1-10", "11-100", "101-1000", ">1000")
_AREA = re.compile(r"^(\d+(?:\.\d+)?)m2$")


def count_bin(value: float) -> str:
    """RSVQA bin of a count (or area in m²): 0, 1-10, 11-100, 101-1000, >1000."""
    return _BIN_LABELS[next((i for i, edge in enumerate(COUNT_BIN_EDGES) if value <= edge), len(COUNT_BIN_EDGES))]


def answer_bin(question_type: str, answer: str) -> str | None:
    """Binned answer for count and area questions (None for other types); ValueError if not numeric."""
    if question_type == "count":
        return count_bin(int(answer))
    if question_type == "area":
        match = _AREA.match(answer)
        if not match:
            raise ValueError(f"area answer {answer!r} is not of the form '<number>m2'")
        return count_bin(float(match.group(1))) + "m2"
    return None


def detect_variant(root: Path) -> str:
    for name, spec in VARIANTS.items():
        if any(root.glob(f"{spec['prefix']}_split_*_questions.json")):
            return name
    raise DataError("no RSVQA files (LR_split_* or USGS_split_*) found", file=str(root))


def read_rsvqa(root: str | Path, split: str, *, variant: str | None = None, on_error: str = "raise", dataset: str | None = None) -> SampleList:
    """Samples of one RSVQA split from ``root`` (the folder with the split JSON files)."""
    root = Path(root)
    variant = variant or detect_variant(root)
    spec = VARIANTS[variant]
    dataset = dataset or f"rsvqa_{variant}"
    stem = root / f"{spec['prefix']}_split_{split}"
    files = {part: Path(f"{stem}_{part}.json") for part in ("questions", "answers", "images")}
    questions = require(load_json(files["questions"]), "questions", file=str(files["questions"]), record_id=None)
    answers = {a.get("id"): a for a in require(load_json(files["answers"]), "answers", file=str(files["answers"]), record_id=None)}
    images = {i.get("id"): i for i in require(load_json(files["images"]), "images", file=str(files["images"]), record_id=None)}

    out = Collector(files["questions"], on_error)
    sizes: dict[Path, tuple[int, int]] = {}

    def build(q: dict, qid) -> Sample:
        qfile = str(files["questions"])
        qtype = require(q, "type", file=qfile, record_id=qid)
        if qtype not in spec["types"]:
            raise DataError(f"unknown question type {qtype!r}; expected one of {spec['types']}", file=qfile, record=qid, field="type")
        answer_ids = require(q, "answers_ids", file=qfile, record_id=qid)
        if not isinstance(answer_ids, list) or not answer_ids or answer_ids[0] not in answers:
            raise DataError(f"answer id {answer_ids} not in {files['answers'].name}", file=qfile, record=qid, field="answers_ids")
        answer = str(require(answers[answer_ids[0]], "answer", file=str(files["answers"]), record_id=answer_ids[0]))
        try:
            binned = answer_bin(qtype, answer)
        except ValueError as exc:
            raise DataError(str(exc), file=str(files["answers"]), record=answer_ids[0], field="answer") from None
        img_id = require(q, "img_id", file=qfile, record_id=qid)
        path = root / spec["images"] / f"{img_id}.tif"
        if path not in sizes:
            sizes[path] = image_size(path)
        return Sample(
            id=f"{dataset}/{split}/{qid}",
            image=str(path),
            task=Task.VQA,
            granularity=Granularity.IMAGE,
            conversation=[Turn("user", str(require(q, "question", file=qfile, record_id=qid))), Turn("assistant", answer)],
            image_size=sizes[path],
            question_type=qtype,
            dataset=dataset,
            split=split,
            meta={"image_id": img_id, **({"answer_bin": binned} if binned is not None else {})},
        )

    for q in questions:
        qid = q.get("id") if isinstance(q, dict) else None
        if isinstance(q, dict) and not q.get("active", True):
            out.exclude("inactive question")
            continue
        if isinstance(q, dict) and not images.get(q.get("img_id"), {}).get("active", True):
            out.exclude("question on inactive image")
            continue
        out.add(lambda q=q, qid=qid: build(q, qid), record=str(qid))
    out.exclude("inactive image entry", sum(1 for i in images.values() if not i.get("active", True)))
    return out.result()
