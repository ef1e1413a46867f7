"""`skymoe score`: metrics.json structure, byte-exact re-scoring, bad predictions files (no model)."""
from __future__ import annotations

import json

import pytest

from skymoe.cli import main
from skymoe.errors import DataError
from skymoe.eval import score
from skymoe.eval.records import Prediction, Routing, write_predictions


def records() -> list[Prediction]:
    out = []
    for i, (task, qtype, pred, ref, base) in enumerate(
        [
            ("vqa", "presence", "yes", "yes", "no"),
            ("vqa", "presence", "no", "yes", "no"),
            ("vqa", "comp", "no", "no", "no"),
            ("counting", "count", "12", "12", "3"),
            ("counting", "count", "seven", "5", "3"),
            ("multilabel", None, "Arable land, pastures", "arable land|pastures", "pastures"),
            ("classification", None, "forest", "forest", "river"),
        ]
    ):
        w = [[0.9, 0.1], [0.2, 0.8]] if task == "vqa" else [[0.1, 0.9], [0.7, 0.3]]
        out.append(
            Prediction(
                id=f"s{i}", dataset="rsvqa_lr" if task in ("vqa", "counting") else "bigearthnet", split="test", task=task,
                granularity="image", question="q?", prediction=pred, references=ref.split("|"), question_type=qtype,
                baseline=base, routing=Routing(task="vqa", granularity="image", expert_weights=w),
            )
        )
    return out


def test_score_cli_reproduces_metrics_bit_exactly(tmp_path):
    path = tmp_path / "predictions.jsonl"
    write_predictions(records(), path)
    metrics = score(path, tmp_path / "a")
    assert main(["score", "--predictions", str(path), "--out", str(tmp_path / "b")]) == 0
    first, second = (tmp_path / "a" / "metrics.json").read_bytes(), (tmp_path / "b" / "metrics.json").read_bytes()
    assert first == second and json.loads(first) == metrics

    qa = metrics["model"]["question_answering"]["rsvqa_lr/test"]
    assert qa["overall_accuracy"] == pytest.approx(3 / 5)  # count questions included although task=counting
    assert qa["average_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["baseline"]["question_answering"]["rsvqa_lr/test"]["overall_accuracy"] == pytest.approx(1 / 5)
    assert metrics["model"]["overall"]["counting"] == {"n": 2, "scorer": "counting", "metric": "exact_accuracy", "value": 0.5}
    assert set(metrics["model"]["by_dataset"]) == {"rsvqa_lr/test", "bigearthnet/test"}
    assert metrics["model"]["by_question_type"]["rsvqa_lr/test"]["vqa"]["presence"]["value"] == 0.5
    assert metrics["routing"]["router_accuracy"]["task"]["overall"] == pytest.approx(3 / 7)
    html = (tmp_path / "a" / "report.html").read_text()
    assert "data:image/png;base64," in html and "rsvqa_lr/test" in html
    assert (tmp_path / "a" / "routing_heatmap.png").stat().st_size > 1000
    assert "| vqa |" in (tmp_path / "a" / "report.md").read_text()


def test_bad_predictions_files_give_clear_errors(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    good = records()[0].to_dict()
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        score(path, tmp_path / "out")
    path.write_text(json.dumps(good) + "\n{not json\n")
    assert main(["score", "--predictions", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "line 2" in capsys.readouterr().err
    path.write_text(json.dumps({**good, "scorer": "bleu"}) + "\n")
    with pytest.raises(DataError, match="unknown scorer 'bleu'"):
        score(path, tmp_path / "out")


def test_external_predictions_must_match_reference_ids(tmp_path):
    from skymoe.data.schema import Sample, Turn, write_jsonl

    samples = [
        Sample(id=f"q{i}", image="x.png", task="vqa", granularity="image", question_type="presence",
               conversation=[Turn("user", "Is there a road?"), Turn("assistant", "yes")], dataset="d", split="test")
        for i in range(3)
    ]
    refs = tmp_path / "refs.jsonl"
    write_jsonl(samples, refs)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": f"q{i}", "prediction": p}) + "\n" for i, p in enumerate(["yes", None, "no"])))
    metrics = score(preds, tmp_path / "out", references=refs)
    assert metrics["model"]["by_task"]["vqa"]["overall_accuracy"] == pytest.approx(1 / 3)
    preds.write_text(json.dumps({"id": "q0", "prediction": "yes"}) + "\n" + json.dumps({"id": "q0", "prediction": "no"}) + "\n")
    with pytest.raises(DataError, match="duplicate prediction"):
        score(preds, tmp_path / "out", references=refs)
    preds.write_text(json.dumps({"id": "q0", "prediction": "yes"}) + "\n" + json.dumps({"id": "zzz", "prediction": "no"}) + "\n")
    with pytest.raises(DataError, match=r"1 unknown \(e.g. \[.zzz.\]\), 2 without a prediction"):
        score(preds, tmp_path / "out", references=refs)


def test_external_predictions_join_on_dataset_split_and_id(tmp_path):
    """Ids are unique within a split only: a mixed references file joins on dataset/split/id, never on a guess."""
    from skymoe.data.schema import Sample, Turn, write_jsonl

    def sample(dataset, i, answer):
        return Sample(id=str(i), image="x.png", task="vqa", granularity="image", question_type="presence",
                      conversation=[Turn("user", "Is there a road?"), Turn("assistant", answer)], dataset=dataset, split="test")

    refs, preds = tmp_path / "refs.jsonl", tmp_path / "preds.jsonl"
    write_jsonl([sample("lr", 1, "yes"), sample("lr", 2, "no"), sample("hr", 1, "no"), sample("hr", 2, "no")], refs)
    preds.write_text("".join(json.dumps({"id": i, "prediction": "yes" if i == 1 else "no"}) + "\n" for i in (1, 2)))
    with pytest.raises(DataError, match="is in several reference splits"):
        score(preds, tmp_path / "out", references=refs)
    lines = [("lr", 1, "yes"), ("lr", 2, "no"), ("hr", 1, "yes"), ("hr", 2, "no")]
    preds.write_text("".join(json.dumps({"dataset": d, "split": "test", "id": i, "prediction": a}) + "\n" for d, i, a in lines))
    metrics = score(preds, tmp_path / "out", references=refs)
    assert metrics["model"]["n"] == 4 and metrics["model"]["by_task"]["vqa"]["overall_accuracy"] == pytest.approx(3 / 4)
