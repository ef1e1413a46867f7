"""Save/load through the Auto classes, generation with KV cache, vision towers, local checkpoints, summary."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from _model_helpers import make_batch, randomize_adapters, tiny_model
from skymoe.model import SkyMoEForConditionalGeneration
from skymoe.model.build import build_model, pretrained_config, tiny_config
from skymoe.model.configuration import ProjectorSettings
from skymoe.model.projector import build_projector


def generation_inputs(config, batch_size=2, seed=0):
    batch = make_batch(config, batch_size=batch_size, seed=seed)
    batch["attention_mask"][0, :3] = 0  # left padding on the first prompt
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "instruction_mask")}


@pytest.mark.parametrize(
    "text_model_type,moe,projector",
    [
        ("llama", {"num_experts": 4}, None),
        ("gpt2", {"num_experts": 4, "expert_type": "ffn"}, None),
        ("qwen2", {"num_experts": 0}, None),
        ("llama", {"num_experts": 4}, {"type": "qformer", "num_queries": 8, "num_layers": 3}),
    ],
)
def test_save_and_reload_through_the_auto_class_is_bit_exact(tmp_path, text_model_type, moe, projector):
    from transformers import AutoConfig, AutoModelForImageTextToText

    model = tiny_model(text_model_type=text_model_type, moe=moe, projector=projector).eval()
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "skymoe"
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "SkyMoEConfig"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is SkyMoEForConditionalGeneration
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    batch = make_batch(model.config)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.config.moe == model.config.moe and loaded.config.projector == model.config.projector


@pytest.mark.parametrize("moe", [{"num_experts": 4}, {"num_experts": 4, "routing": "sequence", "expert_type": "ffn"}, {}])
@pytest.mark.parametrize("text_model_type", ["llama", "gpt2"])
def test_cached_and_uncached_greedy_generation_agree(text_model_type, moe):
    model = tiny_model(text_model_type=text_model_type, moe=moe).eval()
    randomize_adapters(model, std=0.2)
    inputs = generation_inputs(model.config)
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (2, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(cached, uncached)


def test_batch_one_cpu_decode_steps_choose_in_python_and_match_uncached_generation(monkeypatch):
    """Batch-1 cached CPU decode takes the Python-number gate and expert path; the tokens are those of full forwards."""
    from skymoe.model.router import ExpertGate

    model = tiny_model(moe={"num_experts": 8, "top_k": 2}).eval()
    randomize_adapters(model, std=0.2)
    calls = []
    choose = ExpertGate.choose_for_one_token
    monkeypatch.setattr(ExpertGate, "choose_for_one_token", lambda self, *a: calls.append(1) or choose(self, *a))
    inputs = generation_inputs(model.config, batch_size=1)
    cached = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    assert len(calls) == 7 * len(model.moe_layers())  # every decode step after the prefill, in every MoE layer
    uncached = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert len(calls) == 7 * len(model.moe_layers())  # full forwards use the tensor gate
    assert torch.equal(cached, uncached)
    hooked = []  # a hook on a gate must keep seeing every decision: that layer then uses forward
    model.moe_layers()[0].gate.register_forward_hook(lambda *_: hooked.append(1))
    assert torch.equal(model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False), cached)
    assert len(hooked) == 8 and len(calls) == 7 * (2 * len(model.moe_layers()) - 1)


def test_routing_is_computed_once_per_sequence_in_cached_generation():
    model = tiny_model(moe={"num_experts": 4, "routing": "sequence"}).eval()
    calls = []
    model.router.register_forward_hook(lambda *_: calls.append(1))
    decisions = []
    gate = model.moe_layers()[0].gate
    gate.register_forward_hook(lambda module, args, out: decisions.append(out[0].view(2, -1, 2)[:, 0]))
    model.generate(**generation_inputs(model.config), max_new_tokens=5, do_sample=False)
    assert len(calls) == 1
    assert len(decisions) == 5 and all(torch.equal(d, decisions[0]) for d in decisions)


def test_generation_end_to_end_with_tokenizer_and_processor(tmp_path):
    from PIL import Image

    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.schema import Sample, Turn
    from skymoe.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["is there a road?", "yes", "no", "how many buildings are there? 12"] * 3, vocab_size=200)
    config = tiny_config(vocab_size=64, moe={"num_experts": 2, "top_k": 1})
    torch.manual_seed(0)
    model = build_model(config, tokenizer=tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    processor = SkyMoEProcessor.from_model_config(model.config, tokenizer)
    images = [Image.new("RGB", (40, 40), (20, 90, 30)), Image.new("RGB", (30, 50), (200, 10, 10))]
    samples = [
        Sample("a", "x.png", "vqa", "image", [Turn("user", "is there a road?"), Turn("assistant", "yes")]),
        Sample("b", "y.png", "counting", "image", [Turn("user", "how many buildings are there?"), Turn("assistant", "12")]),
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = processor.collate(samples, images)
    losses = []
    for _ in range(8):
        out = model(**batch)
        losses.append(out.loss_terms["lm"].item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] / 2
    model.eval()
    prompts = [s.question for s in samples]
    inputs = processor.prepare_generation(images, prompts, tasks=["vqa", "counting"])
    assert inputs["attention_mask"][0].sum() < inputs["attention_mask"][1].sum()  # prompt 0 is left-padded
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    for i in range(2):  # left padding changes nothing: each prompt alone gives the same continuation
        alone = processor.prepare_generation(images[i : i + 1], prompts[i : i + 1])
        single = model.generate(**alone, max_new_tokens=4, do_sample=False)[:, alone["input_ids"].shape[1] :]
        assert torch.equal(single[0], new_tokens[i])
    answers = processor.decode(new_tokens)
    assert answers == [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new_tokens]

    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    reloaded = SkyMoEForConditionalGeneration.from_pretrained(tmp_path).eval()
    again = reloaded.generate(**SkyMoEProcessor.from_pretrained(tmp_path).prepare_generation(images, prompts), max_new_tokens=4, do_sample=False)
    assert torch.equal(out, again)


@pytest.mark.parametrize("vision_model_type", ["vit", "clip_vision_model", "siglip_vision_model", "dinov2"])
def test_hf_vision_towers_interpolate_to_larger_inputs(vision_model_type):
    native = tiny_model(vision_model_type=vision_model_type, image_size=32)
    larger = tiny_config(vision_model_type=vision_model_type, image_size=48)
    larger.vision_config = native.config.vision_config  # same tower, native size 32
    model = build_model(larger)
    assert model.config.num_image_tokens == 36  # (48 / 8)^2 patches
    out = model(**make_batch(model.config))
    assert torch.isfinite(out.loss)
    features = model.vision_tower(torch.randn(1, 3, 48, 48))
    assert features.shape == (1, 36, 32)


def test_feature_layer_selects_a_hidden_state():
    model = tiny_model(vision_model_type="vit", vision_feature_layer=0)
    pixels = torch.randn(1, 3, 32, 32)
    embeddings = model.vision_tower.model.embeddings(pixels, interpolate_pos_encoding=True)
    assert torch.equal(model.vision_tower(pixels), embeddings[:, 1:])


def test_instruction_aware_resampler_depends_on_the_instruction():
    model = tiny_model(projector={"type": "resampler", "num_queries": 3, "instruction_aware": True}).eval()
    assert model.config.num_image_tokens == 3
    a = make_batch(model.config, seed=0)
    b = dict(a, input_ids=a["input_ids"].clone())
    b["input_ids"][:, -5:-3] = 9  # change instruction text only
    embeds_a = model.get_input_embeddings()(a["input_ids"])
    embeds_b = model.get_input_embeddings()(b["input_ids"])
    with torch.no_grad():
        tokens_a = model.get_image_features(a["pixel_values"], embeds_a, a["instruction_mask"])
        tokens_b = model.get_image_features(a["pixel_values"], embeds_b, a["instruction_mask"])
    assert tokens_a.shape == (2, 3, 64) and not torch.allclose(tokens_a, tokens_b)


def tiny_qformer(**settings):
    torch.manual_seed(0)
    settings = ProjectorSettings(**{"type": "qformer", "num_queries": 4, "num_layers": 3, "num_heads": 2, **settings})
    return build_projector(settings, vision_size=12, text_size=16)


def qformer_inputs(seed=0):
    """Image features, two different instructions (LLM embeddings) and a mask padding the second prompt."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 9, 12, generator=g)
    first, second = torch.randn(2, 2, 7, 16, generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return features, first, second, mask


@pytest.mark.parametrize("hidden_size", [None, 8])  # 8: blocks narrower than the LLM, the instruction projected
def test_qformer_output_depends_on_the_instruction_and_not_on_a_masked_out_one(hidden_size):
    projector = tiny_qformer(hidden_size=hidden_size).eval()
    features, first, second, mask = qformer_inputs()
    with torch.no_grad():
        tokens = projector(features, first, mask)
        changed = projector(features, second, mask)
        assert tokens.shape == (2, 4, 16)
        assert ((tokens - changed).abs().amax(dim=(1, 2)) > 1e-3).all()  # each prompt's tokens follow its instruction
        padding_changed = first.clone()
        padding_changed[1, 5:] = second[1, 5:]
        assert torch.equal(projector(features, padding_changed, mask), tokens)
        unmasked = torch.zeros_like(mask)
        assert torch.equal(projector(features, first, unmasked), projector(features, second, unmasked))
        assert not torch.allclose(projector(features, first, unmasked), tokens)


def test_qformer_cross_attends_in_every_kth_block_and_carries_the_instruction_to_the_last():
    qformer = tiny_qformer(num_layers=5)
    assert [block.cross_attn is not None for block in qformer.blocks] == [True, False, True, False, True]
    assert sum(isinstance(m, nn.MultiheadAttention) for m in qformer.modules()) == 5 + 3
    # the last block's instruction tokens feed nothing, so it has no instruction FFN
    assert [block.context_ffn is not None for block in qformer.blocks] == [True, True, True, True, False]
    assert [block.cross_attn is not None for block in tiny_qformer(num_layers=5, cross_attention_every=3).blocks] == [
        True, False, False, True, False]
    resampler = build_projector(ProjectorSettings(type="resampler", num_layers=3, num_heads=2), 12, 16)
    assert all(b.cross_attn is not None and b.context_ffn is None for b in resampler.blocks)


def test_a_qformer_without_queries_is_a_config_error():
    with pytest.raises(ValueError, match=r"'projector.num_queries' must be >= 1 for type qformer, got 0"):
        tiny_config(projector={"type": "qformer", "num_queries": 0})


def test_every_qformer_parameter_gets_a_gradient():
    """A parameter that feeds nothing fails DistributedDataParallel."""
    projector = tiny_qformer(hidden_size=8).train()
    features, first, _, mask = qformer_inputs()
    projector(features, first, mask).square().mean().backward()
    assert [n for n, p in projector.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []


def test_models_from_local_checkpoint_directories(tmp_path):
    from transformers import AutoModelForCausalLM, CLIPConfig, CLIPModel, LlamaConfig

    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            projection_dim=16,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    llama = AutoModelForCausalLM.from_config(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    )
    llama.save_pretrained(tmp_path / "llama")
    config = pretrained_config(tmp_path / "clip", tmp_path / "llama", image_size=48, moe={"num_experts": 2})
    model = build_model(config)
    assert config.num_image_tokens == 36
    tower = model.vision_tower.model.state_dict()
    assert torch.equal(tower["encoder.layers.0.mlp.fc1.weight"], clip.vision_model.encoder.layers[0].mlp.fc1.weight)
    assert torch.equal(tower["embeddings.patch_embedding.weight"], clip.vision_model.embeddings.patch_embedding.weight)
    lm_layer = model.language_model.model.layers[1]
    assert torch.equal(lm_layer.mlp.up_proj.base.weight, llama.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(lm_layer.self_attn.q_proj.weight, llama.model.layers[1].self_attn.q_proj.weight)
    assert torch.isfinite(model(**make_batch(model.config)).loss)


def test_pretrained_lm_keeps_its_vocabulary_rows_when_special_tokens_are_added(tmp_path):
    """A real checkpoint's vocabulary grows by <image>/<route> (+ pad ...): its own rows load unchanged."""
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast, LlamaConfig

    from skymoe.data.tokenizer import add_skymoe_tokens
    from skymoe.model.build import load_language_model

    tokenizer = add_skymoe_tokens(GPT2TokenizerFast(vocab_file=None, merges_file=None, tokenizer_object=_tiny_bpe()))
    llama = AutoModelForCausalLM.from_config(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=20)
    )
    llama.save_pretrained(tmp_path / "llama")
    model = tiny_model(vocab_size=len(tokenizer))
    assert len(tokenizer) > 20
    assert load_language_model(model.language_model, str(tmp_path / "llama")) == 20
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[:20], llama.get_input_embeddings().weight)


def _tiny_bpe():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.BPE(vocab={f"t{i}": i for i in range(20)}, merges=[]))


