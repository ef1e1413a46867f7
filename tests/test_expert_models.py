"""Separate expert LMs (``moe.expert_models``): read and checked at upcycling, the rows' passes, generation, I/O."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from _model_helpers import make_batch, randomize_adapters, tiny_model
from skymoe.data.tokenizer import build_tokenizer
from skymoe.errors import ConfigError
from skymoe.model import SkyMoEForConditionalGeneration
from skymoe.model.configuration import SkyMoEConfig
from skymoe.model.upcycle import _unwrap_dense

LLM = {"expert_type": "llm", "routing": "sequence"}
TEXTS = ["is there a road near the river?", "yes", "how many buildings are there? 12", "a harbour with ships"] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def dense(tokenizer):
    """A stage-1 model over ``tokenizer`` (SkyMoE's tokens at ids 0..5, as tiny_config expects) with a trained-like adapter."""
    model = tiny_model(vocab_size=len(tokenizer)).eval()
    randomize_adapters(model)
    return model


def save_lm(folder, lm, tokenizer):
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def base_copy(tmp_path, dense, tokenizer, name="base"):
    """The stage-1 LLM with its adapter folded in, as a plain causal-LM folder."""
    plain = copy.deepcopy(dense)
    _unwrap_dense(plain, set())
    return save_lm(tmp_path / name, plain.language_model, tokenizer)


def other_lm(tmp_path, tokenizer, name, seed, hidden_size=64, vocab_size=None, kind=LlamaConfig, **sizes):
    torch.manual_seed(seed)
    sizes = {"intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, **sizes}
    config = kind(hidden_size=hidden_size, vocab_size=vocab_size or len(tokenizer), **sizes)
    lm = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # logits of a size that makes experts disagree
        lm.get_output_embeddings().weight.normal_(0.0, 0.5)
    return save_lm(tmp_path / name, lm, tokenizer)


def upcycled(dense, folders, tokenizer, top_k=2, gate_seed=0):
    model = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=len(folders), top_k=top_k, tokenizer=tokenizer,
                                                   expert_models=folders, **LLM).eval()
    g = torch.Generator().manual_seed(gate_seed)
    with torch.no_grad():  # a gate that spreads samples over the experts
        for param in model.router.expert_gate.parameters():
            param.normal_(0.0, 3.0, generator=g)
    return model


@pytest.fixture(scope="module")
def three_lms(tmp_path_factory, dense, tokenizer):
    """Three different expert LMs: the base, a Llama with fewer vocabulary rows than the tokenizer, a Qwen2 whose head is
    its embedding table."""
    tmp = tmp_path_factory.mktemp("lms")
    return [base_copy(tmp, dense, tokenizer), other_lm(tmp, tokenizer, "llama", 1, vocab_size=len(tokenizer) - 4),
            other_lm(tmp, tokenizer, "qwen2", 2, kind=Qwen2Config, num_hidden_layers=2, tie_word_embeddings=True)]


@pytest.fixture(scope="module")
def model(dense, three_lms, tokenizer):
    return upcycled(dense, three_lms, tokenizer)


def generation_inputs(config, batch_size=3, seed=0):
    batch = make_batch(config, batch_size=batch_size, seed=seed)
    batch["attention_mask"][0, :3] = 0  # left padding on the first prompt
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "instruction_mask")}


# ---- configuration and the checks at upcycling -----------------------------------------------------


@pytest.mark.parametrize("moe,message", [
    ({"num_experts": 3, **LLM, "expert_models": ["a", "b"]}, "'moe.expert_models' must be a list of 3 local causal-LM folders"),
    ({"num_experts": 2, "expert_models": ["a", "b"]}, "'moe.expert_models' is for expert_type 'llm'"),
])
def test_bad_expert_models_settings_are_config_errors(moe, message):
    with pytest.raises(ValueError, match=message):
        SkyMoEConfig(moe=moe)


