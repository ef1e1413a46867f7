"""The floor every model number is shown beside, scored by the same code as the model.

* **Prior baseline** (VQA, classification, multi-label, counting): the most frequent
  training answer for the sample's (dataset, task, question type), or for its
  (dataset, task) when that question type never occurs in training; ties go to the
  alphabetically first answer so the baseline is deterministic.
* **Nearest-neighbour caption** (caption, region caption): the caption of the
  training sample whose view is closest to the test sample's (L2 on a 16x16 RGB
  thumbnail of the whole image, or of the described box for region captions), the
  standard "copy a caption" floor of captioning papers.
* **Mean box** (grounding): the mean training box (in image-relative coordinates)
  scaled to the test image - the answer a model that ignores the query would give.
"""
from __future__ import annotations

import functools
from collections import Counter, defaultdict

import numpy as np

from skymoe.data.schema import Box, Sample, Task

THUMBNAIL = 16
CAPTION_TASKS = {Task.CAPTION, Task.REGION_CAPTION}


@functools.lru_cache(maxsize=16)  # samples of one image come together (one scene, many questions)
def _load(path: str):
    from skymoe.data.imagery import load_image

    return load_image(path)


def _thumbnail(sample: Sample) -> np.ndarray:
    image = _load(sample.image)
    if sample.task == Task.REGION_CAPTION and sample.boxes:
        image = image.crop(tuple(round(v) for v in sample.boxes[0].as_tuple()))
    return np.asarray(image.resize((THUMBNAIL, THUMBNAIL)), dtype=np.float32).ravel() / 255.0


def _prior_keys(sample: Sample) -> list[tuple]:
    """Most specific first: (dataset, task, question type), then (dataset, task)."""
    return [(sample.dataset, sample.task.value, sample.question_type), (sample.dataset, sample.task.value)]


class Baseline:
    """Fit on training samples, then answer test samples (None where it has nothing to go on)."""

    def __init__(self, train: list[Sample]):
        answers: dict[tuple, Counter] = defaultdict(Counter)
        relative_boxes = defaultdict(list)
        self._captions: dict[tuple, tuple[np.ndarray, list[str]]] = {}
        captioned = defaultdict(list)
        for s in train:
            if s.task in CAPTION_TASKS:
                captioned[(s.dataset, s.task.value)].append(s)
            elif s.task == Task.GROUNDING:
                if s.boxes and s.image_size:
                    w, h = s.image_size
                    relative_boxes[s.dataset] += [(b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h) for b in s.boxes]
            else:
                for key in _prior_keys(s):
                    answers[key][s.answer] += 1
        self._prior = {key: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, c in answers.items()}
        self._mean_box = {d: tuple(np.mean(boxes, axis=0)) for d, boxes in relative_boxes.items()}
        for key, samples in captioned.items():
            self._captions[key] = (np.stack([_thumbnail(s) for s in samples]), [s.answer for s in samples])

    def predict(self, sample: Sample) -> str | None:
        if sample.task in CAPTION_TASKS:
            return self._nearest_caption(sample)
        if sample.task == Task.GROUNDING:
            return self._mean_box_text(sample)
        return next((self._prior[k] for k in _prior_keys(sample) if k in self._prior), None)

    def _nearest_caption(self, sample: Sample) -> str | None:
        entry = self._captions.get((sample.dataset, sample.task.value))
        if entry is None:
            return None
        thumbnails, captions = entry
        return captions[int(np.argmin(((thumbnails - _thumbnail(sample)) ** 2).sum(axis=1)))]

    def _mean_box_text(self, sample: Sample) -> str | None:
        from skymoe.data.boxes import format_box

        box = self._mean_box.get(sample.dataset)
        if box is None or not sample.image_size:
            return None
        w, h = sample.image_size
        return format_box(Box(box[0] * w, box[1] * h, box[2] * w, box[3] * h), sample.image_size)
