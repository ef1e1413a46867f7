"""Mixed precision: ``precision: auto`` picks bf16 where the device multiplies it in hardware; under CPU autocast
the attention reads float32 (skymoe.model.attention) and a frozen tower reads as the feature cache does."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_helpers import make_batch, tiny_model
from PIL import Image
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from skymoe.data.feature_cache import image_request
from skymoe.data.imagery import load_image
from skymoe.data.processor import SkyMoEProcessor
from skymoe.data.tokenizer import build_tokenizer
from skymoe.model.attention import NAME, sdpa_float32_under_cpu_autocast
from skymoe.model.build import build_model, tiny_config
from skymoe.model.feature_source import feature_source
from skymoe.model.modeling import SkyMoEForConditionalGeneration
from skymoe.model.precision import own_precision
from skymoe.train.accelerator import resolve_precision
from skymoe.train.config import parse_config

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_built_or_loaded_models_llm_attends_with_skymoe_sdpa_unless_asked_otherwise(tmp_path):
    model = tiny_model()
    assert model.language_model.config._attn_implementation == NAME
    model.save_pretrained(tmp_path)
    assert SkyMoEForConditionalGeneration.from_pretrained(tmp_path).language_model.config._attn_implementation == NAME
    eager = SkyMoEForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.language_model.config._attn_implementation == "eager"


def test_attention_is_sdpa_outside_cpu_autocast_and_reads_float32_inside():
    attention = tiny_model().language_model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = attention.config.num_attention_heads, attention.config.num_key_value_heads, attention.head_dim
    query = torch.randn(2, heads, 7, dim, generator=g).bfloat16()
    key, value = (torch.randn(2, kv_heads, 7, dim, generator=g).bfloat16() for _ in range(2))
    plain = sdpa_float32_under_cpu_autocast(attention, query, key, value, None, scaling=dim**-0.5)[0]
    assert plain.dtype == torch.bfloat16
    assert torch.equal(plain, sdpa_attention_forward(attention, query, key, value, None, scaling=dim**-0.5)[0])
    with BF16:
        mixed = sdpa_float32_under_cpu_autocast(attention, query, key, value, None, scaling=dim**-0.5)[0]
        in_bf16 = sdpa_attention_forward(attention, query, key, value, None, scaling=dim**-0.5)[0]
    reference = sdpa_attention_forward(attention, query.float(), key.float(), value.float(), None, scaling=dim**-0.5)[0]
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)
    assert in_bf16.dtype == torch.bfloat16  # what autocast alone would have run


def test_under_bf16_autocast_pixels_and_cached_features_give_the_same_logits(tmp_path):
    """The frozen tower reads with autocast off, as the feature cache encodes: a bf16 step sees the same features
    whether its batch came as pixels (cache off) or from the cache."""
    model = tiny_model().eval()
    processor = SkyMoEProcessor(build_tokenizer(["a small test vocabulary"], vocab_size=128), image_size=32,
                                num_image_tokens=model.config.num_image_tokens)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    source = feature_source(model, processor, root=tmp_path / "cache")
    cached = torch.stack([e.tensor for e in source.get([image_request(p, load_image) for p in paths])])
    batch = make_batch(model.config)
    pixels = processor.preprocess_images([load_image(p) for p in paths])
    with torch.no_grad(), BF16:
        assert torch.equal(model.read_tower(pixels), cached)
        from_pixels = model(**batch | {"pixel_values": pixels}).logits
        from_cache = model(**{k: v for k, v in batch.items() if k != "pixel_values"}, vision_features=cached).logits
    assert torch.equal(from_pixels, from_cache)


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_on_a_cpu_that_multiplies_it_in_hardware(monkeypatch, amx, expected):
    import accelerate

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # a CPU launch, on a GPU host too

    def no_state(*args, **kwargs):  # accelerate's state is a singleton: one made here would drop make_accelerator's settings
        raise AssertionError("resolve_precision made accelerate's PartialState")

    monkeypatch.setattr(accelerate.PartialState, "__init__", no_state)
    assert resolve_precision("auto") == expected
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_auto_is_a_precision_and_fp16_is_not():
    assert parse_config({"precision": "auto"}).validate().precision == "auto"
    with pytest.raises(ValueError, match="'precision'.*'auto'"):
        parse_config({"precision": "fp16"}).validate()


def test_under_bf16_autocast_the_router_gates_projector_and_heads_compute_as_in_fp32_and_the_decoder_in_bf16():
    """Selective precision (skymoe.model.precision): what the router, the expert gates, the projector and the grid
    heads give is bit-identical with and without autocast; the decoder layers' products are bfloat16."""
    tokenizer = build_tokenizer(["where is the field [1, 2, 3, 4]"], vocab_size=300)
    torch.manual_seed(0)
    dense = build_model(tiny_config(vocab_size=len(tokenizer), moe={"dense_lora": False},
                                    box_head={"enabled": True, "hidden_size": 32, "evidence": True}), tokenizer=tokenizer)
    model = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, top_k=2, expert_type="lora", perturb=0.01)
    batch = make_batch(model.config, batch_size=3, answer_len=4)
    start = model.config.location_token_start
    batch["input_ids"][:, -4:] = torch.tensor([start + 10, start + 101 + 20, start + 30, start + 101 + 40])
    batch["labels"][:, -4:] = batch["input_ids"][:, -4:]  # each answer is a box: the box head trains on every row
    features = model.read_tower(batch.pop("pixel_values"))
    seen = {}
    for name, module in (("decoder", model.language_model.model.layers[0].mlp), ("box head", model.box_head.mlp[1]),
                         ("evidence head", model.box_head.evidence.mlp[1])):
        module.register_forward_hook(lambda m, i, out, name=name: seen.update({name: out.dtype}))
    fp32 = model(**batch, vision_features=features)
    with BF16:
        mixed = model(**batch, vision_features=features)
        tokens = model.projector(features)
    assert seen == {"decoder": torch.bfloat16, "box head": torch.float32, "evidence head": torch.float32}
    assert tokens.dtype == torch.float32 and torch.equal(tokens, model.projector(features))
    for name in ("task_logits", "granularity_logits", "routing_embedding"):
        assert torch.equal(getattr(mixed, name), getattr(fp32, name)), name
    assert all(m.logits.dtype == torch.float32 and torch.equal(m.logits, f.logits)
               for m, f in zip(mixed.gate_records, fp32.gate_records))
    assert float(fp32.loss_terms["box"]) > 0 and torch.isfinite(mixed.loss_terms["box"])


def test_own_precision_turns_autocast_off_for_float32_parameters_only():
    """Parameters already in bf16 (FSDP's mixed-precision policy) keep autocast, which keeps norms in float32."""
    linear, half = torch.nn.Linear(4, 4), torch.ones(2, 4, dtype=torch.bfloat16)
    with BF16:
        with own_precision(linear) as cast:
            assert not torch.is_autocast_enabled("cpu") and cast(half).dtype == torch.float32
        with own_precision(linear.to(torch.bfloat16)) as cast:
            assert torch.is_autocast_enabled("cpu") and cast(half) is half
