"""Trainer building blocks: mix sampler, InfoNCE, checkpoint verification, metrics."""
from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest
import torch

from skymoe.data.schema import Granularity, Sample, Task, Turn
from skymoe.errors import DataError
from skymoe.train.config import DataSection, DatasetSpec
from skymoe.train.checkpoint import CheckpointWarning, latest_good_checkpoint, save_checkpoint, verify_checkpoint
from skymoe.train.data import MixSampler, load_mix
from skymoe.model.losses import granularity_info_nce
from skymoe.train.metrics import expert_load_stats, router_accuracy, truncate_metrics


def test_mix_sampler_draws_each_part_by_weight_and_is_fixed_by_seed_and_epoch():
    sampler = MixSampler([10, 4], [0.5, 2.5], seed=1)
    sampler.set_epoch(3)
    draws = list(sampler)
    assert len(draws) == len(sampler) == 5 + 10
    counts = Counter(index for _, _, index in draws)
    assert sum(counts[i] for i in range(10)) == 5 and max(counts[i] for i in range(10)) == 1
    assert sum(counts[i] for i in range(10, 14)) == 10 and all(counts[i] in (2, 3) for i in range(10, 14))
    assert [d[1] for d in draws] == list(range(15)) and {d[0] for d in draws} == {3}
    again = MixSampler([10, 4], [0.5, 2.5], seed=1)
    again.set_epoch(3)
    assert list(again) == draws
    again.set_epoch(4)
    assert [d[2] for d in again] != [d[2] for d in draws]


def test_task_balanced_part_shares_its_draws_equally_among_its_tasks():
    """One part of 20 VQA and 3 grounding samples, task-balanced: each task gets half of the 23 draws,
    the small one cycling through whole shuffled passes of its samples."""
    groups = [(list(range(20)), 1.0), ([20, 21, 22], 1.0)]
    sampler = MixSampler([23], [1.0], seed=0, groups=[groups])
    counts = Counter(index for _, _, index in sampler)
    assert len(sampler) == 23
    assert sum(counts[i] for i in range(20)) in (11, 12) and sum(counts[i] for i in (20, 21, 22)) in (11, 12)
    assert all(counts[i] in (3, 4) for i in (20, 21, 22))
    assert max(counts[i] for i in range(20)) == 1


def test_task_weights_share_a_balanced_parts_draws_in_proportion():
    """task_weights {vqa: 3}: of 40 draws VQA gets 30 and grounding 10; the mix entry's config carries it."""
    from skymoe.train.data import MixPart

    samples = [Sample(id=str(i), image="x.png", task=Task.VQA if i < 20 else Task.GROUNDING, granularity=Granularity.IMAGE,
                      conversation=[Turn("user", "q"), Turn("assistant", "a")]) for i in range(23)]
    groups = MixPart("mix", samples, 1.0, "task", {"vqa": 3.0}).groups()
    assert [w for _, w in groups] == [1.0, 3.0]  # grounding, vqa: task order
    sampler = MixSampler([23], [40 / 23], seed=0, groups=[groups])
    counts = Counter(index for _, _, index in sampler)
    assert sum(counts[i] for i in range(20)) == 30 and sum(counts[i] for i in (20, 21, 22)) == 10


def test_the_data_check_keeps_a_parts_task_weights(tmp_path):
    """The check that drops unusable samples rebuilds the mix: the weights must survive it (they once did not)."""
    from PIL import Image

    from skymoe.data.imagery import load_image
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.train.data import MixPart
    from skymoe.train.stages import check_samples

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    samples = [Sample(id=str(i), image=str(image), task=Task.VQA if i else Task.GROUNDING, granularity=Granularity.IMAGE,
                      conversation=[Turn("user", "q"), Turn("assistant", "a")]) for i in range(3)]
    processor = SkyMoEProcessor(build_tokenizer(["q a"], vocab_size=300), image_size=8, num_image_tokens=1)
    (part,) = check_samples([MixPart("mix", samples, 1.0, "task", {"vqa": 3.0})], processor, "raise", load_image)
    assert [w for _, w in part.groups()] == [1.0, 3.0]


