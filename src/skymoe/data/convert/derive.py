"""Samples from labelled images: the MGRS-mini questions (:mod:`skymoe.data.prompts`) asked of real labels.

Per image: ``grounding`` one sample per class present (every box of the class is the answer),
``counting`` one per class present plus one absent class (answer 0; absent classes are what a
counting model most often gets wrong), ``region_caption`` one per object ("a ship"),
``classification`` the image's main class (the largest area share, else the most frequent
object class), ``multilabel`` the classes present, sorted and joined by ``"; "``.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from skymoe.data.boxes import format_box, format_boxes
from skymoe.data.convert.labelled import LabelledImage
from skymoe.data.prompts import LABEL_SEPARATOR, MULTILABEL_QUESTION, TEMPLATES, a, pick, plural
from skymoe.data.schema import Box, Granularity, Sample, Task, Turn

WHOLE_IMAGE = "in the image"


class Deriver:
    """Builds the samples of one labelled image; ``rng`` picks phrasings (seeded per conversion, so reruns agree)."""

    def __init__(self, image: LabelledImage, classes: list[str], *, dataset: str, split: str, rng: np.random.Generator):
        self.image, self.classes, self.dataset, self.split, self.rng = image, classes, dataset, split, rng
        self.samples: list[Sample] = []
        self.by_label: dict[str, list[Box]] = {}
        for box in image.boxes:
            self.by_label.setdefault(box.label or "object", []).append(box)
        # the outline of each box object (equal boxes may have different outlines, so by identity)
        self.outline = {id(b): p for b, p in zip(image.boxes, image.polygons)}

    def _add(self, kind: str, task: Task, granularity: Granularity, question: str, answer: str, *,
             question_type: str, boxes: list[Box] = (), meta: dict | None = None) -> None:
        image = self.image
        extra = {"window": list(image.window)} if image.window else {}
        if image.keep_polygons and boxes:
            extra["polygons"] = [[list(p) for p in self.outline[id(b)]] for b in boxes]
        self.samples.append(Sample(
            id=f"{self.dataset}/{image.name}/{len(self.samples):03d}-{kind}",
            image=str(image.image), task=task, granularity=granularity,
            conversation=[Turn("user", question), Turn("assistant", answer)],
            image_size=image.size, boxes=list(boxes), question_type=question_type,
            dataset=self.dataset, split=self.split, meta={**extra, **(meta or {})},
        ))

    def grounding(self) -> None:
        for label, boxes in self.by_label.items():
            ref = f"the {label}" if len(boxes) == 1 else f"all {plural(label)}"
            question = pick(self.rng, TEMPLATES["grounding"]).format(ref=ref)
            self._add("grounding", Task.GROUNDING, Granularity.OBJECT, question, format_boxes(boxes, self.image.size),
                      question_type="grounding", boxes=boxes, meta={"label": label})

    def counting(self) -> None:
        absent = [c for c in self.classes if c not in self.by_label]
        labels = list(self.by_label) + ([pick(self.rng, absent)] if absent else [])
        for label in labels:
            boxes = self.by_label.get(label, [])
            question = pick(self.rng, TEMPLATES["counting"]).format(plural=plural(label), where=WHOLE_IMAGE)
            self._add("counting", Task.COUNTING, Granularity.IMAGE, question, str(len(boxes)),
                      question_type="count", boxes=boxes, meta={"label": label})

    def region_caption(self) -> None:
        for box in self.image.boxes:
            label = box.label or "object"
            question = pick(self.rng, TEMPLATES["region_caption_object"]).format(box=format_box(box, self.image.size))
            self._add("region_caption", Task.REGION_CAPTION, Granularity.OBJECT, question, a(label),
                      question_type="object_caption", boxes=[box], meta={"label": label})

    def _present(self) -> list[str]:
        if self.image.shares is not None:
            return sorted(c for c, share in self.image.shares.items() if share > 0)
        return sorted(self.by_label)

    def classification(self) -> None:
        if self.image.shares:
            main = max(self.image.shares.items(), key=lambda kv: (kv[1], -self.classes.index(kv[0])))[0]
        elif self.by_label:
            counts = Counter(b.label or "object" for b in self.image.boxes)
            main = max(counts, key=lambda c: (counts[c], -self._order(c)))
        else:
            return  # nothing labelled: no class to teach
        question = pick(self.rng, TEMPLATES["classification"]).format(classes=", ".join(self.classes))
        self._add("classification", Task.CLASSIFICATION, Granularity.IMAGE, question, main, question_type="scene",
                  meta={"label": main, "classes": list(self.classes)})

    def multilabel(self) -> None:
        present = self._present()
        if present:
            self._add("multilabel", Task.MULTILABEL, Granularity.IMAGE, MULTILABEL_QUESTION, LABEL_SEPARATOR.join(present),
                      question_type="multilabel", meta={"labels": present})

    def _order(self, label: str) -> int:
        return self.classes.index(label) if label in self.classes else len(self.classes)


def derive_samples(images: list[LabelledImage], tasks, classes: list[str], *, dataset: str, split: str,
                   seed: int = 0) -> list[tuple[LabelledImage, list[Sample]]]:
    """(image, its samples of every task in task order) for every image that gives any."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        deriver = Deriver(image, classes, dataset=dataset, split=split, rng=rng)
        for task in tasks:
            getattr(deriver, task)()
        if deriver.samples:
            out.append((image, deriver.samples))
    return out
