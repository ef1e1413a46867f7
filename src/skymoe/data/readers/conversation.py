"""GeoChat / LLaVA conversation JSON (a list) or JSONL (one record a line).

Record: ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``.
GeoChat's task token in the first human turn sets task and granularity:

============== ================ ===========
token          task             granularity
============== ================ ===========
``[grounding]`` grounding        region  (grounded scene description, several boxes)
``[refer]``     grounding        object  (referring expression -> box)
``[identify]``  region_caption   object  (box -> description)
``[vqa]``       vqa              image
``[caption]``   caption          image
(none)         ``default_task``  image
============== ================ ===========

The ``<image>`` placeholder and the task token are removed (our processor
places image tokens itself); GeoChat boxes ``{<x1><y1><x2><y2>|<θ>}`` are
rewritten as canonical box text and collected in ``Sample.boxes`` (pixels,
using the image size read from the image header).

:func:`to_llava_record` / :func:`write_conversations` give the inverse view:
samples as GeoChat/LLaVA records (task token, ``<image>`` placeholder, boxes
in the chosen style), e.g. to train a peer model on our data.
"""
from __future__ import annotations

import json
from pathlib import Path

from skymoe.data.boxes import convert_box_text
from skymoe.data.imagery import image_size
from skymoe.data.readers import Collector, SampleList, load_json, require
from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError

TASK_TOKENS = {
    "[grounding]": (Task.GROUNDING, Granularity.REGION),
    "[refer]": (Task.GROUNDING, Granularity.OBJECT),
    "[identify]": (Task.REGION_CAPTION, Granularity.OBJECT),
    "[vqa]": (Task.VQA, Granularity.IMAGE),
    "[caption]": (Task.CAPTION, Granularity.IMAGE),
}
TOKEN_OF = {v: k for k, v in TASK_TOKENS.items()}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
IMAGE_PLACEHOLDER = "<image>"


def _records(path: Path) -> list[tuple[str, object]]:
    """(record name, record) pairs of a JSON list or a JSONL file."""
    if path.suffix.lower() != ".jsonl":
        data = load_json(path)
        if not isinstance(data, list):
            raise DataError("expected a JSON list of conversation records", file=str(path))
        return [(str(r.get("id", i)) if isinstance(r, dict) else str(i), r) for i, r in enumerate(data)]
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            records.append((f"line {lineno}", DataError(f"malformed JSON ({exc.msg})", file=str(path), record=f"line {lineno}")))
    return records


def task_of(first_user_text: str, default_task: Task) -> tuple[Task, Granularity, str]:
    """Task, granularity and the instruction without placeholder/task token."""
    text = first_user_text.replace(IMAGE_PLACEHOLDER, "").strip()
    for token, (task, granularity) in TASK_TOKENS.items():
        if text.startswith(token):
            return task, granularity, text[len(token):].strip()
    return default_task, Granularity.IMAGE, text


def read_conversations(
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    split: str = "",
    default_task: str | Task = Task.VQA,
    box_style: str = "geochat",
    on_error: str = "raise",
    dataset: str | None = None,
) -> SampleList:
    path = Path(path)
    file = str(path)
    image_dir = Path(image_dir) if image_dir else path.parent
    dataset = dataset or path.stem
    out = Collector(path, on_error)

    def build(record: str, r) -> Sample:
        if isinstance(r, DataError):
            raise r
        turns_raw = require(r, "conversations", file=file, record_id=record)
        if not isinstance(turns_raw, list) or not turns_raw:
            raise DataError("conversation is empty", file=file, record=record, field="conversations")
        image = image_dir / str(require(r, "image", file=file, record_id=record))
        size = image_size(image)
        turns, boxes = [], []
        for i, t in enumerate(turns_raw):
            role = ROLES.get(t.get("from")) if isinstance(t, dict) else None
            if role is None or not isinstance(t.get("value"), str):
                raise DataError(f"turn {i} needs 'from' in {sorted(ROLES)} and a string 'value'", file=file, record=record, field="conversations")
            try:
                text, found = convert_box_text(t["value"], size, box_style)
            except ValueError as exc:
                raise DataError(f"turn {i}: {exc}", file=file, record=record, field="conversations") from None
            turns.append(Turn(role, text))
            boxes.extend(b for b in found if b not in boxes)
        task, granularity, instruction = task_of(turns[0].text, Task(default_task))
        turns[0] = Turn(turns[0].role, instruction)
        sample = Sample(
            id=f"{dataset}/{r.get('id', record)}",
            image=str(image),
            task=task,
            granularity=granularity,
            conversation=turns,
            image_size=size,
            boxes=boxes,
            dataset=dataset,
            split=split,
        )
        return sample.validate(file=file)

    for record, r in _records(path):
        out.add(lambda record=record, r=r: build(record, r), record=record)
    return out.result()


def to_llava_record(sample: Sample, *, box_style: str = "geochat", image_root: str | Path | None = None) -> dict:
    """The GeoChat/LLaVA record of ``sample`` (image path relative to ``image_root`` when given)."""
    if sample.image_size is None and sample.boxes:
        raise DataError("image_size is needed to write boxes", record=sample.id, field="image_size")
    size = sample.image_size or (1, 1)
    conversations = []
    for i, turn in enumerate(sample.conversation):
        text = convert_box_text(turn.text, size, "canonical", box_style)[0] if sample.image_size else turn.text
        if i == 0:
            token = TOKEN_OF.get((sample.task, sample.granularity))
            text = f"{IMAGE_PLACEHOLDER}\n" + (f"{token} " if token else "") + text
        conversations.append({"from": "human" if turn.role == "user" else "gpt", "value": text})
    image = Path(sample.image)
    if image_root is not None:
        image = image.relative_to(Path(image_root).resolve())
    return {"id": sample.id, "image": str(image), "conversations": conversations}


def write_conversations(samples, path: str | Path, *, box_style: str = "geochat", image_root: str | Path | None = None) -> int:
    """Write samples as a GeoChat/LLaVA JSON list (``.json``) or JSONL (``.jsonl``); returns the count."""
    path = Path(path)
    records = [to_llava_record(s, box_style=box_style, image_root=image_root) for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        if path.suffix.lower() == ".jsonl":
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            json.dump(records, f, ensure_ascii=False, indent=1)
    tmp.replace(path)
    return len(records)
