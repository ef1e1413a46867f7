"""Two-stage training end to end on CPU with tiny models, and every bad-input path."""
from __future__ import annotations

import json

import pytest
import torch

from _train_data import write_config, write_toy_dataset
from skymoe.errors import DataError
from skymoe.train import StageError, TrainingDivergedError, TrainingError, train
from skymoe.train.config import load_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("stage1")
    cfg = load_config(write_config(root / "s1.yaml", data), ["max_steps=40", "log_every=10", "checkpoint_every=20", "optim.lr=1e-2"])
    return train(cfg, root / "out")


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_stage1_learns_and_writes_the_output_layout(stage1):
    from pathlib import Path

    out = Path(stage1.output_dir)
    assert (out / "model" / "config.json").is_file() and (out / "model" / "processor_config.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    assert any((out / "tb").iterdir())
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [10, 20, 30, 40]
    assert stage1.final_loss < stage1.first_loss  # the loss falls
    assert {"loss/lm", "loss/total", "samples_per_s", "router/task_accuracy", "router/granularity_accuracy"} <= set(metrics[0])
    assert stage1.steps == 40 and stage1.samples_seen == 40 * 4 and stage1.samples_per_second > 0
    # stage 1 (adapter: full) trains projector, router and the small LLM; the vision tower stays frozen
    assert {k for k in metrics[0] if k.startswith("lr/")} == {"lr/projector", "lr/router", "lr/lm"}


def test_stage2_upcycles_and_trains_router_experts_with_aux_and_cda_losses(stage1, data, tmp_path):
    cfg = load_config(
        write_config(tmp_path / "s2.yaml", data, stage=2),
        [f"model.init_from={stage1.output_dir}", "max_steps=40", "log_every=10", "optim.lr=1e-2", "optim.router_lr=3e-2"],
    )
    result = train(cfg, tmp_path / "out")
    metrics = read_metrics(tmp_path / "out")
    terms = {"loss/lm", "loss/load_balance", "loss/router_z", "loss/router_task_ce", "loss/router_granularity_ce", "loss/cda"}
    assert terms <= set(metrics[-1])
    assert metrics[-1]["lr/router"] == pytest.approx(3 * metrics[-1]["lr/experts"])  # per-module learning rates
    assert 0 < metrics[-1]["expert_entropy/layer0"] <= metrics[-1]["expert_entropy/max"] + 1e-6
    assert sum(metrics[-1][f"expert_load/layer0/expert{e}"] for e in range(4)) == pytest.approx(1.0)
    assert metrics[-1]["loss/lm"] < metrics[0]["loss/lm"]
    assert result.model.num_experts == 4
    # the stage-1 tokenizer is reused, unchanged
    from pathlib import Path

    tok1 = json.loads((Path(stage1.model_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    tok2 = json.loads((tmp_path / "out" / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert tok1 == tok2


def test_stage2_trains_separate_expert_lms_named_by_folder_and_saves_them(stage1, data, tmp_path):
    """moe.expert_models: two copies of the stage-1 LLM (saved with its tokenizer) become the expert LMs; stage 2 trains
    them whole, leaves the base LLM frozen, and the saved model reloads them."""
    from skymoe.model.generation import load_model

    dense, processor = load_model(stage1.model_dir)
    folders = []
    for e in range(2):
        dense.language_model.save_pretrained(tmp_path / f"lm{e}")
        processor.tokenizer.save_pretrained(tmp_path / f"lm{e}")
        folders.append(str(tmp_path / f"lm{e}"))
    moe = {"num_experts": 2, "top_k": 2, "expert_type": "llm", "routing": "sequence", "expert_models": folders}
    cfg = load_config(write_config(tmp_path / "s2.yaml", data, stage=2, model={"moe": moe}),
                      [f"model.init_from={stage1.output_dir}", "max_steps=4", "log_every=2"])
    result = train(cfg, tmp_path / "out")
    model, _ = load_model(tmp_path / "out" / "model")
    trained = model.expert_lms[0].get_output_embeddings().weight
    assert not torch.equal(trained, dense.get_output_embeddings().weight)  # trained whole
    assert torch.equal(model.get_output_embeddings().weight, dense.get_output_embeddings().weight)  # the base: frozen
    assert torch.equal(trained, result.model.expert_lms[0].get_output_embeddings().weight)
    assert read_metrics(tmp_path / "out")[-1]["loss/lm"] > 0


def test_the_model_config_owns_the_loss_weights_and_its_loss_is_the_logged_objective(stage1, data, tmp_path, monkeypatch):
    """loss.load_balance=0.037 lands in the saved config.json, and the saved model's ``loss`` on the training
    batch is the ``loss/total`` that was logged (lr 0: the saved weights are those of the logged step)."""
    import skymoe.train.loop as loop
    from skymoe.model import SkyMoEForConditionalGeneration

    real, batches = loop._forward, []

    def recording_forward(model, batch):
        output, is_view, batch = real(model, batch)
        batches.append(batch)
        return output, is_view, batch

    monkeypatch.setattr(loop, "_forward", recording_forward)
    overrides = [f"model.init_from={stage1.output_dir}", "loss.load_balance=0.037", "max_steps=1", "log_every=1", "optim.lr=0"]
    train(load_config(write_config(tmp_path / "s2.yaml", data, stage=2), overrides), tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["loss"]["load_balance"] == 0.037 and saved["loss"]["cda"] == 0.05
    model = SkyMoEForConditionalGeneration.from_pretrained(tmp_path / "out" / "model")
    with torch.no_grad():
        output = model(**batches[0])
    logged = read_metrics(tmp_path / "out")[0]
    assert output.loss.item() == pytest.approx(logged["loss/total"], rel=1e-5)
    assert output.loss_terms["load_balance"].item() == pytest.approx(logged["loss/load_balance"], rel=1e-5)
    assert {"lm", "load_balance", "router_z", "cda"} <= set(output.loss_terms)


def test_empty_mix_fails_before_training(data, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", data), ["data.mix=[]"])
    with pytest.raises(DataError, match="mix is empty"):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_stage2_without_a_stage1_output_fails_before_training(data, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", data, stage=2), [f"model.init_from={tmp_path / 'missing'}"])
    with pytest.raises(StageError, match="config.json not found"):
        train(cfg, tmp_path / "out")


def test_stage2_refuses_a_model_that_already_has_experts(stage1, data, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", data, stage=2), [f"model.init_from={stage1.output_dir}", "max_steps=1"])
    train(cfg, tmp_path / "moe")
    again = load_config(write_config(tmp_path / "c.yaml", data, stage=2), [f"model.init_from={tmp_path / 'moe'}"])
    with pytest.raises(StageError, match="already has 4 experts"):
        train(again, tmp_path / "out")


def test_existing_run_needs_resume(stage1, data, tmp_path):
    cfg = load_config(write_config(tmp_path / "again.yaml", data))
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, stage1.output_dir)


def test_nan_loss_stops_names_the_term_and_keeps_the_last_checkpoint(stage1, data, tmp_path, monkeypatch):
    import skymoe.model.losses as losses

    real = losses.granularity_info_nce
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] > 6 else value  # call 1: the upcycling check's forward

    monkeypatch.setattr(losses, "granularity_info_nce", poisoned)
    cfg = load_config(
        write_config(tmp_path / "c.yaml", data, stage=2),
        [f"model.init_from={stage1.output_dir}", "checkpoint_every=2", "cda.pair_prob=1.0"],
    )
    with pytest.raises(TrainingDivergedError, match=r"'cda'.*step 6"):
        train(cfg, tmp_path / "out")
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004"]
    assert not (tmp_path / "out" / "model").exists()


def test_bf16_grad_accumulation_and_a_dense_lora_adapter(data, tmp_path):
    cfg = load_config(
        write_config(tmp_path / "c.yaml", data),
        ["precision=bf16", "grad_accum=2", "max_steps=2", "log_every=1", "model.moe.dense_lora=true", "optim.lm_lr=1e-2"],
    )
    result = train(cfg, tmp_path / "out")
    assert result.steps == 2 and result.samples_seen == 2 * 2 * 4
    metrics = read_metrics(tmp_path / "out")
    assert {k for k in metrics[0] if k.startswith("lr/")} == {"lr/projector", "lr/router", "lr/adapter"}
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("form", ["rank-space", "grouped"])
def test_bf16_stage2_trains_the_lora_experts(data, stage1, tmp_path, form, monkeypatch):
    from skymoe.model import experts

    monkeypatch.setattr(experts, "RANK_SPACE_RATIO", 0 if form == "rank-space" else 10**6)
    monkeypatch.setattr(experts, "FEW_TOKENS", 0)
    cfg = load_config(
        write_config(tmp_path / "s2.yaml", data, stage=2),
        [f"model.init_from={stage1.output_dir}", "precision=bf16", "max_steps=2"],
    )
    result = train(cfg, tmp_path / "out")
    assert result.steps == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_activation_checkpointing_trains_stage2_to_the_same_weights(data, stage1, tmp_path):
    """activation_checkpointing only trades memory for compute: 3 stage-2 steps (experts, router, CDA) land on the same weights."""
    results = []
    for checkpointing in ("false", "true"):
        cfg = load_config(
            write_config(tmp_path / f"s2-{checkpointing}.yaml", data, stage=2),
            [f"model.init_from={stage1.output_dir}", "max_steps=3", f"activation_checkpointing={checkpointing}"],
        )
        results.append(train(cfg, tmp_path / f"out-{checkpointing}").model.state_dict())
    plain, checkpointed = results
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-5) for k in plain)
    before = {k: v for k, v in stage1.model.state_dict().items() if k.startswith("router.")}
    assert before and not all(torch.equal(plain[k], v) for k, v in before.items())  # they trained


@pytest.mark.parametrize("lora_rank, experts_compiled", [(2, True), (4, False)])
def test_compile_trains_stage2_to_the_same_weights_compiling_expert_layers_only_in_the_rank_space_form(
        data, stage1, tmp_path, capsys, lora_rank, experts_compiled):
    """compile only changes how the steps run: 3 stage-2 steps land on the weights of eager ones (within float
    reordering), the same state_dict keys. A layer with experts is compiled whole when its LoRA experts take the
    rank-space form (E * r * 4 <= width: 4 * 2 * 4 <= 32), whose shapes do not depend on the routing; in the
    grouped form (rank 4) it stays eager."""
    results = []
    for compiled in ("false", "true"):
        cfg = load_config(write_config(tmp_path / f"s2-{compiled}.yaml", data, stage=2),
                          [f"model.init_from={stage1.output_dir}", "max_steps=3", f"compile={compiled}", "model.moe.moe_layers=[1]",
                           f"model.moe.lora_rank={lora_rank}"])
        results.append(train(cfg, tmp_path / f"out-{compiled}").model)
    eager, compiled = (model.state_dict() for model in results)
    assert eager.keys() == compiled.keys()
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-4) for k in eager)
    experts = [k for k in eager if "lora_B" in k]
    assert experts and all(compiled[k].abs().sum() > 0 for k in experts)  # upcycled at zero: the experts trained
    config = results[1].config
    assert config.moe["moe_layers"] == [1]
    layers_compiled = config.text_config.num_hidden_layers - (0 if experts_compiled else 1)
    assert f"torch.compile: {layers_compiled} decoder layers" in capsys.readouterr().out
    layers = results[1].language_model.model.layers
    assert layers[0]._compiled_call_impl is not None
    assert (layers[1]._compiled_pass is not None) == experts_compiled and layers[1].layer._compiled_call_impl is None


def test_an_llm_that_is_neither_a_local_folder_nor_an_asset_is_a_config_error_not_a_download(data, tmp_path):
    from skymoe.errors import ConfigError

    cfg = load_config(write_config(tmp_path / "c.yaml", data), ["model.llm.pretrained=google/gemma-3-270m", "model.moe.dense_lora=true"])
    with pytest.raises(ConfigError, match="expected a local causal-LM directory .* nothing is downloaded"):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_resume_may_extend_a_run_but_not_change_what_it_trains(data, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", data, max_steps=2, checkpoint_every=1, log_every=1)
    train(load_config(config), tmp_path / "out")
    with pytest.raises(TrainingError, match=r"other settings than the run it continues .*: batch_size, optim\.lr; only checkpoint_every"):
        train(load_config(config, ["max_steps=3", "optim.lr=0.05", "batch_size=3"]), tmp_path / "out", resume=True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # the run was fp32; auto is bf16 here
    with pytest.raises(TrainingError, match=r"other settings than the run it continues .*: precision;"):
        train(load_config(config, ["max_steps=3", "precision=auto"]), tmp_path / "out", resume=True)
    assert load_config(tmp_path / "out" / "train_config.yaml").max_steps == 2  # untouched by the refused run
    assert train(load_config(config, ["max_steps=3", "log_every=2"]), tmp_path / "out", resume=True).steps == 3


def test_cli_reports_a_bad_override_with_the_allowed_keys(data, tmp_path, capsys):
    from skymoe.cli import main

    config = write_config(tmp_path / "c.yaml", data)
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "out"), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "projector_lr" in err
    assert not (tmp_path / "out").exists()


def test_upcycling_that_changes_the_model_is_caught_before_training(stage1, data, tmp_path, monkeypatch):
    from skymoe.model import SkyMoEForConditionalGeneration

    real = SkyMoEForConditionalGeneration.upcycle.__func__

    def perturbed(cls, dense, num_experts, **kwargs):
        return real(cls, dense, num_experts, perturb=0.05, **kwargs)  # experts no longer exact copies

    monkeypatch.setattr(SkyMoEForConditionalGeneration, "upcycle", classmethod(perturbed))
    cfg = load_config(
        write_config(tmp_path / "c.yaml", data, stage=2), [f"model.init_from={stage1.output_dir}", "model.moe.expert_type=ffn"]
    )
    with pytest.raises(StageError, match="upcycling changed the model"):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_missing_image_fails_before_training_or_is_skipped_and_counted(data, tmp_path):
    from skymoe.data.schema import read_jsonl, write_jsonl

    samples = list(read_jsonl(data))
    samples[3].image = str(tmp_path / "gone.png")
    broken = tmp_path / "broken.jsonl"
    write_jsonl(samples, broken)
    config = write_config(tmp_path / "c.yaml", broken, max_steps=1)
    with pytest.raises(DataError, match="gone.png"):
        train(load_config(config), tmp_path / "raise")
    assert not (tmp_path / "raise" / "checkpoints").exists()
    result = train(load_config(config, ["data.on_error=skip"]), tmp_path / "skip")
    assert result.steps == 1


@pytest.mark.parametrize(
    "layers, message",
    [("[7]", r"'model.moe.moe_layers' \[7\] out of range: the stage-1 LLM has 2 layers, valid 0..1"),
     ("[]", "stage 2 needs at least one MoE layer")],
)
def test_cli_bad_stage2_moe_layers_is_one_config_error_line(stage1, data, tmp_path, capsys, layers, message):
    import re

    from skymoe.cli import main

    config = write_config(tmp_path / "c.yaml", data, stage=2)
    args = ["train", "--config", str(config), "--output", str(tmp_path / "out"), f"model.init_from={stage1.output_dir}"]
    assert main([*args, f"model.moe.moe_layers={layers}"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the model-loading progress bar
    assert err.startswith("skymoe train: error: 'model.moe.moe_layers'") and re.search(message, err)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("after, expected", [(0, "interrupted before the first training step; no checkpoint was written yet"),
                                             (5, "interrupted at step 5; the last checkpoint is step 4 (")])
def test_ctrl_c_prints_one_line_naming_the_checkpoint_and_exits_130(data, tmp_path, capsys, monkeypatch, after, expected):
    import skymoe.train.loop as loop
    from skymoe.cli import main

    real, calls = loop._forward, {"n": 0}

    def forward_then_ctrl_c(*args, **kwargs):
        if calls["n"] == after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_forward", forward_then_ctrl_c)
    out = tmp_path / "out"
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", data)), "--output", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"skymoe train: {expected}")
    if after:
        assert f"({out / 'checkpoints' / 'step-00000004'}): re-run with --resume to continue" in err
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]  # nothing written on interrupt