def test_efficientnet_tower_shapes_and_token_count():
    model = tiny_model(vision_model_type="skymoe_efficientnet_lite", image_size=96)
    assert model.config.num_image_tokens == 9  # 96 / 32 = 3x3 feature map
    assert model.vision_tower(torch.randn(1, 3, 96, 96)).shape == (1, 9, 1280)
    head = tiny_model(vision_model_type="skymoe_efficientnet_lite", image_size=64, vision_feature_layer=-2)
    assert head.vision_tower(torch.randn(1, 3, 64, 64)).shape == (1, 4, 320)


def test_summary_counts_parameters_and_active_experts(tmp_path, capsys):
    import argparse

    from skymoe.cli import model as model_cli
    from skymoe.model.summary import summarize

    model = tiny_model(moe={"num_experts": 4, "top_k": 2})
    model.save_pretrained(tmp_path)
    summary = summarize(tmp_path)
    groups = summary["groups"]
    assert summary["total"] == sum(p.numel() for p in model.parameters())
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert groups["experts"]["active_per_token"] * 2 == groups["experts"]["total"]  # top-2 of 4
    assert groups["vision"]["trainable"] == 0 and summary["vision_flops_per_image"] > 0
    assert summarize(model) == summary  # a loaded model (real weights) gives the same summary as its folder
    tied = summarize(tiny_config(text_model_type="gemma3_text", moe={"num_experts": 0}))  # Gemma ties its output head
    assert tied["groups"]["adapter"]["active_per_token"] == tied["groups"]["adapter"]["total"]  # the head is counted in lm only
    assert tied["active_per_token"] <= tied["total"]
    dense = summarize(tiny_config(moe={"num_experts": 0}))
    assert dense["groups"]["experts"]["total"] == 0
    # an instruction-aware projector reads an instruction as well: its FLOPs are counted with one
    qformer = summarize(tiny_config(projector={"type": "qformer", "num_queries": 8}, moe={"num_experts": 0}))
    assert qformer["vision_flops_per_image"] > dense["vision_flops_per_image"] > 0
    assert dense["groups"]["adapter"]["active_per_token"] == dense["groups"]["adapter"]["total"] > 0

    parser = argparse.ArgumentParser()
    model_cli.register(parser.add_subparsers())
    args = parser.parse_args(["model", "summary", str(tmp_path), "--json"])
    capsys.readouterr()  # what came before (save_pretrained imports deepspeed, where installed: it prints a warning)
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["total"] == summary["total"]
    from skymoe.cli import main

    assert main(["model", "summary", str(tmp_path / "nope")]) == 2
    assert "expected a SkyMoE model directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "sky', encoding="utf-8")  # a truncated copy
    assert main(["model", "summary", str(broken)]) == 2
    assert capsys.readouterr().err.startswith(f"skymoe: error: file {broken}: cannot read the model config")


