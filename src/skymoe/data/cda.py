"""Context-disentangled augmentation (CDA), our reading of the SkyMoE paper.

Three label-preserving edits, all driven by an explicit ``numpy`` generator so
that a (seed, sample, variant) triple always gives the same result:

* **local/global pairs** — a crop around an annotated box (``object``
  granularity) or a random window (``region``) paired with the whole image
  (``image``). The trainer feeds the views through the model and an InfoNCE
  loss on the routing embeddings pulls same-level views together and pushes
  levels apart (:func:`skymoe.model.losses.granularity_info_nce`).
* **count-varying cutout** — remove k annotated objects by in-painting each box
  from a neighbouring patch, then update count and presence answers.
* **attribute editing** — recolour the queried object(s) inside their boxes and
  update the colour answer.

Which samples an edit applies to is decided from the sample itself: counting
samples whose answer equals the number of boxes, presence questions answered
"yes" with boxes, colour questions whose answer is a :data:`PALETTE` name. Any
other sample is left unchanged (never given a label the image does not show).
No library offers box-aware, answer-updating edits, hence this module.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from skymoe.data.schema import Box, Granularity, Sample, Task, Turn

# Named colours for attribute editing (RGB). Answers are matched case-insensitively.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (240, 140, 20),
    "purple": (140, 40, 170),
}
COLOUR_QUESTION_TYPES = {"color", "colour"}
COUNT_QUESTION_TYPES = {"count", "counting"}
PRESENCE_QUESTION_TYPES = {"presence"}
# a recoloured object must cover at least this fraction of its box, else the colour name does not describe it
_MIN_OBJECT_FRACTION = 0.1


@dataclass
class View:
    """One view of a local/global pair: an image and its granularity label."""

    image: Image.Image
    granularity: Granularity
    window: tuple[int, int, int, int]  # crop window (x1, y1, x2, y2) in the full image


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch: independent of order and process count."""
    return np.random.default_rng([seed, epoch, index])


# ------------------------------------------------------------------ local / global pairs


def global_view(image: Image.Image) -> View:
    return View(image, Granularity.IMAGE, (0, 0, image.width, image.height))


def local_view(sample: Sample, image: Image.Image, rng: np.random.Generator) -> View:
    """A crop around one annotated box (with context margin) or, without boxes, a random window."""
    w, h = image.size
    sx, sy = _scale_to_image(sample, image)
    if sample.boxes:
        box = sample.boxes[int(rng.integers(len(sample.boxes)))]
        bw, bh = box.width * sx, box.height * sy
        margin_x, margin_y = 0.5 * bw, 0.5 * bh  # keep a little context so the object stays recognisable
        window = (box.x1 * sx - margin_x, box.y1 * sy - margin_y, box.x2 * sx + margin_x, box.y2 * sy + margin_y)
        granularity = Granularity.OBJECT
    else:
        frac = rng.uniform(0.3, 0.6)
        cw, ch = max(1.0, frac * w), max(1.0, frac * h)
        x1, y1 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        window = (x1, y1, x1 + cw, y1 + ch)
        granularity = Granularity.REGION
    x1, y1 = max(0, int(window[0])), max(0, int(window[1]))
    x2, y2 = min(w, max(x1 + 1, int(round(window[2])))), min(h, max(y1 + 1, int(round(window[3]))))
    return View(image.crop((x1, y1, x2, y2)), granularity, (x1, y1, x2, y2))


def view_sample(sample: Sample, granularity: Granularity, size: tuple[int, int]) -> Sample:
    """A Sample describing a view of ``size`` for the processor; its answer is not supervised (the trainer masks it)."""
    what = {Granularity.IMAGE: "scene", Granularity.REGION: "region", Granularity.OBJECT: "object"}[granularity]
    return Sample(
        id=f"{sample.id}#view-{granularity.value}",
        image=sample.image,
        task=sample.task,
        granularity=granularity,
        conversation=[Turn("user", f"Describe this {what}."), Turn("assistant", what)],
        image_size=size,
        dataset=sample.dataset,
        split=sample.split,
        meta={"cda_view": True},
    )


# ------------------------------------------------------------------ count-varying cutout


