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
import numbers
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator

from skymoe.errors import DataError


def check_image_size(value: Any, *, file: str | None = None, record: Any = None) -> tuple[int, int] | None:
    """``value`` as (width, height), or None when absent; anything else is a DataError."""
    if value is None:
        return None
    # bool is an Integral too, but true/false is never a pixel size
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise DataError(
            f"expected [width, height] as two positive integers, got {value!r}", file=file, record=record, field="image_size"
        )
    return int(value[0]), int(value[1])


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
    expert_weights: list[list[float]]  # [row][expert]; a row is what ``level`` says
    # "layer": a row per MoE layer, its mean gate weight over the sample's tokens; "llm": one row, the router's
    # weights of the expert LLMs (RS-MoE's sequence-level choice; 0 = not chosen)
    level: str = "layer"
    # per row, the experts with a weight > 0, heaviest first: {"expert": e, "weight": w}. Always derived from
    # expert_weights (a value read back from a record is recomputed); a field so that the JSON outputs carry it.
    chosen: list[list[dict]] | None = None

    def __post_init__(self):
        self.chosen = [
            [{"expert": e, "weight": w} for e, w in sorted(enumerate(row), key=lambda ew: -ew[1]) if w > 0]
            for row in self.expert_weights
        ]

    def describe(self) -> str:
        """One line for people: the predicted task and granularity, and the expert weights of each MoE layer
        (expert LLMs: the chosen experts and their weights)."""
        head = f"task {self.task}, granularity {self.granularity}; "
        if self.level == "llm":
            return head + "expert LLMs chosen: " + ", ".join(f"E{c['expert']} {c['weight']:.2f}" for c in self.chosen[0])
        layers = "; ".join(f"layer {i}: " + " ".join(f"{w:.2f}" for w in row) for i, row in enumerate(self.expert_weights))
        return head + f"expert weights per MoE layer: {layers}"


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
            raise DataError(f"box {values} has non-finite coordinates", file=file, record=record, field="boxes")
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise DataError(f"box {values} is empty; expected x1<x2 and y1<y2", file=file, record=record, field="boxes")
        if image_size is not None:
            w, h = image_size
            if self.x1 < 0 or self.y1 < 0 or self.x2 > w or self.y2 > h:
                raise DataError(
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
        self.image_size = check_image_size(self.image_size, record=self.id)

    @property
    def question(self) -> str:
        return self.conversation[0].text

    @property
    def answer(self) -> str:
        return self.conversation[-1].text if self.conversation and self.conversation[-1].role == "assistant" else ""

    def validate(self, *, file: str | None = None) -> "Sample":
        if not self.conversation:
            raise DataError("conversation is empty", file=file, record=self.id, field="conversation")
        for i, turn in enumerate(self.conversation):
            if not isinstance(turn.text, str):
                raise DataError(
                    f"expected a string, got {turn.text!r}", file=file, record=self.id, field=f"conversation[{i}].text"
                )
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise DataError(
                    f"turn {i} has role '{turn.role}', expected '{expected}'", file=file, record=self.id, field="conversation"
                )
        if not self.image:
            raise DataError("no image reference", file=file, record=self.id, field="image")
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
                raise DataError("missing required field", file=file, record=record, field=key)
        try:
            task = Task(d["task"])
        except ValueError:
            raise DataError(
                f"unknown task {d['task']!r}; expected one of {[t.value for t in Task]}", file=file, record=record, field="task"
            ) from None
        try:
            granularity = Granularity(d["granularity"])
        except ValueError:
            raise DataError(
                f"unknown granularity {d['granularity']!r}; expected one of {[g.value for g in Granularity]}",
                file=file,
                record=record,
                field="granularity",
            ) from None
        turns = _turns_from_list(d["conversation"], file=file, record=record)
        try:
            boxes = [Box.from_dict(b) for b in d.get("boxes") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"malformed box ({exc}); expected objects {{xyxy: [x1, y1, x2, y2], label}}", file=file, record=record, field="boxes"
            ) from None
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"expected an object, got {meta!r}", file=file, record=record, field="meta")
        return cls(
            id=str(d["id"]),
            image=str(d["image"]),
            task=task,
            granularity=granularity,
            conversation=turns,
            image_size=check_image_size(d.get("image_size"), file=file, record=record),
            boxes=boxes,
            question_type=d.get("question_type"),
            dataset=d.get("dataset", ""),
            split=d.get("split", ""),
            meta=dict(meta or {}),
        ).validate(file=file)


def _turns_from_list(raw: Any, *, file: str | None, record: Any) -> list[Turn]:
    """Turns of a record's ``conversation``; the value types are checked by :meth:`Sample.validate`."""
    if not isinstance(raw, list):
        raise DataError("expected a list of {role, text} objects", file=file, record=record, field="conversation")
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or "role" not in t or "text" not in t:
            raise DataError("expected an object with 'role' and 'text'", file=file, record=record, field=f"conversation[{i}]")
    return [Turn(t["role"], t["text"]) for t in raw]


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


def json_lines(path: str | Path) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, object) for every non-blank line of a JSON-lines file.

    A malformed line is yielded as its DataError rather than raised, so a
    reader that skips bad records can go on to the next line; a missing file raises.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, DataError(f"malformed JSON ({exc.msg})", file=str(path), record=f"line {lineno}")
                continue
            if not isinstance(d, dict):
                d = DataError("expected a JSON object", file=str(path), record=f"line {lineno}")
            yield lineno, d


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file; malformed lines are errors."""
    for lineno, d in json_lines(path):
        if isinstance(d, DataError):
            raise d
        yield lineno, d


def sample_from_line(d: dict | DataError, path: str | Path) -> Sample:
    """The Sample of one :func:`json_lines` item (raising its error); a relative image resolves against the file's folder."""
    if isinstance(d, DataError):
        raise d
    path = Path(path)
    sample = Sample.from_dict(d, file=str(path))
    if not Path(sample.image).is_absolute():
        sample.image = str((path.parent / sample.image).resolve())
    return sample


def read_jsonl(path: str | Path) -> Iterator[Sample]:
    """Read samples; the first bad record raises (see :func:`skymoe.train.data.read_jsonl_part` for skipping)."""
    for _, d in json_lines(path):
        yield sample_from_line(d, path)