def test_efficientnet_tower_loads_the_real_imagenet_weights():
    from efficientnet_lite_pytorch import EfficientNet

    from skymoe.data.datasets import load_dataset
    from skymoe.data.imagery import load_image
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.model.vision import efficientnet_weights_path

    config = tiny_config(vision_model_type="skymoe_efficientnet_lite", image_size=224, vision_pretrained="efficientnet-lite0")
    model = build_model(config).eval()
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=224).eval()
    reference.load_state_dict(torch.load(efficientnet_weights_path(), weights_only=True))
    processor = SkyMoEProcessor.from_model_config(config, build_tokenizer(["a road"], 60))
    pixels = processor.preprocess_images([load_image(load_dataset("rsvqa_lr", "train")[0].image)])
    with torch.no_grad():
        ours = model.vision_tower(pixels)
        theirs = reference.extract_features(pixels).flatten(2).transpose(1, 2)
        # ImageNet weights, not random ones: a real image gives a confident class distribution
        probs = reference._fc(theirs.mean(1)).softmax(-1)
    assert ours.shape == (1, 49, 1280) and torch.equal(ours, theirs)
    assert probs.max() > 0.05  # uniform over 1000 classes would be 0.001


def test_efficientnet_stride_taps_fold_finer_maps_onto_the_coarse_grid():
    from skymoe.model.configuration import EfficientNetLiteConfig
    from skymoe.model.vision import EfficientNetLiteTower

    torch.manual_seed(0)
    plain = EfficientNetLiteTower(EfficientNetLiteConfig(), -1, 128).eval()
    folded = EfficientNetLiteTower(EfficientNetLiteConfig(feature_strides=[8, 16, 32]), -1, 128).eval()
    mid = EfficientNetLiteTower(EfficientNetLiteConfig(feature_strides=[8, 16]), -1, 128).eval()
    for tower in (folded, mid):  # the same weights: a tap reads the block the plain tower runs through
        tower.model.load_state_dict({k: v for k, v in plain.model.state_dict().items() if k in tower.model.state_dict()})
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        head, tokens, fine = plain(images), folded(images), mid(images)
    assert (folded.hidden_size, mid.hidden_size) == (16 * 40 + 4 * 112 + 1280, 4 * 40 + 112)
    assert tokens.shape == (2, 16, 2368) and fine.shape == (2, 64, 272)
    assert torch.allclose(tokens[..., -1280:], head, atol=1e-5)  # the stride-32 tap is the ImageNet head
    # a stride-16 token holds the 2x2 stride-16 cells under it: its top-left cell is the finer grid's token (0, 0)
    assert torch.allclose(tokens[0, 0, 640:1088].view(112, 4)[:, 0], fine[0, 0, 160:], atol=1e-5)


