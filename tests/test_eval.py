"""`skymoe eval` on a tiny saved model and the embedded real data; suites; `skymoe score` byte-exactness."""
from __future__ import annotations

import json
from importlib import resources

import pytest
import yaml
from _eval_helpers import save_tiny_model

from skymoe.cli import main
from skymoe.errors import ConfigError
from skymoe.eval.suite import load_suite, parse_suite


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, real_assets):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def test_eval_cli_writes_full_report_and_score_reproduces_it(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--suite", "embedded", "--out", str(out), "--limit", "3", "--batch-size", "4"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    groups = {f"{r['dataset']}/{r['split']}" for r in lines}
    assert groups == {"rsvqa_lr/test", "rsvqa_hr/test", "rsvqa_hr/test_phili", "hrvqa/val", "bigearthnet/test"}
    assert len(lines) == 15
    first = lines[0]
    assert len(first["routing"]["expert_weights"][0]) == 4 and first["routing"]["task"]
    assert sum(first["routing"]["expert_weights"][0]) == pytest.approx(1.0, abs=1e-4)
    assert all(r["baseline"] for r in lines)  # every embedded dataset has a train split
    bigearthnet = next(r for r in lines if r["dataset"] == "bigearthnet")
    assert bigearthnet["task"] == "multilabel" and "Arable land" in bigearthnet["references"]  # the label set

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["model"]["by_dataset"]) == groups
    assert metrics["routing"]["status"] == "ok" and metrics["routing"]["num_experts"] == 4
    assert 0.0 <= metrics["routing"]["specialisation"]["task"]["mean_bits"] <= 1.0
    assert "rsvqa_lr/test" in metrics["baseline"]["question_answering"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # question types + routing heatmap
    assert (out / "routing_heatmap.png").is_file() and (out / "report.md").is_file()

    assert main(["score", "--predictions", str(out / "predictions.jsonl"), "--out", str(tmp_path / "rescored")]) == 0
    assert (tmp_path / "rescored" / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()


def test_packaged_suites_are_valid():
    suite = load_suite("embedded")
    assert [d.name for d in suite.datasets] == ["rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet"]
    assert load_suite("mgrs_mini").scorer_for("region_caption") == "caption"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"datasets": [{"name": "rsvqa_xx", "splits": ["test"]}]}, r"unknown dataset 'rsvqa_xx'; allowed: \[.*'rsvqa_lr'"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": ["tset"]}]}, r"no split 'tset'; allowed: \['train', 'val', 'test'\]"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": ["test"]}], "scorers": {"vqa": "bleu"}}, r"unknown scorer 'bleu'.*allowed: \['caption'"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": ["test"]}], "prompts": {"vqaa": "{question}"}}, r"unknown task 'vqaa'"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": ["test"]}], "generate": {}}, r"unknown key\(s\) \['generate'\]"),
        ({"datasets": []}, "non-empty list of datasets"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": "test"}]}, r"datasets\[0\].splits'.*non-empty list of split names"),
        ({"datasets": [{"name": "rsvqa_lr", "splits": ["test"]}], "generation": {"batch_size": 0}}, r"generation.batch_size"),
    ],
)
def test_bad_suites_name_the_key_and_allowed_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_suite(raw, file="suite.yaml")


def test_unknown_suite_file_is_a_cli_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--suite", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "packaged: ['embedded', 'mgrs_mini']" in capsys.readouterr().err


def test_eval_cli_writes_learning_controls(tiny_model_dir, tmp_path, monkeypatch):
    """--control and --probe: the controls evaluated on the same samples, probes fitted on the train splits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SKYMOE_CACHE", str(tmp_path / "cache"))
    suite = yaml.safe_load((resources.files("skymoe.suites") / "embedded.yaml").read_text())
    suite["generation"]["max_new_tokens"] = 4  # the controls compare answers, whatever their length: generate less
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--suite", str(tmp_path / "suite.yaml"), "--out", str(out), "--limit", "6",
            "--batch-size", "4", "--control", f"blind={tiny_model_dir}", "--probe"]
    assert main(argv) == 0
    learning = json.loads((out / "learning.json").read_text())
    assert set(learning) == {"rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet"}
    multilabel = learning["bigearthnet"]["multilabel"]
    assert multilabel["n"] == 6 and multilabel["metric"] == "micro_f1"
    assert multilabel["blind"] == multilabel["moe"]  # the same model as its own control
    assert multilabel["ci95"][1] <= 0.0  # a model never beats itself
    assert multilabel["probe"] is not None and learning["rsvqa_lr"]["vqa"]["probe"] is None
    probed = [json.loads(line) for line in (out / "predictions_probe.jsonl").read_text().splitlines()]
    assert len(probed) == 6 and all(p["task"] == "multilabel" for p in probed)  # the one probed task of the suite
    assert (out / "learning.png").is_file() and "Learning controls" in (out / "learning.md").read_text()
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_model_dir), "--suite", "embedded", "--out", str(out), "--control", "nonsense"])


def test_eval_runs_one_prefill_per_batch_and_reads_the_routing_from_it(tiny_model_dir, monkeypatch):
    """The routing of each prediction comes from its batch's generate prefill: no second pass over the prompts."""
    import functools

    from skymoe.data.datasets import load_dataset
    from skymoe.data.feature_cache import PixelSource
    from skymoe.eval.predict import generate_predictions
    from skymoe.model import SkyMoEForConditionalGeneration
    from skymoe.model.generation import load_model

    model, processor = load_model(tiny_model_dir)
    samples = list(load_dataset("rsvqa_lr", "test"))[:5]
    prompts_seen = []
    forward = SkyMoEForConditionalGeneration.forward

    @functools.wraps(forward)  # generate() checks its kwargs against forward's signature
    def counting_forward(self, *args, **kwargs):
        prompts_seen.append(kwargs["input_ids"].shape[1] > 1)  # decode steps feed one token
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SkyMoEForConditionalGeneration, "forward", counting_forward)
    suite = load_suite("embedded")
    suite.generation.max_new_tokens = 4
    predictions = generate_predictions(model, processor, samples, suite, batch_size=2, source=PixelSource(processor.preprocess_images))
    assert sum(prompts_seen) == 3  # batches of 2, 2 and 1
    assert all(p.routing is not None and len(p.routing.expert_weights[0]) == 4 for p in predictions)
