"""One sample schema for every task, granularity and source dataset.

Every reader turns its native format into :class:`Sample`; every later layer
(collator, training, evaluation, inference) consumes only this. Boxes are kept
in ONE canonical form: pixel ``xyxy`` in the coordinates of the full image,
together with the image size, so converters to model text formats
(:mod:`skymoe.data.boxes`) can scale them.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator


class SkyMoEDataError(ValueError):
    """Bad input data. The message names the file, the record and the field."""

    def __init__(self, message: str, *, file: str | None = None, record: Any = None, field: str | None = None):
        self.file, self.record, self.field = file, record, field
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"record {record}" if record is not None else "",
                f"field '{field}'" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class Task(str, Enum):
    CAPTION = "caption"
    VQA = "vqa"
    CLASSIFICATION = "classification"
    MULTILABEL = "multilabel"
    GROUNDING = "grounding"
    REGION_CAPTION = "region_caption"
    COUNTING = "counting"

    @property
    def index(self) -> int:
        return TASKS.index(self)


class Granularity(str, Enum):
    IMAGE = "image"
    REGION = "region"
    OBJECT = "object"

    @property
    def index(self) -> int:
        return GRANULARITIES.index(self)


# Fixed orders: router heads and saved checkpoints index tasks/granularities by these.
TASKS: list[Task] = list(Task)
GRANULARITIES: list[Granularity] = list(Granularity)


@dataclass
class Routing:
    """What the router decided for one sample (absent for a dense model).

    Defined here, torch-free, because predictions (eval), answers (infer) and responses (serve) all carry it.
    """

    task: str  # predicted task (argmax of the router's task head)
    granularity: str  # predicted granularity
    expert_weights: list[list[float]]  # [moe layer][expert]: mean gate weight over the sample's tokens


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates of the full image (x1 < x2, y1 < y2)."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def validate(self, image_size: tuple[int, int] | None, *, file: str | None = None, record: Any = None) -> "Box":
        """Return self if finite, non-empty and inside ``image_size`` (W, H); raise otherwise."""
        values = self.as_tuple()
        if not all(math.isfinite(v) for v in values):
            raise SkyMoEDataError(f"box {values} has non-finite coordinates", file=file, record=record, field="boxes")
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise SkyMoEDataError(f"box {values} is empty; expected x1<x2 and y1<y2", file=file, record=record, field="boxes")
        if image_size is not None:
            w, h = image_size
            if self.x1 < 0 or self.y1 < 0 or self.x2 > w or self.y2 > h:
                raise SkyMoEDataError(
                    f"box {values} lies outside the image of size {w}x{h}", file=file, record=record, field="boxes"
                )
        return self

    def to_dict(self) -> dict:
        d = {"xyxy": [self.x1, self.y1, self.x2, self.y2]}
        if self.label is not None:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Box":
        x1, y1, x2, y2 = (float(v) for v in d["xyxy"])
        return cls(x1, y1, x2, y2, d.get("label"))


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    text: str


@dataclass
class Sample:
    """One training/evaluation example.

    ``image`` is a path (absolute, or relative to the JSONL file that holds the
    sample). ``conversation`` alternates user/assistant turns and starts with the
    user; the first user turn is the instruction, the last assistant turn the
    target answer. ``boxes`` are the boxes the sample talks about (grounding
    targets, the region of a region caption, counted objects).
    """

    id: str
    image: str
    task: Task
    granularity: Granularity
    conversation: list[Turn]
    image_size: tuple[int, int] | None = None  # (width, height)
    boxes: list[Box] = field(default_factory=list)
    question_type: str | None = None
    dataset: str = ""
    split: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.task = Task(self.task)
        self.granularity = Granularity(self.granularity)
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @property
    def question(self) -> str:
        return self.conversation[0].text

    @property
    def answer(self) -> str:
        return self.conversation[-1].text if self.conversation and self.conversation[-1].role == "assistant" else ""

    def validate(self, *, file: str | None = None) -> "Sample":
        if not self.conversation:
            raise SkyMoEDataError("conversation is empty", file=file, record=self.id, field="conversation")
        for i, turn in enumerate(self.conversation):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise SkyMoEDataError(
                    f"turn {i} has role '{turn.role}', expected '{expected}'", file=file, record=self.id, field="conversation"
                )
        if not self.image:
            raise SkyMoEDataError("no image reference", file=file, record=self.id, field="image")
        for box in self.boxes:
            box.validate(self.image_size, file=file, record=self.id)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["task"] = self.task.value
        d["granularity"] = self.granularity.value
        d["boxes"] = [b.to_dict() for b in self.boxes]
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict, *, file: str | None = None) -> "Sample":
        record = d.get("id", "?")
        for key in ("id", "image", "task", "granularity", "conversation"):
            if key not in d:
                raise SkyMoEDataError("missing required field", file=file, record=record, field=key)
        try:
            task = Task(d["task"])
        except ValueError:
            raise SkyMoEDataError(
                f"unknown task {d['task']!r}; expected one of {[t.value for t in Task]}", file=file, record=record, field="task"
            ) from None
        try:
            granularity = Granularity(d["granularity"])
        except ValueError:
            raise SkyMoEDataError(
                f"unknown granularity {d['granularity']!r}; expected one of {[g.value for g in Granularity]}",
                file=file,
                record=record,
                field="granularity",
            ) from None
        try:
            turns = [Turn(t["role"], t["text"]) for t in d["conversation"]]
            boxes = [Box.from_dict(b) for b in d.get("boxes") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise SkyMoEDataError(f"malformed value ({exc})", file=file, record=record, field="conversation/boxes") from None
        return cls(
            id=str(d["id"]),
            image=str(d["image"]),
            task=task,
            granularity=granularity,
            conversation=turns,
            image_size=tuple(d["image_size"]) if d.get("image_size") else None,
            boxes=boxes,
            question_type=d.get("question_type"),
            dataset=d.get("dataset", ""),
            split=d.get("split", ""),
            meta=dict(d.get("meta") or {}),
        ).validate(file=file)


def write_jsonl(samples: Iterable[Sample], path: str | Path) -> int:
    """Write samples atomically (temp file + rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file; malformed lines are errors."""
    path = Path(path)
    if not path.is_file():
        raise SkyMoEDataError("file not found", file=str(path))
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SkyMoEDataError(f"malformed JSON ({exc.msg})", file=str(path), record=f"line {lineno}") from None
            if not isinstance(d, dict):
                raise SkyMoEDataError("expected a JSON object", file=str(path), record=f"line {lineno}")
            yield lineno, d


def read_jsonl(path: str | Path) -> Iterator[Sample]:
    """Read samples; relative image paths are resolved against the file's folder."""
    path = Path(path)
    for _, d in iter_json_objects(path):
        sample = Sample.from_dict(d, file=str(path))
        if not Path(sample.image).is_absolute():
            sample.image = str((path.parent / sample.image).resolve())
        yield sample