def count_cutout(
    sample: Sample, image: Image.Image, rng: np.random.Generator, max_remove: int = 2
) -> tuple[Sample, Image.Image] | None:
    """Remove 1..max_remove annotated objects and update the answer; None when not applicable."""
    kind = _count_kind(sample)
    if kind is None:
        return None
    # Only boxes that touch no other box can be painted over without damaging a kept object.
    isolated = [i for i, b in enumerate(sample.boxes) if not any(_overlaps(b, o) for j, o in enumerate(sample.boxes) if j != i)]
    if not isolated:
        return None
    k = int(rng.integers(1, min(max_remove, len(isolated)) + 1))
    removed = set(int(i) for i in rng.choice(isolated, size=k, replace=False))
    out = image.copy()
    sx, sy = _scale_to_image(sample, image)
    for i in sorted(removed):
        _inpaint_box(out, _pixel_box(sample.boxes[i], sx, sy, image.size), [_pixel_box(b, sx, sy, image.size) for b in sample.boxes], rng)
    kept = [b for i, b in enumerate(sample.boxes) if i not in removed]
    if kind == "count":
        answer = str(len(kept))
    else:
        answer = "yes" if kept else "no"
    edited = _with_answer(sample, answer, boxes=kept, edit=f"cutout:{k}")
    return edited, out


def _count_kind(sample: Sample) -> str | None:
    answer = sample.answer.strip().lower()
    qtype = (sample.question_type or "").lower()
    if sample.task == Task.COUNTING or qtype in COUNT_QUESTION_TYPES:
        if sample.boxes and answer.isdigit() and int(answer) == len(sample.boxes):
            return "count"
        return None
    if qtype in PRESENCE_QUESTION_TYPES and answer == "yes" and sample.boxes:
        return "presence"
    return None


def _inpaint_box(image: Image.Image, box: tuple[int, int, int, int], all_boxes: list, rng: np.random.Generator) -> None:
    """Fill ``box`` with a neighbouring patch that holds no annotated object, then soften it.

    Copying nearby background keeps the global context (texture, colour) while
    the object disappears; the blur hides the seams.
    """
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    w, h = image.size
    offsets = [(-bw, 0), (bw, 0), (0, -bh), (0, bh), (-bw, -bh), (bw, bh), (-bw, bh), (bw, -bh)]
    source = None
    for idx in rng.permutation(len(offsets)):
        dx, dy = offsets[idx]
        cand = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
        inside = cand[0] >= 0 and cand[1] >= 0 and cand[2] <= w and cand[3] <= h
        if inside and not any(_overlaps_xyxy(cand, b) for b in all_boxes):
            source = cand
            break
    if source is not None:
        patch = image.crop(source)
    else:  # no clean neighbour: use the mean colour of a ring around the box
        ring = np.asarray(image.crop((max(0, x1 - 2), max(0, y1 - 2), min(w, x2 + 2), min(h, y2 + 2))), dtype=np.float64)
        patch = Image.new(image.mode, (bw, bh), tuple(int(v) for v in ring.reshape(-1, ring.shape[-1]).mean(0)))
    image.paste(patch.filter(ImageFilter.BoxBlur(1)), (x1, y1))


# ------------------------------------------------------------------ attribute editing


def _recolourable(sample: Sample) -> bool:
    return (sample.question_type or "").lower() in COLOUR_QUESTION_TYPES and sample.answer.strip().lower() in PALETTE and bool(sample.boxes)


def recolour(sample: Sample, image: Image.Image, rng: np.random.Generator) -> tuple[Sample, Image.Image] | None:
    """Recolour the queried object(s) to another palette colour and update the answer; None when not applicable."""
    old = sample.answer.strip().lower()
    if not _recolourable(sample):
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16).copy()
    sx, sy = _scale_to_image(sample, image)
    object_mask = np.zeros(pixels.shape[:2], dtype=bool)  # one mask: overlapping boxes are shifted once
    for b in sample.boxes:
        x1, y1, x2, y2 = _pixel_box(b, sx, sy, image.size)
        mask = nearest_palette_mask(pixels[y1:y2, x1:x2], old)
        if mask.mean() < _MIN_OBJECT_FRACTION:
            return None
        object_mask[y1:y2, x1:x2] |= mask
    choices = sorted(c for c in PALETTE if c != old)
    new = choices[int(rng.integers(len(choices)))]
    # shift by the palette difference: keeps the object's shading and texture
    delta = np.array(PALETTE[new], dtype=np.int16) - np.array(PALETTE[old], dtype=np.int16)
    pixels[object_mask] = np.clip(pixels[object_mask] + delta, 0, 255)
    out = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return _with_answer(sample, new, boxes=list(sample.boxes), edit=f"recolour:{old}->{new}"), out


