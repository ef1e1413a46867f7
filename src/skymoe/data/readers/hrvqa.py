"""HRVQA (Li et al., ISPRS J. 2024): VQA-v2 style JSON.

``jsons/{split}_question.json`` = ``{"questions": [{image_id, question,
question_id, question_type}]}``; ``jsons/{split}_answer.json`` =
``{"annotations": [{question_id, multiple_choice_answer}]}`` (absent for the
test split: its samples then hold only the question). Images:
``images/{image_id}.png``. Question types: ``yes no``, ``numbers``, ``color``,
``scene``, ``size``, ``areas``, ``location``, ``transportation``; task ``vqa``
for all (``numbers`` too, as RSVQA's ``count``; see :mod:`.rsvqa`), granularity ``image``.
"""
from __future__ import annotations

from pathlib import Path

from skymoe.data.imagery import image_size
from skymoe.data.readers import Collector, SampleList, load_json, require
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

QUESTION_TYPES = ("yes no", "numbers", "color", "scene", "size", "areas", "location", "transportation")


def read_hrvqa(root: str | Path, split: str, *, on_error: str = "raise", dataset: str = "hrvqa") -> SampleList:
    root = Path(root)
    qfile, afile = root / "jsons" / f"{split}_question.json", root / "jsons" / f"{split}_answer.json"
    questions = require(load_json(qfile), "questions", file=str(qfile), record_id=None)
    answers = None
    if afile.exists():
        annotations = require(load_json(afile), "annotations", file=str(afile), record_id=None)
        answers = {a.get("question_id"): a for a in annotations if isinstance(a, dict)}
    out = Collector(qfile, on_error)

    def build(q: dict, qid) -> Sample:
        qtype = require(q, "question_type", file=str(qfile), record_id=qid)
        if qtype not in QUESTION_TYPES:
            raise DataError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}", file=str(qfile), record=qid, field="question_type")
        turns = [Turn("user", str(require(q, "question", file=str(qfile), record_id=qid)))]
        if answers is not None:
            if qid not in answers:
                raise DataError("question has no annotation", file=str(afile), record=qid, field="question_id")
            turns.append(Turn("assistant", str(require(answers[qid], "multiple_choice_answer", file=str(afile), record_id=qid))))
        path = root / "images" / f"{require(q, 'image_id', file=str(qfile), record_id=qid)}.png"
        return Sample(
            id=f"{dataset}/{split}/{qid}",
            image=str(path),
            task=Task.VQA,
            granularity=Granularity.IMAGE,
            conversation=turns,
            image_size=image_size(path),
            question_type=qtype,
            dataset=dataset,
            split=split,
            meta={"image_id": q["image_id"], "image_name": q.get("image_name")},
        )

    for q in questions:
        qid = q.get("question_id") if isinstance(q, dict) else None
        out.add(lambda q=q, qid=qid: build(q, qid), record=str(qid))
    return out.result()