@pytest.mark.parametrize("entry, message", [
    ({"task_weights": {"vqa": 2.0}}, "set balance: task"),
    ({"balance": "task", "task_weights": {"vqa": float("nan")}}, "finite number > 0"),
    ({"balance": "task", "task_weights": {"vqa": True}}, "finite number > 0"),
    ({"balance": "task", "task_weights": ["vqa"]}, "must be a mapping"),
    ({"balance": "task", "task_weights": {"vqq": 2.0}}, "no such task"),
    ({"balance": "task", "task_weights": {"vqa": 0}}, "finite number > 0"),
])
def test_bad_task_weights_are_config_errors(entry, message):
    from skymoe.errors import ConfigError
    from skymoe.train.config import parse_config

    raw = {"stage": 1, "model": {"llm": {"type": "llama"}}, "data": {"mix": [{"path": "train.jsonl", **entry}]}}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_info_nce_is_low_when_levels_separate_and_high_when_mixed():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -100])
    separated = torch.eye(3).repeat_interleave(2, dim=0)
    separated = torch.cat([separated, torch.ones(1, 3)])
    mixed = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    low = granularity_info_nce(separated, labels, temperature=0.1)
    high = granularity_info_nce(mixed, labels, temperature=0.1)
    assert low.item() < 0.01 and high.item() > 1.0
    emb = torch.randn(7, 3, requires_grad=True)
    granularity_info_nce(emb, labels, 0.1).backward()
    assert emb.grad[-1].abs().sum() == 0 and emb.grad[:-1].abs().sum() > 0  # unknown label: no gradient
    assert granularity_info_nce(emb, torch.tensor([0, 1, 2, -100, -100, -100, -100]), 0.1).item() == 0.0


