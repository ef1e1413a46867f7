"""MGRS-mini generator invariants: answers agree with the boxes, boxes with the pixels, splits, determinism.

Every answer is recomputed here from the scene's object list (scenes.jsonl)
with code independent of the generator's own question logic.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skymoe.data.boxes import format_box
from skymoe.data.cda import count_cutout, nearest_palette_mask, recolour
from skymoe.data.mgrs_mini import SPLITS, generate, load_split
from skymoe.data.mgrs_mini.backgrounds import BackgroundPool, default_background_paths
from skymoe.data.mgrs_mini.catalogue import CATEGORY_BY_NAME, NUMBER_WORDS, SCENE_OF_DOMINANT
from skymoe.data.mgrs_mini.scene import compose_scene
from skymoe.data.schema import Box, read_jsonl
from skymoe.errors import DataError

N, SIZE, SEED = 40, 128, 3
EXPECTED = {
    ("classification", "image"), ("caption", "image"), ("vqa", "image"), ("vqa", "region"), ("grounding", "object"),
    ("region_caption", "object"), ("region_caption", "region"), ("counting", "image"), ("counting", "region"),
}


@pytest.fixture(scope="module")
def backgrounds() -> list[Path]:
    return default_background_paths()


@pytest.fixture(scope="module")
def bench(tmp_path_factory, backgrounds) -> Path:
    out = tmp_path_factory.mktemp("mgrs")
    generate(out, N, SIZE, SEED, background_paths=backgrounds)
    return out


@pytest.fixture(scope="module")
def scenes(bench) -> dict[str, dict]:
    return {s["id"]: s for s in map(json.loads, (bench / "scenes.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def samples(bench) -> list:
    return [s for split in SPLITS for s in read_jsonl(bench / f"{split}.jsonl")]


# ---------------------------------------------------------------- independent re-computation of the facts


def centre(o):
    x1, y1, x2, y2 = o["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def in_region(o, grid):
    x1, y1, x2, y2 = (v * SIZE / 100 for v in grid)
    cx, cy = centre(o)
    return x1 < cx < x2 and y1 < cy < y2


def quadrant(o):
    cx, cy = centre(o)
    return ("bottom " if cy > SIZE / 2 else "top ") + ("right" if cx > SIZE / 2 else "left")


def members(scene, query, category=None):
    return [o for o in scene["objects"] if ("region" not in query or in_region(o, query["region"]))
            and (category is None or o["category"] == category)]


def referred(scene, ref):
    hits = [o for o in scene["objects"] if o["category"] == ref["category"]
            and ref["colour"] in (None, o["colour"]) and ref["quadrant"] in (None, quadrant(o))]
    if ref["largest"]:
        areas = sorted(((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in hits), reverse=True)
        assert len(areas) == 1 or areas[0] >= 1.5 * areas[1]
        hits = [max(hits, key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))]
    return hits


def box_list(objs):
    return sorted(tuple(o["box"]) for o in objs)


def sample_boxes(sample):
    return sorted(tuple(int(v) for v in b.as_tuple()) for b in sample.boxes)


def expected_answer(sample, scene):
    q = sample.meta["query"]
    kind = q["kind"]
    objs = scene["objects"]
    if kind == "classification":
        (top, n), *rest = Counter(o["category"] for o in objs).most_common()
        assert not rest or rest[0][1] < n
        return SCENE_OF_DOMINANT[top]
    if kind in ("presence", "count", "counting"):
        hits = members(scene, q, q["category"])
        assert sample_boxes(sample) == box_list(hits)
        assert CATEGORY_BY_NAME[q["category"]].name in sample.question or CATEGORY_BY_NAME[q["category"]].plural in sample.question
        return ("yes" if hits else "no") if kind == "presence" else str(len(hits))
    if kind in ("colour", "grounding"):
        target = objs[q["target"]]
        if "reference" in q:
            assert referred(scene, q["reference"]) == [target]
        else:  # region colour question: the only object of its category in the region
            assert members(scene, q, target["category"]) == [target]
        assert sample_boxes(sample) == [tuple(target["box"])]
        return target["colour"] if kind == "colour" else format_box(Box(*target["box"]), (SIZE, SIZE))
    if kind == "position":
        a, b = objs[q["target"]], objs[q["other"]]
        assert referred(scene, q["reference"]) == [a] and referred(scene, q["other_reference"]) == [b]
        axis = 0 if q["relation"] in ("left of", "right of") else 1
        delta = centre(b)[axis] - centre(a)[axis]
        assert abs(delta) >= 0.1 * SIZE  # never asked about objects side by side
        return "yes" if (delta > 0) == (q["relation"] in ("left of", "above")) else "no"
    if kind == "comparison":
        n_first, n_second = len(members(scene, {}, q["category"])), len(members(scene, {}, q["other_category"]))
        assert n_first != n_second
        return "yes" if (n_first > n_second) == (q["relation"] == "more") else "no"
    if kind == "object_caption":
        target = objs[q["target"]]
        assert format_box(Box(*target["box"]), (SIZE, SIZE)) in sample.question
        return f"{'an' if target['colour'][0] in 'aeiou' else 'a'} {target['colour']} {target['category']}"
    raise AssertionError(f"unchecked kind {kind}")


# ---------------------------------------------------------------- tests


def test_every_task_and_granularity_is_present(samples, bench):
    assert {(s.task.value, s.granularity.value) for s in samples} == EXPECTED
    manifest = json.loads((bench / "manifest.json").read_text())
    assert sum(v["samples"] for v in manifest["splits"].values()) == len(samples)
    assert sum(v["scenes"] for v in manifest["splits"].values()) == N


def test_answers_agree_with_the_scene_objects(samples, scenes):
    checked = Counter()
    for s in samples:
        kind = s.meta["query"]["kind"]
        if kind in ("caption", "region_caption"):
            continue  # free text: checked in test_captions_name_exactly_the_objects
        assert s.answer == expected_answer(s, scenes[s.meta["scene"]]), s.id
        checked[kind] += 1
    assert set(checked) == {"classification", "presence", "count", "counting", "colour", "grounding", "position",
                            "comparison", "object_caption"}


def test_captions_name_exactly_the_objects(samples, scenes):
    for s in samples:
        q = s.meta["query"]
        if q["kind"] not in ("caption", "region_caption"):
            continue
        scene = scenes[s.meta["scene"]]
        present = Counter(o["category"] for o in members(scene, q))
        text = s.answer.lower()
        for name, cat in CATEGORY_BY_NAME.items():
            assert (name in text) == (name in present), (s.id, name, text)
            if present[name] > 1:
                assert re.search(rf"\b{NUMBER_WORDS[present[name]]} (\w+ )?{cat.plural}\b", text), (s.id, name, text)
        if q["kind"] == "caption":
            assert scene["scene_class"] in text
        else:
            assert format_box(Box(*(v * SIZE / 100 for v in q["region"])), (SIZE, SIZE)) in s.question
            assert (text == "no objects of interest.") == (not present)


def test_region_questions_show_their_region(samples):
    for s in samples:
        q = s.meta["query"]
        if "region" in q and q["kind"] != "region_caption":
            shown = f"the {q['quadrant']} quadrant" if "quadrant" in q else format_box(Box(*(v * SIZE / 100 for v in q["region"])), (SIZE, SIZE))
            assert shown in s.question, s.id
            assert s.granularity.value == "region"


def test_answers_are_balanced(samples):
    yes_no = Counter(s.answer for s in samples if s.meta["query"]["kind"] in ("presence", "position", "comparison"))
    assert set(yes_no) == {"yes", "no"}
    assert 0.4 <= yes_no["yes"] / sum(yes_no.values()) <= 0.6
    counts = Counter(s.answer for s in samples if s.meta["query"]["kind"] in ("count", "counting"))
    assert len(counts) >= 5 and max(counts.values()) / sum(counts.values()) < 0.4
    classes = Counter(s.answer for s in samples if s.meta["query"]["kind"] == "classification")
    assert set(classes) == set(SCENE_OF_DOMINANT.values())


def test_phrasings_vary(samples):
    for kind in ("presence", "count", "colour", "grounding", "classification"):
        stems = {s.question.split()[0] for s in samples if s.meta["query"]["kind"] == kind}
        assert len(stems) >= 2, kind


def test_boxes_lie_inside_the_image_and_on_the_drawn_objects(bench, scenes):
    for scene in scenes.values():
        pixels = np.asarray(Image.open(bench / "images" / f"{scene['id']}.png").convert("RGB"))
        assert pixels.shape == (SIZE, SIZE, 3)
        boxes = [o["box"] for o in scene["objects"]]
        for i, o in enumerate(scene["objects"]):
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert not any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for j, b in enumerate(boxes) if j != i)
            mask = nearest_palette_mask(pixels[y1:y2, x1:x2], o["colour"])
            assert mask.mean() > 0.2, (scene["id"], o)
            # tight: the object's colour reaches all four sides of its box
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any(), (scene["id"], o)


def test_boxes_are_the_exact_footprints(backgrounds):
    pool = BackgroundPool.from_paths(backgrounds, SIZE)
    for index in range(10):
        scene, pixels, label = compose_scene(f"t{index}", np.random.default_rng([7, index]), pool)
        assert label.max() == len(scene.objects)
        for k, o in enumerate(scene.objects, start=1):
            ys, xs = np.nonzero(label == k)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            on_object = nearest_palette_mask(pixels[label == k][None], o.colour)
            assert on_object.mean() > 0.95, o  # shading and noise never change the colour's name


def test_splits_are_disjoint_by_scene(bench, scenes):
    seen: dict[str, set] = {}
    for split in SPLITS:
        split_samples = list(read_jsonl(bench / f"{split}.jsonl"))
        assert split_samples and all(s.split == split and scenes[s.meta["scene"]]["split"] == split for s in split_samples)
        seen[split] = {s.meta["scene"] for s in split_samples}
        assert {Path(s.image).stem for s in split_samples} == seen[split]
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert set().union(*seen.values()) == set(scenes)
    assert len(seen["train"]) == N - 2 * round(0.1 * N)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_independent_of_workers(tmp_path, backgrounds):
    generate(tmp_path / "a", 12, SIZE, 5, background_paths=backgrounds)
    generate(tmp_path / "b", 12, SIZE, 5, background_paths=backgrounds, workers=2)
    generate(tmp_path / "c", 12, SIZE, 6, background_paths=backgrounds)
    a, b, c = (_tree_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert [v for k, v in a.items() if k.endswith(".png")] != [v for k, v in c.items() if k.endswith(".png")]


def test_samples_are_editable_by_context_disentangled_augmentation(bench, samples):
    """CDA's cutout and recolouring must apply to our count and colour samples (and keep answers consistent)."""
    rng = np.random.default_rng(0)
    colour = [s for s in samples if s.question_type == "colour"][:15]
    counted = [s for s in samples if s.question_type == "count" and s.answer != "0"][:15]
    for s in colour:
        edited, _ = recolour(s, Image.open(s.image).convert("RGB"), rng)
        assert edited.answer != s.answer
    for s in counted:
        edited, _ = count_cutout(s, Image.open(s.image).convert("RGB"), rng)
        assert int(edited.answer) == len(edited.boxes) < int(s.answer)


