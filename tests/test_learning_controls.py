"""Learning controls: per-sample statistics reproduce every scorer, the paired bootstrap interval separates a
model from its controls only when it is better, and the linear probes read what the features hold."""
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from skymoe.data.mgrs_mini import generate
from skymoe.data.mgrs_mini.backgrounds import default_background_paths
from skymoe.data.schema import Granularity, Sample, Task, Turn, read_jsonl
from skymoe.eval.aggregate import scorer_of
from skymoe.eval.controls import learning_controls, learning_rows
from skymoe.eval.probe import place_mask, probe_predictions, query_key
from skymoe.eval.records import Prediction
from skymoe.eval.samplewise import stats_of


@pytest.fixture(scope="module")
def mgrs_test(tmp_path_factory) -> list[Sample]:
    out = tmp_path_factory.mktemp("mgrs")
    generate(out, 60, 96, 5, background_paths=default_background_paths())
    return list(read_jsonl(out / "test.jsonl")) + list(read_jsonl(out / "val.jsonl"))


def half_right(samples: list[Sample], seed: int = 0) -> list[Prediction]:
    """Every other sample answered right, the rest with another sample's answer of the same task."""
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(samples):
        wrong = rng.choice([o.answer for o in samples if o.task == s.task])
        out.append(Prediction.from_sample(s, s.answer if i % 2 == 0 else wrong))
    return out


def by_task(predictions: list[Prediction]) -> dict[str, list[Prediction]]:
    groups: dict[str, list[Prediction]] = {}
    for p in predictions:
        groups.setdefault(p.task, []).append(p)
    return groups


def test_sample_statistics_reproduce_every_scorers_primary_metric(mgrs_test):
    groups = by_task(half_right(mgrs_test))
    assert set(groups) >= {"caption", "classification", "counting", "grounding", "region_caption", "vqa"}
    for task, predictions in groups.items():
        scorer = scorer_of(predictions)
        expected = scorer.score(predictions)[scorer.primary]
        assert stats_of(scorer.name, predictions).metric() == pytest.approx(expected, abs=1e-9), task
        assert 0 < expected, task  # half the answers are right: a metric of 0 would test nothing


def test_multilabel_statistics_are_micro_f1():
    sample = Sample(id="0", image="x.png", task=Task.MULTILABEL, granularity=Granularity.IMAGE,
                    conversation=[Turn("user", "Which land covers?"), Turn("assistant", "forest; water")],
                    meta={"labels": ["forest", "water"]}, dataset="d", split="test")
    predictions = [Prediction.from_sample(replace(sample, id=str(i)), answer)
                   for i, answer in enumerate(["forest; water", "forest", "urban; forest; water"])]
    scorer = scorer_of(predictions)
    assert stats_of(scorer.name, predictions).metric() == pytest.approx(scorer.score(predictions)[scorer.primary])
    assert stats_of(scorer.name, predictions).metric() == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))  # tp 5, fp 1, fn 1


def _with_prior(predictions: list[Prediction], prior: list[Prediction]) -> list[Prediction]:
    return [replace(p, baseline=q.prediction) for p, q in zip(predictions, prior)]


def test_interval_is_above_zero_only_for_a_model_better_than_its_controls(mgrs_test):
    classification = [s for s in mgrs_test if s.task == Task.CLASSIFICATION]
    right = [Prediction.from_sample(s, s.answer) for s in classification]
    prior = half_right(classification, seed=1)
    blind = half_right(classification, seed=2)
    better = learning_controls({"moe": _with_prior(right, prior), "blind": blind})
    (controls,) = better["mgrs_mini"].values()
    assert controls["n"] == len(classification) and controls["moe"] == 1.0
    assert controls["prior"] == pytest.approx(stats_of("classification", prior).metric())
    assert 0 < controls["ci95"][0] <= 1.0 - max(controls["prior"], controls["blind"]) <= controls["ci95"][1]
    same = learning_controls({"moe": _with_prior(prior, prior), "blind": prior})
    low, high = same["mgrs_mini"]["classification"]["ci95"]
    assert low == high == 0.0  # identical answers: every resample gives the same difference
    row = learning_rows(better)[0]
    assert row[:4] == ["mgrs_mini", "classification", "overall_accuracy", len(classification)] and row[9] > 0


def test_learning_controls_keep_to_one_split(mgrs_test):
    predictions = [Prediction.from_sample(s, s.answer) for s in mgrs_test if s.task == Task.COUNTING]
    learning = learning_controls({"moe": _with_prior(predictions, predictions)}, split="test")
    assert learning["mgrs_mini"]["counting"]["n"] == sum(1 for p in predictions if p.split == "test")
    assert learning["mgrs_mini"]["counting"]["blind"] is None and learning["mgrs_mini"]["counting"]["probe"] is None


