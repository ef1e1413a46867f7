"""CDA edits keep every answer consistent with the boxes and pixels they describe."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skymoe.data.cda import PALETTE, CDAugmenter, count_cutout, global_view, local_view, nearest_palette_mask, recolour, sample_rng
from skymoe.data.schema import Box, Granularity, Sample, Task, Turn

SIZE = 96


def scene(seed: int, n_objects: int, colour: str = "red") -> tuple[Image.Image, list[Box]]:
    """Grey-green noisy background with ``n_objects`` separated solid squares of ``colour``."""
    rng = np.random.default_rng(seed)
    pixels = (rng.normal(110, 12, size=(SIZE, SIZE, 3)).clip(0, 255)).astype(np.uint8)
    pixels[..., 1] += 20
    boxes = []
    for i in range(n_objects):
        x, y = 6 + (i % 4) * 22, 6 + (i // 4) * 30
        pixels[y : y + 12, x : x + 12] = np.array(PALETTE[colour]) + rng.integers(-8, 8, size=(12, 12, 3))
        boxes.append(Box(x, y, x + 12, y + 12, "car"))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), boxes


def make_sample(task, qtype, answer, boxes, question="How many cars are there?") -> Sample:
    return Sample(
        id="s", image="mem.png", task=task, granularity=Granularity.REGION, question_type=qtype,
        conversation=[Turn("user", question), Turn("assistant", answer)], image_size=(SIZE, SIZE), boxes=boxes,
    )


def colour_fraction(image: Image.Image, box: Box, colour: str) -> float:
    pixels = np.asarray(image, dtype=np.int16)[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)]
    return float(nearest_palette_mask(pixels, colour).mean())


@pytest.mark.parametrize("seed", range(8))
def test_count_cutout_answer_matches_remaining_objects(seed):
    image, boxes = scene(seed, 6)
    sample = make_sample(Task.COUNTING, "count", "6", boxes)
    edited, out = count_cutout(sample, image, sample_rng(seed, 0, 0), max_remove=3)
    assert int(edited.answer) == len(edited.boxes) and 3 <= len(edited.boxes) <= 5
    removed = [b for b in boxes if b not in edited.boxes]
    # the removed objects are gone from the pixels, the kept ones untouched
    assert all(colour_fraction(out, b, "red") < 0.05 for b in removed)
    assert all(colour_fraction(out, b, "red") > 0.9 for b in edited.boxes)
    assert sample.answer == "6" and len(sample.boxes) == 6  # the input is not mutated


def test_presence_becomes_no_when_every_object_is_removed():
    image, boxes = scene(1, 1)
    sample = make_sample(Task.VQA, "presence", "yes", boxes, "Is there a car?")
    edited, out = count_cutout(sample, image, sample_rng(0, 0, 0), max_remove=2)
    assert edited.answer == "no" and edited.boxes == []
    assert colour_fraction(out, boxes[0], "red") < 0.05


@pytest.mark.parametrize(
    "task,qtype,answer",
    [(Task.COUNTING, "count", "5"), (Task.VQA, "presence", "no"), (Task.CAPTION, None, "many cars"), (Task.COUNTING, "count", "0-10")],
)
def test_cutout_leaves_samples_it_cannot_keep_consistent(task, qtype, answer):
    image, boxes = scene(0, 3)
    assert count_cutout(make_sample(task, qtype, answer, boxes), image, sample_rng(0, 0, 0)) is None


@pytest.mark.parametrize("seed", range(6))
def test_recolour_answer_names_the_new_object_colour(seed):
    image, boxes = scene(seed, 2, "red")
    sample = make_sample(Task.VQA, "color", "Red", boxes, "What colour are the cars?")
    edited, out = recolour(sample, image, sample_rng(seed, 0, 0))
    assert edited.answer in PALETTE and edited.answer != "red"
    for b in edited.boxes:
        assert colour_fraction(out, b, edited.answer) > 0.9
        assert colour_fraction(out, b, "red") < 0.05
    # background outside the boxes is unchanged
    before, after = np.asarray(image), np.asarray(out)
    outside = np.ones(before.shape[:2], bool)
    for b in boxes:
        outside[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] = False
    assert np.array_equal(before[outside], after[outside])


def test_recolour_refuses_an_answer_the_pixels_do_not_show():
    image, boxes = scene(0, 2, "red")
    assert recolour(make_sample(Task.VQA, "color", "blue", boxes), image, sample_rng(0, 0, 0)) is None


def test_local_views_have_their_granularity_and_lie_inside_the_image():
    image, boxes = scene(0, 3)
    rng = sample_rng(0, 0, 0)
    with_boxes = local_view(make_sample(Task.COUNTING, "count", "3", boxes), image, rng)
    without = local_view(make_sample(Task.CAPTION, None, "a scene", []), image, rng)
    assert with_boxes.granularity == Granularity.OBJECT and without.granularity == Granularity.REGION
    for view in (with_boxes, without):
        x1, y1, x2, y2 = view.window
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE and view.image.size == (x2 - x1, y2 - y1)
    # an object view contains a whole annotated box
    x1, y1, x2, y2 = with_boxes.window
    assert any(x1 <= b.x1 and y1 <= b.y1 and b.x2 <= x2 and b.y2 <= y2 for b in boxes)
    assert global_view(image).granularity == Granularity.IMAGE


def test_augmenter_is_deterministic_per_seed_epoch_and_index():
    image, boxes = scene(3, 6)
    sample = make_sample(Task.COUNTING, "count", "6", boxes)
    aug = CDAugmenter(seed=7, pair_prob=1.0, cutout_prob=1.0, attribute_prob=0.0, max_cutout=3)
    a, b = aug(sample, image, 2, 5), aug(sample, image, 2, 5)
    assert a[0].answer == b[0].answer and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert a[2].window == b[2].window
    answers = {aug(sample, image, epoch, i)[0].answer for epoch in range(3) for i in range(6)}
    assert len(answers) > 1  # different (epoch, index) give different edits
    for epoch in range(3):
        for i in range(6):
            edited, _, _ = aug(sample, image, epoch, i)
            assert int(edited.answer) == len(edited.boxes)