def test_location_targets_are_soft_over_their_own_axis():
    """With location_sigma a box coordinate one bin off costs less than one far off; other tokens keep plain CE."""
    from skymoe.data.boxes import X_TOKENS
    from skymoe.model.losses import location_smoothed_ce

    start, sigma = 50, 1.5
    y0 = start + len(X_TOKENS)  # <y_0>
    target = torch.tensor([y0 + 40])

    def loss_with_mass_on(token: int) -> float:
        logits = torch.zeros(1, 300)
        logits[0, token] = 8.0
        return float(location_smoothed_ce(logits, target, start, sigma))

    assert loss_with_mass_on(y0 + 40) < loss_with_mass_on(y0 + 41) < loss_with_mass_on(y0 + 45) < loss_with_mass_on(start + 40)
    plain = torch.randn(3, 300)
    words = torch.tensor([7, 12, -100])
    assert torch.allclose(location_smoothed_ce(plain, words, start, sigma),
                          torch.nn.functional.cross_entropy(plain, words, ignore_index=-100))


def test_generate_returns_the_prefill_routing_from_that_one_prefill(monkeypatch):
    """``generate(output_routing=True)``: the router's decision read from the prefill, with the tokens of a plain generate."""
    from skymoe.model.generation import routing_of

    model = tiny_model(moe={"num_experts": 4}).eval()
    randomize_adapters(model, std=0.2)
    inputs = generation_inputs(model.config)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        expected = model(**inputs)
        plain = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    lengths = []
    forward = SkyMoEForConditionalGeneration.forward

    @functools.wraps(forward)  # generate() checks its kwargs against forward's signature
    def counting_forward(self, *args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SkyMoEForConditionalGeneration, "forward", counting_forward)
    with torch.no_grad():
        result = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_routing=True)
    assert lengths.count(prompt_len) == 1 and len(lengths) == 6  # one prefill, then one-token decode steps
    assert torch.equal(result.sequences, plain)
    assert torch.equal(result.routing.task_logits, expected.task_logits)
    assert torch.allclose(result.routing.sample_expert_weights, expected.sample_expert_weights, atol=1e-6)
    assert routing_of(result.routing, 1, model) == routing_of(expected, 1, model)


