"""Typed training config: YAML + dotted overrides, every key and type checked; ``model:`` is the model's schema."""
from __future__ import annotations

import pytest

from skymoe.errors import ConfigError
from skymoe.train.config import TrainConfig, load_config, save_config

YAML = """
stage: 1
seed: 3
model: {llm: {hidden_size: 48, num_layers: 1}}
data:
  mix:
    - {name: rsvqa_lr, weight: 2}
    - {path: extra.jsonl, weight: 0.5}
optim: {lr: 1e-4, warmup_steps: 5}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    return path


def test_yaml_values_land_in_typed_fields(config_file):
    cfg = load_config(config_file)
    assert isinstance(cfg, TrainConfig)
    assert cfg.seed == 3 and cfg.model.llm.hidden_size == 48 and cfg.model.llm.num_layers == 1
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-4 as text
    assert [(d.name, d.path, d.weight) for d in cfg.data.mix] == [("rsvqa_lr", None, 2.0), (None, "extra.jsonl", 0.5)]
    assert cfg.batch_size == TrainConfig().batch_size  # untouched keys keep defaults


def test_dotted_overrides_patch_nested_fields(config_file):
    overrides = ["optim.lr=3e-4", "model.moe.top_k=1", "cda.enabled=true", "max_steps=7", "model.moe.moe_layers=[0, 1]"]
    cfg = load_config(config_file, overrides)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.model.moe.top_k == 1 and cfg.cda.enabled is True
    assert cfg.max_steps == 7 and cfg.model.moe.moe_layers == [0, 1]


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("optim.lrr=1", ["c.yaml: ", "optim.lrr", "under 'optim'; did you mean 'lr'?", "projector_lr"]),
        ("batchsize=2", ["'batchsize'", "top level", "did you mean 'batch_size'?"]),
        ("model.moe.topk=1", ["'model.moe.topk'", "under 'model.moe'", "did you mean 'top_k'?"]),
        ("model.loss.load_balanse=1", ["'model.loss.load_balanse'", "did you mean 'load_balance'?"]),
        ("model.top_k=1", ["'model.top_k' has moved: use 'model.moe.top_k'"]),
        ("model.extra={}", ["'model.extra' has moved", "model.router.jitter_noise"]),
        ("model.adapter=lora", ["model.moe.dense_lora"]),
        ("cda.temperature=0.2", ["'cda.temperature' has moved: use 'model.loss.cda_temperature'"]),
        ("model.vision=efficientnet-lite0", ["'model.vision' must be a mapping", "pretrained"]),
        ("model.moe.routing=tokens", ["'model.moe.routing'", "'token', 'sequence'"]),
        ("model.projector={type: qformer, num_queries: 0}", ["'model.projector.num_queries' must be >= 1 for type qformer"]),
        ("model.projector={type: qformer, cross_attention_every: 0}", ["'model.projector.cross_attention_every' must be >= 1"]),
        ("model.projector={type: qformer, hidden_size: 30}", ["'model.projector.hidden_size' = 30", "num_heads=4"]),
        ("model.projector.type=qformers", ["'model.projector.type'", "'qformer'"]),
        ("model.moe.num_experts=2", ["stage 1 builds the dense model"]),
        ("batch_size=two", ["'batch_size'", "int", "two"]),
        ("cda.enabled=maybe", ["'cda.enabled'", "bool"]),
        ("model.moe.moe_layers=[a]", ["model.moe.moe_layers[0]", "int"]),
        ("precision=fp16", ["'precision'", "bf16"]),
        ("stage=2", ["model.init_from"]),
        ("lr", ["key=value"]),
    ],
)
def test_bad_keys_and_values_name_the_key(config_file, override, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(config_file, [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_stage2_without_experts_says_so(config_file):
    with pytest.raises(ConfigError, match=r"'model.moe.num_experts' must be >= 1 for stage 2"):
        load_config(None, ["stage=2", "model.init_from=stage1_out", "model.moe.num_experts=0"])


def test_top_k_is_checked_once_by_the_model_schema():
    with pytest.raises(ConfigError, match=r"'model.moe.top_k' = 3 must be in 1..moe.num_experts=2"):
        load_config(None, ["stage=2", "model.init_from=s1", "model.moe.num_experts=2", "model.moe.top_k=3"])
    with pytest.raises(ValueError, match=r"'moe.top_k' = 3 must be in 1..moe.num_experts=2"):
        from skymoe.model.build import tiny_config

        tiny_config(moe={"num_experts": 2, "top_k": 3})


def test_stage2_keeps_the_stage1_architecture(config_file):
    with pytest.raises(ConfigError, match=r"model.llm: stage 2 keeps the architecture"):
        load_config(config_file, ["stage=2", "model.init_from=s1", "model.moe.num_experts=2"])


def test_loss_is_an_alias_of_model_loss():
    cfg = load_config(None, ["loss.load_balance=0.037", "model.loss.router_z=0.5"])
    assert (cfg.model.loss.load_balance, cfg.model.loss.router_z) == (0.037, 0.5)
    assert "loss" not in cfg.to_dict() and cfg.to_dict()["model"]["loss"]["load_balance"] == 0.037
    with pytest.raises(ConfigError, match="'loss.cda' and 'model.loss.cda' disagree"):
        load_config(None, ["loss.cda=0.1", "model.loss.cda=0.2"])


def test_shipped_configs_resolve_to_the_settings_they_always_had():
    """The demo's and the tiny configs' models are the ones the flat layout made (its defaults included)."""
    from pathlib import Path

    root = Path(__file__).parent.parent
    demo1 = load_config(root / "src/skymoe/demo/stage1.yaml").model
    assert (demo1.router.hidden_size, demo1.num_route_tokens, demo1.moe.dense_lora, demo1.moe.lora_rank) == (64, 2, False, 8)
    assert (demo1.moe.lora_alpha, demo1.moe.lora_targets, demo1.router.jitter_noise, demo1.vision.feature_layer) == (16.0, ["mlp"], 0.0, -1)
    demo2 = load_config(root / "src/skymoe/demo/stage2.yaml", ["model.init_from=s1"]).model
    assert (demo2.moe.num_experts, demo2.moe.top_k, demo2.moe.routing, demo2.moe.lora_rank) == (4, 2, "sequence", 8)
    assert (demo2.loss.load_balance, demo2.loss.router_z, demo2.loss.router_ce, demo2.loss.cda) == (0.01, 0.001, 0.1, 0.05)
    assert demo2.loss.cda_temperature == 0.3
    tiny1 = load_config(root / "configs/stage1_tiny.yaml").model
    assert (tiny1.router.hidden_size, tiny1.num_route_tokens, tiny1.moe.dense_lora, tiny1.image_size) == (64, 2, False, 64)


def test_mix_entry_needs_a_name_or_a_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {mix: [{weight: 1}]}")
    with pytest.raises(ConfigError, match=r"data.mix\[0\]"):
        load_config(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identical(config_file, tmp_path):
    cfg = load_config(config_file, ["cda.enabled=true"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_every_shipped_training_config_loads():
    from pathlib import Path

    configs = [p for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml") if "accelerate" not in p.parts]
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config(path)
        assert cfg.data.mix, path


def test_every_model_knob_is_reachable_from_yaml():
    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.model.build import dense_config

    cfg = load_config(None, ["model.image_size=32", "model.projector={type: resampler, num_queries: 8}",
                             "model.vision.feature_layer=-2", "model.router.jitter_noise=0.1", "model.moe.lora_alpha=4",
                             "model.location_sigma=1.5", "model.loss.router_z=0.5"])
    config = dense_config(cfg.model, build_tokenizer(["a small test text"], vocab_size=300))
    assert config.projector["type"] == "resampler" and config.projector["num_queries"] == 8
    assert config.vision_feature_layer == -2 and config.num_image_tokens == 8 and config.location_sigma == 1.5
    assert config.router["jitter_noise"] == 0.1 and config.moe["lora_alpha"] == 4 and config.loss["router_z"] == 0.5


def test_model_section_takes_the_vision_part_of_a_dual_encoder_checkpoint(tmp_path):
    from transformers import CLIPConfig

    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.model.build import dense_config

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPConfig(vision_config=vision, text_config=dict(hidden_size=32, intermediate_size=64), projection_dim=16).save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.vision.pretrained={tmp_path}", "model.image_size=32"])
    config = dense_config(cfg.model, build_tokenizer(["a small test text"], vocab_size=300))
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_config.hidden_size == 32
    assert config.num_image_tokens == 16 and config.vision_pretrained == str(tmp_path)