def nearest_palette_mask(pixels: np.ndarray, colour: str) -> np.ndarray:
    """Boolean mask of the pixels whose nearest palette colour is ``colour``."""
    names = list(PALETTE)
    refs = np.array([PALETTE[n] for n in names], dtype=np.int32)
    dist = ((pixels[..., None, :].astype(np.int32) - refs) ** 2).sum(-1)
    return dist.argmin(-1) == names.index(colour)


# ------------------------------------------------------------------ the augmenter


@dataclass(frozen=True)
class EditPlan:
    """Which edits a variant makes (each only where the sample allows it)."""

    cutout: bool
    recolour: bool
    pair: bool

    @property
    def changes_anything(self) -> bool:
        return self.cutout or self.recolour or self.pair


@dataclass
class CDAugmenter:
    """Applies the edits with the configured probabilities.

    Each sample has ``variants`` fixed augmented versions, decided by (seed, sample id, variant);
    a draw (epoch, index) picks one of them. A variant is therefore the same image every time it
    is drawn, which is what lets a feature cache compute its visual features once and reuse them.
    """

    seed: int = 0
    pair_prob: float = 0.5
    cutout_prob: float = 0.3
    max_cutout: int = 2
    attribute_prob: float = 0.3
    variants: int = 4

    def variant(self, epoch: int, index: int) -> int:
        """The variant drawn at (epoch, index): independent of order and process count."""
        return int(sample_rng(self.seed, epoch, index).integers(self.variants))

    def _rng(self, sample: Sample, variant: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(sample.id.encode("utf-8")), variant])

    def plan(self, sample: Sample, variant: int) -> EditPlan:
        """The edits of ``variant``, known from the sample alone (no pixels)."""
        do_cutout, do_recolour, do_pair = self._rng(sample, variant).random(3) < (self.cutout_prob, self.attribute_prob, self.pair_prob)
        return EditPlan(bool(do_cutout and _count_kind(sample) is not None), bool(do_recolour and _recolourable(sample)), bool(do_pair))

    def apply(self, sample: Sample, image: Image.Image, variant: int) -> tuple[Sample, Image.Image, View | None]:
        """The (possibly edited) sample and image of ``variant``, and a local view to pair with it (or None)."""
        rng = self._rng(sample, variant)
        rng.random(3)  # the plan's draws: every decision is drawn up front, so one edit never shifts another's randomness
        plan = self.plan(sample, variant)
        if plan.cutout:
            sample, image = count_cutout(sample, image, rng, self.max_cutout) or (sample, image)
        if plan.recolour:
            sample, image = recolour(sample, image, rng) or (sample, image)
        view = local_view(sample, image, rng) if plan.pair else None
        return sample, image, view

    def __call__(self, sample: Sample, image: Image.Image, epoch: int, index: int) -> tuple[Sample, Image.Image, View | None]:
        return self.apply(sample, image, self.variant(epoch, index))


# ------------------------------------------------------------------ helpers


def _with_answer(sample: Sample, answer: str, *, boxes: list[Box], edit: str) -> Sample:
    edited = copy.deepcopy(sample)
    edited.conversation[-1] = Turn("assistant", answer)
    edited.boxes = boxes
    edited.meta = {**sample.meta, "cda": [*sample.meta.get("cda", []), edit]}
    return edited


def _scale_to_image(sample: Sample, image: Image.Image) -> tuple[float, float]:
    """Boxes are in ``sample.image_size`` pixels; the loaded image may have been resized."""
    if sample.image_size is None:
        return 1.0, 1.0
    return image.width / sample.image_size[0], image.height / sample.image_size[1]


def _pixel_box(box: Box, sx: float, sy: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    x1, y1 = max(0, int(np.floor(box.x1 * sx))), max(0, int(np.floor(box.y1 * sy)))
    x2, y2 = min(w, int(np.ceil(box.x2 * sx))), min(h, int(np.ceil(box.y2 * sy)))
    return x1, y1, max(x1 + 1, x2), max(y1 + 1, y2)


def _overlaps(a: Box, b: Box) -> bool:
    return _overlaps_xyxy(a.as_tuple(), b.as_tuple())


def _overlaps_xyxy(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