class _OneProcess:
    """The part of accelerate.Accelerator that save_checkpoint uses, for a unit test without a model."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"weights" * 100)


def test_checkpoints_keep_last_n_and_a_corrupt_newest_falls_back_with_a_warning(tmp_path):
    acc = _OneProcess()
    for step in (1, 2, 3, 4):
        save_checkpoint(acc, tmp_path, step, keep_last=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004"]
    assert all(verify_checkpoint(tmp_path / n) is None for n in names)
    # corrupt the newest, delete the manifest of the one before (a write that never finished)
    (tmp_path / "step-00000004" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "step-00000003" / "manifest.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = latest_good_checkpoint(tmp_path)
    assert good == tmp_path / "step-00000002"
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert any("step-00000004" in m and "checksum" in m for m in messages)
    assert any("step-00000003" in m and "manifest" in m for m in messages)


def test_router_accuracy_ignores_unknown_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert router_accuracy(logits, torch.tensor([0, 0, -100])) == 0.5
    assert router_accuracy(logits, torch.tensor([-100, -100, -100])) is None


def test_expert_load_entropy_is_max_when_balanced():
    stats = expert_load_stats(torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))
    assert stats["expert_entropy/layer0"] == pytest.approx(stats["expert_entropy/max"])
    assert stats["expert_entropy/layer1"] == pytest.approx(0.0, abs=1e-6)
    assert stats["expert_load/layer1/expert0"] == 1.0


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("stage", [1, 2])
def test_param_groups_train_the_whole_router_and_every_gate(stage):
    from _model_helpers import tiny_model

    from skymoe.train.config import load_config
    from skymoe.model import SkyMoEForConditionalGeneration
    from skymoe.train.stages import param_groups

    model = tiny_model(moe={"num_experts": 0, "dense_lora": True})
    if stage == 2:
        model = SkyMoEForConditionalGeneration.upcycle(model, num_experts=2)
    experts = ["model.moe.num_experts=2"] if stage == 2 else []
    cfg = load_config(None, cfg_overrides(stage, experts))
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    router = {id(p) for p in groups["router"]["params"]}
    routing_params = [p for n, p in model.named_parameters() if n.startswith("router.") or ".gate." in n]
    assert routing_params and all(p.requires_grad and id(p) in router for p in routing_params)
    assert groups["router"]["lr"] == 0.5
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("vision_tower."))
    assert set(groups) == ({"projector", "router", "adapter"} if stage == 1 else {"projector", "router", "experts"})
    if stage == 2:  # optim.train_lm: the LLM's own weights train too (a one-stage run), the vision tower still not
        groups = {g["name"]: g for g in param_groups(model, load_config(None, [*cfg_overrides(stage, experts), "optim.train_lm=true"]))}
        lm = [p for n, p in model.named_parameters() if n.startswith("language_model.") and ".lora_" not in n and ".gate." not in n]
        assert set(groups) == {"projector", "router", "experts", "lm"} and lm and all(p.requires_grad for p in lm)
        assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("vision_tower."))


def cfg_overrides(stage: int, experts: list[str]) -> list[str]:
    return [f"stage={stage}", "model.moe.dense_lora=true", "model.init_from=unused", "optim.router_lr=0.5", *experts]


def write_bad_mix_file(path) -> None:
    """One good record, then one bad record of each kind the trainer must skip under ``data.on_error: skip``."""

    def record(i, **changes):
        r = {"id": f"r{i}", "image": "scene.png", "task": "grounding", "granularity": "object", "image_size": [100, 100],
             "conversation": [{"role": "user", "text": "where?"}, {"role": "assistant", "text": "here"}]}  # fmt: skip
        return json.dumps({**r, **changes})

    lines = [
        record(1),
        "{not json",
        json.dumps({"id": "r3", "task": "vqa", "granularity": "image", "conversation": []}),  # no image
        record(4, task="dance"),
        record(5, boxes=[{"xyxy": [10, 10, 150, 50]}]),  # outside image_size
        record(6, image_size="big"),
        record(7, meta="m"),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_mix_entry_raises_on_the_first_bad_record_by_default(tmp_path):
    write_bad_mix_file(tmp_path / "mix.jsonl")
    with pytest.raises(DataError, match="malformed JSON") as err:
        load_mix(DataSection(mix=[DatasetSpec(path=str(tmp_path / "mix.jsonl"))]))
    assert err.value.file == str(tmp_path / "mix.jsonl") and err.value.record == "line 2"


def test_jsonl_mix_entry_honours_on_error_skip(tmp_path, caplog):
    path = str(tmp_path / "mix.jsonl")
    write_bad_mix_file(tmp_path / "mix.jsonl")
    with caplog.at_level("WARNING", logger="skymoe.data"):
        (part,) = load_mix(DataSection(mix=[DatasetSpec(path=path)], on_error="skip"))
    assert [s.id for s in part.samples] == ["r1"]
    skipped = part.samples.skipped
    assert set(skipped) == {f"line {i}" for i in range(2, 8)}
    assert "malformed JSON" in skipped["line 2"] and "'image'" in skipped["line 3"] and "'task'" in skipped["line 4"]
    assert "outside the image" in skipped["line 5"] and "'image_size'" in skipped["line 6"] and "'meta'" in skipped["line 7"]
    assert f"{path}: skipped 6 bad record(s), kept 1" in caplog.text


def test_a_run_saved_before_a_mix_key_existed_resumes_and_a_changed_key_is_refused(tmp_path):
    import yaml

    from skymoe.train.config import parse_config
    from skymoe.train.errors import TrainingError
    from skymoe.train.resume import check_same_run

    raw = {"stage": 1, "model": {"llm": {"type": "llama"}}, "data": {"mix": [{"path": "train.jsonl", "balance": "task"}]}}
    saved = parse_config(raw).to_dict()
    del saved["data"]["mix"][0]["task_weights"]  # written before task_weights existed
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(saved))
    check_same_run(parse_config(raw), tmp_path / "train_config.yaml")
    raw["data"]["mix"][0]["task_weights"] = {"vqa": 2.0}
    with pytest.raises(TrainingError, match="data.mix"):
        check_same_run(parse_config(raw), tmp_path / "train_config.yaml")