def test_load_split_generates_the_cache_once(tmp_path, monkeypatch, backgrounds):
    from skymoe.assets import cache_dir

    (tmp_path / "assets").symlink_to(cache_dir() / "assets")  # the fetched real backgrounds, not a second download
    monkeypatch.setenv("SKYMOE_CACHE", str(tmp_path))
    first = load_split("val", n=10, size=SIZE, seed=1)
    folders = list((tmp_path / "mgrs_mini").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").exists()  # no temp folder left behind
    stamp = (folders[0] / "val.jsonl").stat().st_mtime_ns
    again = load_split("val", n=10, size=SIZE, seed=1)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in first] and first
    assert (folders[0] / "val.jsonl").stat().st_mtime_ns == stamp
    assert all(Path(s.image).is_file() for s in first)
    with pytest.raises(DataError, match="unknown split"):
        load_split("dev", n=10, size=SIZE, seed=1)


def test_cli_writes_the_benchmark(tmp_path, capsys):
    from skymoe.cli import main

    assert main(["data", "make-mgrs-mini", "--n", "6", "--size", "96", "--seed", "2", "--out", str(tmp_path), "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["n"], manifest["size"], manifest["seed"]) == (6, 96, 2)
    assert len(list((tmp_path / "images").glob("*.png"))) == 6
    assert json.loads(capsys.readouterr().out)["splits"] == manifest["splits"]
    assert main(["data", "make-mgrs-mini", "--n", "0", "--out", str(tmp_path / "bad")]) == 2  # a clear error, no traceback


def test_packaged_suite_scores_every_task_of_the_benchmark(samples):
    from skymoe.eval.suite import load_suite

    suite = load_suite("mgrs_mini")
    assert [(d.name, d.splits) for d in suite.datasets] == [("mgrs_mini", ["test"])]
    assert {s.task.value for s in samples} <= set(suite.scorers)
    # samples are stored scene by scene, so the suite's first-N cut still covers every task and granularity
    first = samples[: suite.datasets[0].limit]
    assert {(s.task.value, s.granularity.value) for s in first} == EXPECTED