@pytest.mark.parametrize("moe", [{"num_experts": 4}, {"num_experts": 4, "routing": "sequence", "expert_type": "ffn"},
                                 {"num_experts": 4, "routing": "sequence", "expert_type": "llm"}])
def test_one_model_answers_concurrent_callers_as_it_answers_each_alone(moe):
    """Two threads call one model at once with different inputs: each gets what a lone call gives
    (routing embedding, dispatch plans and gate records are per call, not state on the model)."""
    import threading

    model = tiny_model(moe=moe).eval()
    randomize_adapters(model, std=0.2)
    batches = [make_batch(model.config, batch_size=n, seed=n) for n in (2, 3)]
    prompts = [generation_inputs(model.config, batch_size=n, seed=n) for n in (2, 3)]
    with torch.no_grad():
        alone = [model(**b) for b in batches]
        generated = [model.generate(**p, max_new_tokens=5, do_sample=False) for p in prompts]
    start, failures = threading.Barrier(2), []

    def call(i: int) -> None:
        start.wait()
        try:
            with torch.no_grad():
                for _ in range(8):
                    out = model(**batches[i])
                    if not (torch.equal(out.logits, alone[i].logits) and torch.equal(out.expert_load, alone[i].expert_load)):
                        failures.append(("forward", i))
                    if not torch.equal(model.generate(**prompts[i], max_new_tokens=5, do_sample=False), generated[i]):
                        failures.append(("generate", i))
        except Exception as exc:  # e.g. one caller's routing embedding reaching the other's layers
            failures.append((type(exc).__name__, i))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