def test_place_mask_and_query_key():
    assert place_mask("how many ships are in the top right quadrant?", 2).tolist() == [0, 1, 0, 0]
    assert place_mask("how many cars are in the region [0, 0, 50, 50]?", 2).tolist() == [1, 0, 0, 0]
    assert place_mask("how many cars are there?", 2).tolist() == [1, 1, 1, 1]
    # a cell half inside the box counts half: [0, 0, 75, 50] covers the top row's left cell and half its right one
    assert place_mask("how many cars are in the region [0, 0, 75, 50]?", 2).tolist() == [1, 0.5, 0, 0]
    assert query_key(_sample("How many ships are in the top left quadrant?", "2", Task.COUNTING)) == "how many ships are ?"
    assert query_key(_sample("How many ships are in the region [1, 2, 3, 4]?", "2", Task.COUNTING)) == "how many ships are ?"


def _sample(question: str, answer: str, task: Task, i: int = 0, **meta) -> Sample:
    return Sample(id=str(i), image=f"img{i}.png", task=task, granularity=Granularity.IMAGE, dataset="toy", split="test",
                  conversation=[Turn("user", question), Turn("assistant", answer)], meta=meta)


def test_probes_read_what_the_features_hold():
    """Class, labels and per-place counts are written into 2x2-token features (plus noise): every probe reads them,
    the counting probe only where the question looks."""
    rng = np.random.default_rng(0)
    classes, labels = ["farm", "port", "town"], ["forest", "water", "urban"]
    samples, features = [], {}
    for i in range(240):
        kind = i % 3
        image = f"img{i}.png"
        x = rng.normal(0, 0.3, size=(4, 8))
        if kind == 0:
            answer = classes[i % 7 % 3]
            x[:, classes.index(answer)] += 2.0
            sample = _sample("What scene is this?", answer, Task.CLASSIFICATION, i)
        elif kind == 1:
            present = [label for j, label in enumerate(labels) if ((i // 3) % 7 + 1) >> j & 1]  # never empty
            for label in present:
                x[:, 3 + labels.index(label)] += 2.0
            sample = _sample("Which land covers?", "; ".join(present), Task.MULTILABEL, i, labels=present)
        else:
            quadrant = (i // 3) % 4
            count = (i // 12) % 3
            x[quadrant, 6] += 2.0 * count
            x[[q for q in range(4) if q != quadrant], 6] += rng.integers(0, 3, 3) * 2.0  # other places: other counts
            place = ("top left", "top right", "bottom left", "bottom right")[quadrant]
            sample = _sample(f"How many ships are in the {place} quadrant?", str(count), Task.COUNTING, i)
        samples.append(replace(sample, image=image))
        features[image] = x
    train, test = samples[:180], samples[180:]
    predictions = probe_predictions(train, test, lambda ss: np.stack([features[s.image] for s in ss]))
    assert len(predictions) == len(test)
    for task, group in by_task(predictions).items():
        scorer = scorer_of(group)
        assert scorer.score(group)[scorer.primary] == pytest.approx(1.0), task


def test_probes_refuse_a_tower_that_trained():
    from skymoe.data.feature_cache import PixelSource
    from skymoe.eval.runner import probe_records

    with pytest.raises(ValueError, match="freeze_vision"):
        probe_records([], [], PixelSource(lambda images: None))


def test_probes_leave_out_an_unreadable_image_with_a_warning(tmp_path, caplog):
    """A training image that cannot be read (skipped by training under on_error: skip) never crashes the probes."""
    from PIL import Image

    from skymoe.data.feature_cache import FeatureCache
    from skymoe.eval.runner import probe_records

    samples = []
    for i in range(12):
        answer = ("dark", "light")[i % 2]
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (4, 4), (40, 40, 40) if answer == "dark" else (220, 220, 220)).save(path)
        samples.append(replace(_sample("What scene is this?", answer, Task.CLASSIFICATION, i), image=str(path)))
    (tmp_path / "img3.png").write_bytes(b"not a png")  # a training image gone bad
    encode = lambda images: torch.stack([torch.tensor(np.asarray(im, dtype=np.float32)[:1, :1].reshape(1, 3) / 255) for im in images])  # noqa: E731
    source = FeatureCache(encode, "toy", root=tmp_path / "cache")
    with caplog.at_level("WARNING"):
        predictions = probe_records(samples[:10], samples[10:], source)
    assert "1 unreadable image(s) left out" in caplog.text and "img3.png" in caplog.text
    assert [p.prediction for p in predictions] == ["dark", "light"]
