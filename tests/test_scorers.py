"""Scorers on hand-checked values, normalisation rules, bad input (no model, no Java)."""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skymoe.errors import DataError
from skymoe.eval.records import Prediction, Routing
from skymoe.eval.routing import analyse_routing
from skymoe.eval.scorers import classification, counting, vqa
from skymoe.eval.scorers.text import answers_match, normalize_answer, parse_number

_ids = itertools.count()


def rec(pred, refs, task="vqa", qtype=None, **kw) -> Prediction:
    return Prediction(
        id=str(next(_ids)), dataset="d", split="test", task=task, granularity="image", question="q",
        prediction=pred, references=refs if isinstance(refs, list) else [refs], question_type=qtype, **kw,
    )


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Yes.", "yes"),
        ("  The Two cars!", "2 cars"),
        ("1,000", "1000"),
        ("2.5 m", "2.5 m"),
        ("Nope", "no"),
        ("between 10m2 and 100m2", "between 10m2 and 100m2"),
        (None, ""),
        (float("nan"), ""),
        ("an urban area", "urban area"),
    ],
)
def test_normalisation_rules(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_yes_no_first_word_and_numbers():
    assert answers_match("Yes, there is a road.", "yes")
    assert not answers_match("no road", "yes")
    assert not answers_match("yes", "rural")
    assert parse_number("there are twelve cars") == 12.0
    assert parse_number("many") is None


def test_vqa_overall_vs_average_accuracy():
    preds = [rec("yes", "yes", qtype="presence") for _ in range(3)] + [rec("no", "yes", qtype="presence")]
    preds += [rec("7", "5", qtype="count"), rec("five", "5", qtype="count"), rec("1200", "1500", qtype="count")]
    m = vqa.score(preds)
    assert m["per_type"]["presence"] == {"n": 4, "accuracy": 0.75}
    assert m["per_type"]["count"]["accuracy"] == pytest.approx(1 / 3)
    assert m["overall_accuracy"] == pytest.approx(4 / 7)  # OA: all questions equal
    assert m["average_accuracy"] == pytest.approx((0.75 + 1 / 3) / 2)  # AA: all types equal
    assert m["binned"]["count"]["accuracy"] == 1.0  # 7~5 (1-10), 1200~1500 (>1000)


def test_vqa_empty_and_nan_predictions_are_wrong_not_errors():
    m = vqa.score([rec("", "yes", qtype="presence"), rec("   ", "no", qtype="presence")])
    assert m["overall_accuracy"] == 0.0 and m["empty_predictions"] == 2


def test_classification_oa_aa_and_confusion():
    preds = [rec("Forest", "forest", task="classification") for _ in range(3)]
    preds += [rec("river", "forest", task="classification"), rec("river", "river", task="classification"), rec("a cat", "river", task="classification")]
    m = classification.score(preds)
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    assert m["average_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["confusion_matrix"]["columns"] == ["forest", "river", "<other>"]
    assert m["confusion_matrix"]["matrix"] == [[3, 1, 0], [0, 1, 1]]


def test_multilabel_phrase_matching_and_f1():
    vocab = ["forest", "mixed forest", "water bodies"]
    assert classification.labels_in_text("Mixed forest; water bodies", vocab) == {"mixed forest", "water bodies"}
    preds = [
        rec("mixed forest, water bodies", ["mixed forest", "water bodies"], task="multilabel"),
        rec("forest", ["forest", "water bodies"], task="multilabel"),
        rec("garbage ###", ["forest"], task="multilabel"),
    ]
    m = classification.score_multilabel(preds)
    # tp=3 (mf, wb, forest), fp=1 ("garbage" names no class: <other>), fn=2 (wb in #2, forest in #3) -> micro F1 = 6/9
    assert m["micro_f1"] == pytest.approx(6 / 9)
    assert m["predictions_naming_no_class"] == 1
    assert "binary" in m["map_scores"] and 0.0 < m["mAP"] <= 1.0


def test_counting_metrics_and_unparsable_as_miss():
    preds = [rec("3", "3", task="counting"), rec("five", "3", task="counting"), rec("lots", "4", task="counting")]
    m = counting.score(preds)
    assert m["exact_accuracy"] == pytest.approx(1 / 3)
    assert m["mae"] == pytest.approx((0 + 2 + 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 4 + 16) / 3))
    assert m["parse_failures"] == 1


def test_counting_reference_without_number_is_a_data_error():
    with pytest.raises(DataError, match="holds no count"):
        counting.score([rec("3", "several", task="counting")])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_garbage_output_scores_low_and_never_crashes(garbage):
    refs = ["yes", "rural", "12", "forest"]
    preds = [rec(garbage, r, qtype="t") for r in refs]
    assert 0.0 <= vqa.score(preds)["overall_accuracy"] <= 0.5
    c = counting.score([rec(garbage, "12", task="counting")])
    assert math.isfinite(c["mae"]) and c["exact_accuracy"] in (0.0, 1.0)
    classification.score([rec(garbage, "forest", task="classification"), rec("river", "river", task="classification")])
    classification.score_multilabel([rec(garbage, ["forest", "river"], task="multilabel")])


def test_prediction_record_validation_names_field():
    good = rec("yes", "yes").to_dict()
    with pytest.raises(DataError, match="task"):
        Prediction.from_dict({**good, "task": "dance"}, file="p.jsonl")
    with pytest.raises(DataError, match="gt_boxes"):
        Prediction.from_dict({**good, "gt_boxes": [[1, 2, 3]]}, file="p.jsonl")
    with pytest.raises(DataError, match="references"):
        Prediction.from_dict({**good, "references": []}, file="p.jsonl")
    assert Prediction.from_dict({**good, "prediction": None}).prediction == ""
    assert Prediction.from_dict({**good, "prediction": float("nan")}).prediction == ""


def test_routing_specialisation_index():
    one_hot = {"vqa": [[1.0, 0.0]], "caption": [[0.0, 1.0]]}
    preds = [rec("x", "x", task=t, routing=Routing(t, "image", w)) for t, w in one_hot.items() for _ in range(2)]
    r = analyse_routing(preds)
    assert r["specialisation"]["task"]["per_layer_bits"] == pytest.approx([1.0])
    assert r["specialisation"]["task"]["normalized"] == pytest.approx(1.0)
    assert r["router_accuracy"]["task"]["overall"] == 1.0
    uniform = [rec("x", "x", task=t, routing=Routing("vqa", "image", [[0.5, 0.5]])) for t in ("vqa", "caption")]
    r = analyse_routing(uniform)
    assert r["specialisation"]["task"]["mean_bits"] == pytest.approx(0.0)
    assert r["router_accuracy"]["task"]["overall"] == 0.5
    assert analyse_routing([rec("x", "x")])["status"] == "unavailable"
    assert r["level"] == "layer"


def test_routing_analysis_of_expert_llms_and_mixed_levels():
    """Expert LLMs' one sequence-level choice per sample is analysed as one layer; a mix of levels is an error."""
    llm = [rec("x", "x", task=t, routing=Routing(t, "image", [w], level="llm"))
           for t, w in (("vqa", [0.7, 0.3, 0.0]), ("caption", [0.0, 0.4, 0.6]))]
    assert llm[0].routing.chosen == [[{"expert": 0, "weight": 0.7}, {"expert": 1, "weight": 0.3}]]
    r = analyse_routing(llm)
    assert r["level"] == "llm" and r["num_layers"] == 1 and r["num_experts"] == 3
    assert 0 < r["specialisation"]["task"]["normalized"] < 1
    with pytest.raises(DataError, match="routing.level"):
        analyse_routing([*llm, rec("x", "x", task="vqa", routing=Routing("vqa", "image", [[0.5, 0.5, 0.0]]))])


def grounding_rec(pred: str) -> Prediction:
    # image 200x100; true box = [10, 20, 50, 60] on the 0-100 scale
    return rec(pred, [""], task="grounding", image_size=[200, 100], gt_boxes=[[20.0, 20.0, 100.0, 60.0]])


def test_grounding_iou_and_parse_failures():
    from skymoe.eval.scorers import grounding

    preds = [
        grounding_rec("[10, 20, 50, 60]"),  # exact
        grounding_rec("the box is [10, 20, 30, 60]"),  # half the width: IoU 0.5
        grounding_rec("[60, 60, 90, 90]"),  # disjoint
        grounding_rec("somewhere on the left"),  # unparsable
        grounding_rec("[10, 20]"),  # wrong box format
    ]
    m = grounding.score(preds)
    assert m["acc@0.5"] == pytest.approx(2 / 5)
    assert m["mean_iou"] == pytest.approx(1.5 / 5)
    assert m["parse_failures"] == 2 and m["parse_failure_rate"] == pytest.approx(0.4)


def test_grounding_matches_boxes_one_to_one_so_extra_boxes_cost():
    from skymoe.eval.scorers import grounding

    spam = "; ".join(f"[{x}, {y}, {x + 40}, {y + 40}]" for x in range(0, 60, 10) for y in range(0, 60, 10))  # 36 boxes, one exact
    preds = [grounding_rec(spam), grounding_rec("[10, 20, 50, 60]; [70, 70, 90, 90]")]
    ious = [grounding.sample_iou(p) for p in preds]
    assert ious[0] == pytest.approx(1 / 36) and ious[1] == pytest.approx(1 / 2)  # the exact box, over the larger count


def test_accepted_answers_any_one_counts_for_classification_and_counting():
    m = classification.score([rec("parking", ["parking lot", "parking"], task="classification"), rec("forest", "river", task="classification")])
    assert m["overall_accuracy"] == pytest.approx(1 / 2) and m["per_class_accuracy"]["parking lot"] == 1.0
    m = counting.score([rec("4", ["3", "4"], task="counting"), rec("7", ["3", "5"], task="counting")])
    assert m["exact_accuracy"] == pytest.approx(1 / 2) and m["mae"] == pytest.approx((0 + 2) / 2)  # error to the nearest


@pytest.mark.parametrize("text, number", [("2,500m2", 2500.0), ("twenty-one", 21.0), ("forty two cars", 42.0), ("-2", -2.0), ("1,5", 1.0)])
def test_numbers_in_answers(text, number):
    assert parse_number(text) == number


def test_multilabel_prediction_parts_that_name_no_class_are_false_positives():
    """scikit-learn with the vocabulary {forest, water}: micro-F1 0.8, macro-F1 0.5 (water: no true example)."""
    m = classification.score_multilabel([rec("forest; water", ["forest"], task="multilabel"), rec("forest", ["forest"], task="multilabel")])
    assert m["micro_f1"] == pytest.approx(0.8) and m["macro_f1"] == pytest.approx(0.5)


def test_grounding_without_true_box_is_a_data_error():
    from skymoe.eval.scorers import grounding

    with pytest.raises(DataError, match="gt_boxes"):
        grounding.score([rec("[1, 2, 3, 4]", [""], task="grounding", image_size=[10, 10])])