def test_a_model_of_expert_lms_is_built_only_with_their_configs():
    """The folders are read when stage 2 upcycles; a config naming them without their configs makes no model."""
    with pytest.raises(ValueError, match=r"moe.expert_models needs expert_text_configs, one per expert \(2\)"):
        tiny_model(moe={"num_experts": 2, **LLM, "expert_models": ["a", "b"]})


def test_an_expert_lm_whose_tokenizer_differs_is_refused_naming_the_folder(tmp_path, dense, tokenizer):
    other = build_tokenizer(["a different vocabulary of other words entirely"] * 3, vocab_size=290)
    good = base_copy(tmp_path, dense, tokenizer)
    bad = other_lm(tmp_path, other, "other_tokenizer", 1)
    with pytest.raises(ConfigError, match=rf"field 'model\.moe\.expert_models\[1\]': {bad}: the expert LM's tokenizer differs "
                                          rf"from the base LLM's: {len(other)} tokens against {len(tokenizer)} .*first difference at id"):
        upcycled(dense, [good, bad], tokenizer)


def test_an_expert_lm_of_another_hidden_size_is_refused(tmp_path, dense, tokenizer):
    narrow = other_lm(tmp_path, tokenizer, "narrow", 1, hidden_size=32)
    with pytest.raises(ConfigError, match=rf"expert_models\[0\]': {narrow}: the expert LM's hidden size is 32, the base LLM's 64"):
        upcycled(dense, [narrow, base_copy(tmp_path, dense, tokenizer)], tokenizer)


def test_a_folder_without_a_causal_lm_is_refused(tmp_path, dense, tokenizer):
    with pytest.raises(ConfigError, match=rf"expert_models\[1\]': {tmp_path / 'missing'}: not a causal-LM folder"):
        upcycled(dense, [base_copy(tmp_path, dense, tokenizer), str(tmp_path / "missing")], tokenizer)


def test_upcycling_reads_each_lm_and_gives_added_tokens_the_base_rows(model, dense, three_lms):
    llama = AutoModelForCausalLM.from_pretrained(three_lms[1])
    vocab = llama.config.vocab_size
    expert = model.expert_lms[1]
    assert model.config.expert_text_configs[2]["model_type"] == "qwen2"
    assert torch.equal(expert.get_input_embeddings().weight[:vocab], llama.get_input_embeddings().weight)
    assert torch.equal(expert.get_input_embeddings().weight[vocab:], dense.get_input_embeddings().weight[vocab:])
    assert torch.equal(expert.get_output_embeddings().weight[vocab:], dense.get_output_embeddings().weight[vocab:])
    groups = model.parameter_groups()  # stage 2 trains the expert LMs whole; the base LLM only embeds
    assert {n.split(".")[0] for n in groups["experts"]} == {"expert_lms"} and not groups["adapter"]
    assert all(n.startswith("language_model.") for n in groups["lm"])


def test_stage2_upcycles_into_the_named_lms_without_the_reproduction_check(dense, three_lms, tokenizer):
    """The expert LMs are other models than the stage-1 LLM: the check that upcycling reproduces it would refuse them."""
    from types import SimpleNamespace

    from skymoe.model.configuration import ModelSettings, MoESettings
    from skymoe.train.stages import upcycle_checked

    moe = MoESettings(num_experts=3, top_k=2, **LLM, expert_models=three_lms)
    cfg = SimpleNamespace(model=ModelSettings(moe=moe), cda=SimpleNamespace(enabled=False))
    model = upcycle_checked(copy.deepcopy(dense), cfg, make_batch(dense.config), tokenizer)
    assert model.training and len(model.expert_lms) == 3


# ---- the mixture -----------------------------------------------------------------------------------


