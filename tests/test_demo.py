"""`skymoe demo`: honest splits, and a smoke run of the whole pipeline (seconds of training)."""
import json

import pytest

from skymoe.demo.splits import build_demo_splits


@pytest.fixture(scope="module")
def splits(real_assets):
    return build_demo_splits(seed=0, mgrs_train=50)


def test_unseen_images_never_train(splits):
    train_images = {s.image for s in splits.train}
    assert splits.unseen_images
    assert not train_images & {s.image for s in splits.unseen_images}


def test_unseen_questions_are_of_seen_images_and_withheld(splits):
    train_ids = {(s.dataset, s.id) for s in splits.train}
    held = splits.unseen_questions
    assert {s.dataset for s in held} == {"rsvqa_lr", "rsvqa_hr"}
    assert not train_ids & {(s.dataset, s.id) for s in held}
    train_images = {s.image for s in splits.train}
    assert all(s.image in train_images for s in held)
    # a seeded 15% of each multi-question image
    n_seen_lr = sum(1 for s in splits.train if s.dataset == "rsvqa_lr") + sum(1 for s in held if s.dataset == "rsvqa_lr")
    assert n_seen_lr == 800  # RSVQA-LR train + val questions
    assert abs(sum(1 for s in held if s.dataset == "rsvqa_lr") / n_seen_lr - 0.15) < 0.01


def test_splits_are_deterministic(real_assets):
    a = build_demo_splits(seed=3, mgrs_train=20, eval_per_task=10, real_eval_limit=10)
    b = build_demo_splits(seed=3, mgrs_train=20, eval_per_task=10, real_eval_limit=10)
    c = build_demo_splits(seed=4, mgrs_train=20, eval_per_task=10, real_eval_limit=10)
    ids = lambda s: [x.id for x in s.train + s.unseen_questions + s.unseen_images]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_tuning_splits_hold_out_validation_and_never_read_test(real_assets, monkeypatch):
    from skymoe.demo import splits as demo_splits

    read = []
    real_load = demo_splits.load_dataset
    monkeypatch.setattr(demo_splits, "load_dataset", lambda name, split: read.append(split) or real_load(name, split))
    tuning = build_demo_splits(seed=0, mgrs_train=20, eval_per_task=10, datasets=demo_splits.DEMO_TUNING_SOURCES)
    assert "test" not in read and "test_phili" not in read
    assert {s.split for s in tuning.unseen_images} == {"val"}
    assert not {s.image for s in tuning.train} & {s.image for s in tuning.unseen_images}


@pytest.mark.slow
def test_demo_smoke_writes_full_report(tmp_path, real_assets):
    from skymoe.cli import main

    assert main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "demo_run.json").read_text())
    assert run["stage1"]["steps"] == 3 and run["stage2"]["steps"] == 3
    html = (tmp_path / "report.html").read_text()
    for heading in ("Learning controls", "Held-out question answering", "Per task and question type", "Loss curves", "Expert load", "Gallery", "Cost"):
        assert heading in html
    assert html.count("data:image/png;base64,") == 5  # learning controls, headline bars, loss curves, routing heatmap, gallery
    moe = json.loads((tmp_path / "eval_stage2" / "metrics.json").read_text())
    assert moe["routing"]["status"] == "ok"
    groups = set(moe["model"]["by_dataset"])
    assert {"rsvqa_lr/unseen-images", "rsvqa_lr/unseen-questions"} <= groups
    assert (tmp_path / "report.md").read_text().startswith("# SkyMoE demo report")
    learning = json.loads((tmp_path / "learning.json").read_text())
    assert set(learning) >= {"mgrs_mini", "rsvqa_lr"}
    for controls in learning["mgrs_mini"].values():
        assert set(controls) == {"metric", "n", "prior", "blind", "probe", "dense", "moe", "ci95"}
        assert controls["n"] == 4  # the smoke budget's held-out samples per task
    assert learning["mgrs_mini"]["classification"]["probe"] is not None
    assert learning["mgrs_mini"]["grounding"]["probe"] is None


def test_rsmoe_recipe_demo_trains_and_reports_expert_llms(tmp_path, real_assets):
    """`skymoe demo --recipe rsmoe`: a Q-Former, then 3 expert LLMs (top-2, rank-1 FFN LoRA, templated routing
    instructions), trained, evaluated and reported like the default recipe."""
    from skymoe.cli import main
    from skymoe.demo.run import Budget, stage_configs

    for name in ("train_real", "train_synthetic"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n" * 4)
    stage1, blind, stage2 = stage_configs(tmp_path, tmp_path / "stage1", Budget.smoke(), seed=0, llm="tiny", recipe="rsmoe")
    assert (stage1.model.projector.type, stage1.model.projector.num_queries, blind.model.projector.type) == ("qformer", 32, "qformer")
    moe = stage2.model.moe
    assert (moe.expert_type, moe.num_experts, moe.top_k, moe.lora_rank, moe.expert_templates) == ("llm", 3, 2, 1, ["theme", "objects", "relations"])
    with pytest.raises(ValueError, match="unknown demo recipe"):
        stage_configs(tmp_path, tmp_path / "stage1", Budget.smoke(), seed=0, llm="tiny", recipe="llava")

    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--recipe", "rsmoe", "--out", str(out)]) == 0
    assert json.loads((out / "demo_run.json").read_text())["recipe"] == "rsmoe"
    assert (out / "report.md").read_text().startswith("# SkyMoE demo report: the RS-MoE recipe")
    routing = json.loads((out / "eval_stage2" / "metrics.json").read_text())["routing"]
    assert (routing["status"], routing["level"], routing["num_layers"], routing["num_experts"]) == ("ok", "llm", 1, 3)


@pytest.mark.parametrize("llm", ["gemma3-270m", "smollm2-135m"])
def test_pretrained_llm_demo_trains_lora_on_the_gguf_asset(tmp_path, llm):
    from skymoe.demo.run import Budget, stage_configs

    for name in ("train_real", "train_synthetic"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n" * 4)
    budget = Budget(stage1_steps=300, stage2_steps=500, mgrs_scenes=10, eval_per_task=1)
    stage1, blind, stage2 = stage_configs(tmp_path, tmp_path / "stage1", budget, seed=0, llm=llm)
    assert (stage1.model.llm.pretrained, stage1.model.moe.dense_lora, blind.model.llm.pretrained) == (llm, True, llm)
    assert (stage1.batch_size, stage1.max_steps, stage2.batch_size, stage2.max_steps) == (4, 30, 4, 50)
    tiny, _, _ = stage_configs(tmp_path, tmp_path / "stage1", budget, seed=0, llm="tiny")
    assert (tiny.model.llm.pretrained, tiny.batch_size, tiny.max_steps) == (None, 32, 300)
