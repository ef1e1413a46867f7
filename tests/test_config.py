"""Typed training config: YAML + dotted overrides, every key and type checked."""
from __future__ import annotations

import pytest

from skymoe.config import TrainConfig, load_config, save_config
from skymoe.errors import ConfigError

YAML = """
stage: 1
seed: 3
model: {hidden_size: 48, num_layers: 1}
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
    assert cfg.seed == 3 and cfg.model.hidden_size == 48 and cfg.model.num_layers == 1
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-4 as text
    assert [(d.name, d.path, d.weight) for d in cfg.data.mix] == [("rsvqa_lr", None, 2.0), (None, "extra.jsonl", 0.5)]
    assert cfg.batch_size == TrainConfig().batch_size  # untouched keys keep defaults


def test_dotted_overrides_patch_nested_fields(config_file):
    cfg = load_config(config_file, ["optim.lr=3e-4", "model.top_k=1", "cda.enabled=true", "max_steps=7", "model.moe_layers=[0, 1]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.model.top_k == 1 and cfg.cda.enabled is True
    assert cfg.max_steps == 7 and cfg.model.moe_layers == [0, 1]


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("optim.lrr=1", ["optim.lrr", "allowed keys under 'optim'", "projector_lr"]),
        ("batchsize=2", ["'batchsize'", "top level", "batch_size"]),
        ("batch_size=two", ["'batch_size'", "int", "two"]),
        ("cda.enabled=maybe", ["'cda.enabled'", "bool"]),
        ("model.moe_layers=[a]", ["model.moe_layers[0]", "int"]),
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
    with pytest.raises(ConfigError, match=r"'model.num_experts' must be >= 1 for stage 2"):
        load_config(config_file, ["stage=2", "model.init_from=stage1_out", "model.num_experts=0"])


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


def test_extra_refines_model_settings_without_replacing_them(tmp_path):
    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.train.stages import model_config

    cfg = load_config(None, ["model.projector=resampler", "model.extra={projector: {num_queries: 8}, vision_feature_layer: -2}"])
    config = model_config(cfg, build_tokenizer(["a small test text"], vocab_size=300))
    assert config.projector["type"] == "resampler" and config.projector["num_queries"] == 8
    assert config.vision_feature_layer == -2 and config.num_image_tokens == 8


def test_model_section_takes_the_vision_part_of_a_dual_encoder_checkpoint(tmp_path):
    from transformers import CLIPConfig

    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.train.stages import model_config

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPConfig(vision_config=vision, text_config=dict(hidden_size=32, intermediate_size=64), projection_dim=16).save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.vision={tmp_path}", "model.image_size=32"])
    config = model_config(cfg, build_tokenizer(["a small test text"], vocab_size=300))
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_config.hidden_size == 32
    assert config.num_image_tokens == 16 and config.vision_pretrained == str(tmp_path)