def test_identical_expert_lms_give_the_dense_distribution(tmp_path, dense, tokenizer):
    folders = [base_copy(tmp_path, dense, tokenizer, f"copy{e}") for e in range(3)]
    model = upcycled(dense, folders, tokenizer)
    batch = make_batch(dense.config, batch_size=3)
    with torch.no_grad():
        reference = dense(**batch).logits.log_softmax(-1)
        out = model(**batch)
    assert out.gate_records[0].topk_weight[:, 1].min() > 0.01  # a real mixture
    assert (out.logits - reference).abs().max() < 1e-5


def test_each_sample_mixes_its_chosen_expert_lms_and_the_mixture_sums_to_one(model):
    batch = make_batch(model.config, batch_size=4, seed=1)
    mask = SkyMoEForConditionalGeneration.supervised_positions(batch["labels"])
    with torch.no_grad():
        out = model(**batch)
        kept = model(**batch, logits_to_keep=mask)
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(out.logits.shape[:2]))
    torch.testing.assert_close(kept.logits, out.logits[mask], rtol=1e-5, atol=1e-6)
    chosen = out.gate_records[0].topk_index
    assert len(set(chosen.flatten().tolist())) == 3, "the gate seed must use every expert"
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.expert_lms[2].get_output_embeddings().weight.add_(0.3)  # change one expert LM
        after = changed(**batch).logits
    differs = (after - out.logits).abs().flatten(1).amax(1) > 1e-6
    assert torch.equal(differs, (chosen == 2).any(1))


