"""Caption metrics: parity with pycocoevalcap on the real UCM and Sydney captions; SPICE; empty output."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from skymoe.eval.records import Prediction
from skymoe.eval.scorers import caption

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer and METEOR need `java`")

IMAGES_PER_DATASET = 60  # METEOR runs ~1 s per 100 candidates here; a subset keeps the test fast


def leave_one_out(folder: Path, name: str) -> list[Prediction]:
    """Test-split images: caption 0 is the candidate, captions 1-4 the references."""
    captions = (folder / f"{name}_test_caps.txt").read_text(encoding="utf-8").splitlines()
    files = (folder / f"{name}_test_filename.txt").read_text(encoding="utf-8").splitlines()
    by_image: dict[str, list[str]] = {}
    for file, text in zip(files, captions):
        by_image.setdefault(file, []).append(text)
    assert all(len(v) == 5 for v in by_image.values())
    return [
        Prediction(id=f"{name}-{image}", dataset=name, split="test", task="caption", granularity="image",
                   question="Describe the image.", prediction=caps[0], references=caps[1:])
        for image, caps in list(by_image.items())[:IMAGES_PER_DATASET]
    ]


def direct_pycocoevalcap(predictions: list[Prediction]) -> dict[str, float]:
    """The reference: pycocoevalcap used as its COCOEvalCap does, keyed by image id."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({p.id: [{"caption": r} for r in p.references] for p in predictions})
    res = tok.tokenize({p.id: [{"caption": p.prediction}] for p in predictions})
    out = dict(zip(["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"], Bleu(4).compute_score(gts, res)[0]))
    out["METEOR"] = Meteor().compute_score(gts, res)[0]
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


@pytest.mark.parametrize("dataset", ["ucm", "sydney"])
def test_leave_one_out_parity_with_pycocoevalcap(dataset, shared_dir):
    predictions = leave_one_out(shared_dir / "data" / "captions", dataset)
    ours, reference = caption.score(predictions), direct_pycocoevalcap(predictions)
    for metric, value in reference.items():
        assert ours[metric] == pytest.approx(value, abs=1e-6), metric
    # human captions agree with each other far above chance: real text, real metrics
    assert ours["BLEU-1"] > 0.5 and ours["CIDEr"] > 0.5 and 0.0 < ours["METEOR"] < 1.0


def test_line_breaks_inside_a_caption_do_not_shift_the_tokens_of_the_others():
    tokens = caption.tokenize({"a": ["A road\rnear houses", "many green trees"], "b": ["two\u2028planes", "x\x0by\x0cz"]})
    assert tokens == {"a": ["a road near houses", "many green trees"], "b": ["two planes", "x y z"]}


def test_spice_is_never_reported_as_zero():
    status = caption.spice_status()
    if status["status"] == "unavailable":
        assert "reason" in status and "value" not in status


def test_empty_and_garbage_captions_score_zero_without_crashing():
    refs = ["a plane is parked at the airport .", "there is a plane on the runway ."]
    preds = [
        Prediction(id=str(i), dataset="d", split="test", task="caption", granularity="image", question="q", prediction=p, references=refs)
        for i, p in enumerate(["", "!!! ||| ...", "line\nbreak"])
    ]
    m = caption.score(preds)
    assert m["empty_predictions"] == 1
    for metric in ("BLEU-1", "METEOR", "ROUGE-L", "CIDEr"):
        assert m[metric] == pytest.approx(0.0, abs=1e-9)


def test_caption_and_grounding_records_aggregate_with_baseline_and_spice_status(tmp_path):
    from skymoe.eval import score
    from skymoe.eval.records import write_predictions

    def record(i, task, granularity, prediction, references, baseline, **kw):
        return Prediction(id=str(i), dataset="mgrs_mini", split="test", task=task, granularity=granularity, question="q",
                          prediction=prediction, references=references, question_type=task, baseline=baseline, **kw)

    records = [
        record(0, "caption", "image", "a parking lot with six vehicles", ["a parking lot containing six vehicles and a ship"], "a park"),
        record(1, "caption", "image", "", ["an industrial area with four storage tanks"], "an industrial area"),
        record(2, "region_caption", "object", "a purple vehicle", ["a purple vehicle"], "two vehicles", gt_boxes=[[1, 1, 9, 9]]),
        record(3, "grounding", "object", "[12, 9, 19, 16]", [""], "[46, 45, 55, 55]", image_size=[100, 100], gt_boxes=[[12, 9, 19, 16]]),
        record(4, "grounding", "object", "{<12><9><19><16>|0}", [""], "[46, 45, 55, 55]", image_size=[100, 100], gt_boxes=[[12, 9, 19, 16]]),
    ]
    path = tmp_path / "predictions.jsonl"
    write_predictions(records, path)
    metrics = score(path, tmp_path / "out")
    model = metrics["model"]
    assert set(model["by_granularity"]) == {"image", "object"}
    assert model["by_task"]["caption"]["empty_predictions"] == 1
    assert model["by_task"]["caption"]["SPICE"]["status"] in ("unavailable", "ok")
    assert model["by_task"]["region_caption"]["BLEU-1"] == pytest.approx(1.0)  # exact copy of the reference
    grounding = model["by_task"]["grounding"]
    assert grounding["acc@0.5"] == 0.5 and grounding["parse_failures"] == 1  # GeoChat style is not canonical text
    assert metrics["baseline"]["by_task"]["grounding"]["acc@0.5"] == 0.0
    assert metrics["baseline"]["by_task"]["region_caption"]["BLEU-1"] < 1.0