def test_each_expert_lm_embeds_the_text_itself_and_reads_the_image_and_its_own_instruction(model):
    batch = make_batch(model.config, batch_size=4, seed=1)
    ids, config = batch["input_ids"], model.config
    seen = {}
    hooks = [lm.register_forward_hook(lambda module, args, kwargs, out, e=e: seen.update({e: kwargs["inputs_embeds"]}),
                                      with_kwargs=True) for e, lm in enumerate(model.expert_lms)]
    try:
        with torch.no_grad():
            out = model(**batch)
            image = model.get_image_features(batch["pixel_values"])
            prompts = model.router(model.get_input_embeddings()(ids), batch["instruction_mask"], image).prompts
    finally:
        for hook in hooks:
            hook.remove()
    row_expert = out.gate_records[0].topk_index.T.reshape(-1)  # row j*B + b: sample b through its j-th expert
    for e, lm in enumerate(model.expert_lms):
        samples = (row_expert == e).nonzero().squeeze(1) % 4
        own_ids, embeds = ids[samples], seen[e]
        is_image, is_route = own_ids == config.image_token_id, own_ids == config.route_token_id
        text = ~(is_image | is_route)
        assert torch.equal(embeds[text], lm.get_input_embeddings()(own_ids)[text])
        assert torch.equal(embeds[is_image], image[samples].flatten(0, 1))
        assert torch.equal(embeds[is_route], prompts[samples, e].flatten(0, 1))
    assert not torch.equal(model.expert_lms[1].get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_training_reaches_only_the_chosen_expert_lms(model):
    trained = copy.deepcopy(model).train()
    batch = make_batch(model.config, batch_size=1, seed=2)
    out = trained(**batch)
    out.loss_terms["lm"].backward()
    chosen = set(out.gate_records[0].topk_index[0].tolist())
    reached = {e for e, lm in enumerate(trained.expert_lms) if lm.get_output_embeddings().weight.grad is not None}
    assert reached == chosen and len(chosen) == 2
    assert trained.router.expert_gate.routing_proj.weight.grad.abs().sum() > 0


# ---- generation, save/load -------------------------------------------------------------------------


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_generation_equals_uncached(model, beams):
    inputs = generation_inputs(model.config)
    # every beam returned: the best one alone may never have read another beam's cache rows
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams, num_return_sequences=beams)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **settings)
        uncached = model.generate(**inputs, use_cache=False, **settings)
        first = model(**generation_inputs(model.config)).logits[:, -1].argmax(-1)
    assert cached.shape == (3 * beams, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(cached, uncached)
    if beams == 1:  # the first new token is the mixture's argmax
        assert torch.equal(cached[:, inputs["input_ids"].shape[1]], first)


def test_a_beam_reordering_moves_each_experts_cache_rows(model):
    """Two beams per sample that diverge, then swap: the cached step equals the uncached pass over the swapped histories
    (random tiny LMs hardly read their history, so generate()'s tokens alone would not show a wrong cache row)."""
    beams = {k: v.repeat_interleave(2, 0) for k, v in generation_inputs(model.config, batch_size=4, seed=1).items()}
    g = torch.Generator().manual_seed(0)
    first, second = (torch.randint(6, model.config.text_config.vocab_size, (8, 1), generator=g) for _ in range(2))
    swap = torch.arange(8).view(4, 2).flip(1).flatten()  # [1, 0, 3, 2, ...]
    mask = beams["attention_mask"]
    with torch.no_grad():
        prefill = model(**beams, use_cache=True)
        steps = {"routing_embedding": prefill.routing_embedding, "cache": prefill.cache, "use_cache": True,
                 "instruction_mask": beams["instruction_mask"]}
        model(input_ids=first, attention_mask=F.pad(mask, (0, 1), value=1), **steps)
        model._reorder_cache(prefill.cache, swap)
        cached = model(input_ids=second, attention_mask=F.pad(mask, (0, 2), value=1), **steps).logits[:, -1]
        history = torch.cat([beams["input_ids"][swap], first[swap], second], dim=1)
        uncached = model(input_ids=history, attention_mask=F.pad(mask, (0, 2), value=1), pixel_values=beams["pixel_values"],
                         instruction_mask=beams["instruction_mask"]).logits[:, -1]
    assert len(set(prefill.gate_records[0].topk_index.flatten().tolist())) == 3, "the beams must use every expert"
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_a_cache_from_elsewhere_is_refused(model):
    from transformers import DynamicCache

    inputs = generation_inputs(model.config)
    with torch.no_grad():
        foreign = model.expert_lms[0](input_ids=inputs["input_ids"], use_cache=True).cache
        with pytest.raises(ValueError, match="continue only their own ExpertCaches"):
            model(**inputs, cache=foreign)
        assert isinstance(model(**inputs, cache=DynamicCache()).cache.caches[0], DynamicCache)  # an empty one is replaced


def test_save_and_reload_is_bit_exact(tmp_path, model):
    from transformers import AutoModelForImageTextToText

    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)
    assert [type(lm).__name__ for lm in loaded.expert_lms] == ["LlamaForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM"]
    qwen2 = loaded.expert_lms[2]
    assert qwen2.get_output_embeddings().weight is qwen2.get_input_embeddings().weight  # still tied
    batch, inputs = make_batch(model.config), generation_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False),
                           loaded.generate(**inputs, max_new_tokens=5, do_sample=False))


def test_summary_counts_k_passes_of_the_expert_lms_and_none_of_the_base(tmp_path, dense, tokenizer):
    """Copies of the base LLM as expert LMs cost what k passes of the base cost with adapter experts (less the adapters)."""
    from skymoe.model.summary import format_summary, summarize

    copies = upcycled(dense, [base_copy(tmp_path, dense, tokenizer, f"copy{e}") for e in range(3)], tokenizer)
    adapters = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=3, top_k=2, **LLM)
    separate, shared = summarize(copies), summarize(adapters)
    assert separate["llm_passes"] == shared["llm_passes"] == 2
    assert separate["groups"]["lm"]["active_per_token"] == separate["groups"]["lm"]["flops_per_token"] == 0
    assert separate["groups"]["experts"]["active_per_token"] == shared["groups"]["lm"]["active_per_token"] * 2
    assert separate["groups"]["experts"]["flops_per_token"] == shared["groups"]["lm"]["flops_per_token"]
    assert "expert LMs: each token runs 2 of them" in format_summary(separate)
