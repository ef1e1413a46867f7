"""Expert LLMs (``moe.expert_type: llm``): per-expert routing instructions, the mixture, upcycling, generation, I/O."""
from __future__ import annotations

import pytest
import torch

from _model_helpers import make_batch, randomize_adapters, tiny_model
from skymoe.model import SkyMoEForConditionalGeneration
from skymoe.model.configuration import ModelSettings, MoESettings, SkyMoEConfig
from skymoe.model.experts import LoRAExperts

LLM = {"expert_type": "llm", "routing": "sequence"}


def llm_model(num_experts=4, top_k=2, seed=0, **kwargs):
    """Experts that differ: random adapters, and a gate that spreads samples over them."""
    model = tiny_model(seed=seed, moe={"num_experts": num_experts, "top_k": top_k, **LLM}, **kwargs).eval()
    randomize_adapters(model, std=0.2, seed=seed + 1)
    with torch.no_grad():
        model.router.expert_gate.routing_proj.weight.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(seed))
    return model


def generation_inputs(config, batch_size=2, seed=0, pad=True):
    batch = make_batch(config, batch_size=batch_size, seed=seed)
    batch["attention_mask"][0, :3] = 0 if pad else 1  # left padding on the first prompt
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "instruction_mask")}


def expert_rows(model, batch):
    """(the rows' LLM logits [k*B, S, V], their input embeddings, the row experts, the output) of one forward."""
    seen = {}
    llm = model.language_model

    def capture(module, args, kwargs, output):
        seen.update(logits=output.logits, embeds=kwargs["inputs_embeds"], row_expert=kwargs["row_expert"])

    handle = llm.register_forward_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            output = model(**batch)
    finally:
        handle.remove()
    return seen["logits"], seen["embeds"], seen["row_expert"], output


# ---- configuration ---------------------------------------------------------------------------------


def test_llm_experts_with_token_routing_is_one_error_naming_both_keys():
    with pytest.raises(ValueError, match=r"'model\.moe\.expert_type' = 'llm' .* 'model\.moe\.routing' = 'token' .*"
                                         r"set model\.moe\.routing: sequence"):
        ModelSettings(moe=MoESettings(num_experts=4, expert_type="llm")).validate()
    with pytest.raises(ValueError, match="'moe.routing' = 'token'"):
        SkyMoEConfig(moe={"num_experts": 4, "expert_type": "llm"})
    assert SkyMoEConfig(moe={"num_experts": 4, **LLM}).moe["expert_type"] == "llm"


@pytest.mark.parametrize("moe,message", [
    ({"num_experts": 3, **LLM, "expert_templates": ["theme", "objects"]}, "a list of 3 non-empty texts"),
    ({"num_experts": 2, **LLM, "expert_templates": ["theme", ""]}, "a list of 2 non-empty texts"),
    ({"num_experts": 2, "expert_templates": ["theme", "objects"]}, "is for expert_type 'llm', got 'moe.expert_type' = 'lora'"),
])
def test_bad_expert_templates_are_config_errors(moe, message):
    with pytest.raises(ValueError, match=message):
        SkyMoEConfig(moe=moe)


def test_uniform_gate_runs_every_expert_with_equal_weights():
    """moe.gate: uniform (the router-off ablation): all E expert LLMs, each weighted 1/E, whatever the prompt."""
    model = tiny_model(moe={"num_experts": 3, "top_k": 3, "gate": "uniform", **LLM}).eval()
    randomize_adapters(model, std=0.2, seed=1)
    assert model.router.expert_gate.routing_proj is None
    batch = make_batch(model.config, batch_size=2, seed=1)
    logits, _, row_expert, output = expert_rows(model, batch)
    assert sorted(row_expert.tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(output.sample_expert_weights, torch.full((2, 1, 3), 1 / 3))
    mixture = torch.logsumexp(logits.float().log_softmax(-1).view(3, 2, *logits.shape[1:]), dim=0) - torch.log(torch.tensor(3.0))
    assert torch.allclose(output.logits, mixture, atol=1e-5)
    with pytest.raises(ValueError, match="'moe.gate' = 'uniform' runs every expert LLM"):
        SkyMoEConfig(moe={"num_experts": 3, "top_k": 2, "gate": "uniform", **LLM})


# ---- routing instructions and the mixture ----------------------------------------------------------


def test_each_row_reads_its_own_experts_routing_instruction_and_only_that_expert_sees_it():
    model = llm_model()
    batch = make_batch(model.config, batch_size=3, seed=1)
    logits, embeds, row_expert, _ = expert_rows(model, batch)
    with torch.no_grad():
        prompts = model.router(model.get_input_embeddings()(batch["input_ids"]), batch["instruction_mask"],
                               model.get_image_features(batch["pixel_values"])).prompts
    experts, route_tokens = model.num_experts, model.config.num_route_tokens
    assert prompts.shape[:3] == (3, experts, route_tokens)
    assert all(not torch.allclose(prompts[:, e], prompts[:, 0]) for e in range(1, experts))  # the instructions differ
    route = batch["input_ids"][0] == model.config.route_token_id
    for row, expert in enumerate(row_expert.tolist()):  # row j*B + b: sample b through its j-th expert
        torch.testing.assert_close(embeds[row][route], prompts[row % 3, expert], rtol=0, atol=0)

    target = int(row_expert[0])
    assert (row_expert != target).any(), "the seed must route some rows elsewhere"
    with torch.no_grad():
        model.router.prompt_base[target].add_(0.5)  # change one expert's instruction
    changed = expert_rows(model, batch)[0]
    differs = (changed - logits).abs().flatten(1).amax(1) > 0
    assert torch.equal(differs, row_expert == target)


def test_mixture_is_the_gate_weighted_sum_of_the_chosen_experts_distributions_and_the_loss_its_nll():
    model = llm_model()
    batch = make_batch(model.config, batch_size=3, seed=2)
    rows, _, row_expert, output = expert_rows(model, batch)
    (record,) = output.gate_records
    k, batch_size = 2, 3
    probs = rows.softmax(-1).view(k, batch_size, *rows.shape[1:])
    expected = torch.zeros_like(probs[0])
    for b in range(batch_size):
        assert row_expert.view(k, batch_size)[:, b].tolist() == record.topk_index[b].tolist()
        for j in range(k):
            expected[b] += record.topk_weight[b, j] * probs[j, b]
    assert output.logits.dtype == torch.float32
    torch.testing.assert_close(output.logits.exp(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(output.logits.exp().sum(-1), torch.ones(output.logits.shape[:2]))  # sums to 1
    targets = batch["labels"][:, 1:]
    supervised = targets != -100
    nll = -expected[:, :-1].gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1).log()[supervised].mean()
    torch.testing.assert_close(output.loss_terms["lm"], nll, rtol=1e-5, atol=1e-6)
    # training keeps only the supervised positions' logits: the same mixture there
    kept = model(**batch, logits_to_keep=SkyMoEForConditionalGeneration.supervised_positions(batch["labels"]))
    mask = SkyMoEForConditionalGeneration.supervised_positions(batch["labels"])
    torch.testing.assert_close(kept.logits, output.logits[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept.loss_terms["lm"], nll, rtol=1e-5, atol=1e-6)
    assert output.sample_expert_weights.shape == (3, 1, 4) and output.expert_load.shape == (1, 4)


@pytest.mark.parametrize("text_model_type,top_k", [("llama", 1), ("llama", 2), ("llama", 4), ("gpt2", 2)])
def test_identical_expert_llms_give_the_dense_distribution_for_any_gate(text_model_type, top_k):
    """The upcycling invariant: E copies of the dense adapter and routing instruction, mixed by any weights."""
    dense = tiny_model(text_model_type=text_model_type).eval()
    randomize_adapters(dense)
    batch = make_batch(dense.config, batch_size=3)
    mask = SkyMoEForConditionalGeneration.supervised_positions(batch["labels"])
    with torch.no_grad():
        reference = dense(**batch).logits.log_softmax(-1)
        moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, top_k=top_k, **LLM).eval()
        g = torch.Generator().manual_seed(top_k)
        for param in moe.router.expert_gate.parameters():  # a random gate
            param.normal_(0.0, 3.0, generator=g)
        out = moe(**batch)
        kept = moe(**batch, logits_to_keep=mask)
    assert top_k == 1 or out.gate_records[0].topk_weight[:, 1].min() > 0.01  # a real mixture
    assert (out.logits - reference).abs().max() < 1e-5
    assert (kept.logits - reference[mask]).abs().max() < 1e-5
    lora = next(m for m in moe.modules() if isinstance(m, LoRAExperts))
    assert lora.num_experts == 4 and torch.equal(lora.lora_B[3], lora.lora_B[0])
    assert all(torch.equal(moe.router.prompt_base[e], dense.router.prompt_base) for e in range(4))


def test_training_step_reaches_the_chosen_experts_the_gate_and_the_generated_instructions():
    model = llm_model(num_experts=4, top_k=2).train()
    batch = make_batch(model.config, batch_size=1, seed=3)
    out = model(**batch)
    out.loss_terms["lm"].backward()  # the mixture alone (no load-balance term) must train the gate
    chosen = set(out.gate_records[0].topk_index[0].tolist())
    for lora in (m for m in model.modules() if isinstance(m, LoRAExperts)):
        got = {e for e in range(4) if lora.lora_A.grad[e].abs().sum() > 0}
        assert got == chosen
    router = model.router
    assert router.expert_gate.routing_proj.weight.grad.abs().sum() > 0
    assert router.expert_prompt_proj.weight.grad.abs().sum() > 0
    assert {e for e in range(4) if router.prompt_base.grad[e].abs().sum() > 0} == chosen
    assert model.parameter_groups()["router"].keys() >= {"router.expert_gate.routing_proj.weight", "router.expert_prompt_proj.weight"}


# ---- generation, save/load -------------------------------------------------------------------------


@pytest.mark.parametrize("text_model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("top_k,batch_size", [(2, 2), (1, 1), (2, 1)])
def test_cached_generation_equals_uncached_and_keeps_the_prefill_choice(text_model_type, top_k, batch_size):
    model = llm_model(top_k=top_k, text_model_type=text_model_type)
    inputs = generation_inputs(model.config, batch_size=batch_size)
    choices = []
    model.router.expert_gate.register_forward_hook(lambda module, args, out: choices.append(out[0]))
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
        assert len(choices) == 8 and all(torch.equal(c, choices[0]) for c in choices)  # one prefill, 7 steps
        uncached = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (batch_size, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(cached, uncached)
    unpadded = generation_inputs(model.config, batch_size=batch_size, pad=False)
    with torch.no_grad():  # the first new token is the mixture's argmax
        first = model(**unpadded).logits[:, -1].argmax(-1)
        assert torch.equal(model.generate(**unpadded, max_new_tokens=1, do_sample=False)[:, -1], first)


def test_beam_search_reorders_every_experts_cache_rows(monkeypatch):
    model = llm_model(top_k=2)
    inputs = generation_inputs(model.config)
    reorders = []
    real = SkyMoEForConditionalGeneration._reorder_cache
    monkeypatch.setattr(SkyMoEForConditionalGeneration, "_reorder_cache",
                        lambda self, cache, index: reorders.append(index) or real(self, cache, index))
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=3)
        uncached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=3, use_cache=False)
    assert any(not torch.equal(i, torch.arange(6)) for i in reorders)  # beams did swap
    assert torch.equal(cached, uncached)


def test_generate_returns_the_prefill_routing_of_expert_llms():
    model = llm_model()
    inputs = generation_inputs(model.config)
    with torch.no_grad():
        expected = model(**inputs)
        result = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_routing=True)
    torch.testing.assert_close(result.routing.sample_expert_weights, expected.sample_expert_weights)
    assert result.routing.sample_expert_weights.shape == (2, 1, 4)
    assert torch.allclose(result.routing.sample_expert_weights.sum(-1), torch.ones(2, 1))


def test_save_and_reload_is_bit_exact(tmp_path):
    from transformers import AutoModelForImageTextToText

    model = llm_model()
    with torch.no_grad():
        model.router.expert_prompt_proj.weight.normal_(0.0, 0.01)  # trained-like: not its zero start
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)
    assert loaded.config.moe == model.config.moe and loaded.has_expert_llms
    batch, inputs = make_batch(model.config), generation_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False),
                           loaded.generate(**inputs, max_new_tokens=5, do_sample=False))


# ---- templates, summary ----------------------------------------------------------------------------


class WordTokenizer:
    """Token ids by word: enough for the template initialisation."""

    def __init__(self, words):
        self.ids = {w: 10 + i for i, w in enumerate(words)}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.ids[w] for w in text.split()]}


def test_templates_start_each_experts_instruction_from_its_text():
    from skymoe.model.expert_llms import init_expert_prompts_from_text

    model = llm_model(num_experts=3, top_k=1, num_route_tokens=3)
    tokenizer = WordTokenizer(["scene", "theme", "objects", "relations", "between", "them"])
    before = model.router.prompt_base.detach().clone()
    init_expert_prompts_from_text(model, tokenizer, ["scene theme", "objects", "relations between them"])
    table, base = model.get_input_embeddings().weight, model.router.prompt_base
    assert torch.equal(base[0, :2], table[[10, 11]]) and torch.equal(base[0, 2], before[0, 2])
    assert torch.equal(base[1, 0], table[12]) and torch.equal(base[1, 1:], before[1, 1:])
    assert torch.equal(base[2], table[[13, 14, 15]])
    with pytest.raises(ValueError, match=r"moe.expert_templates\[1\] = 'scene theme objects relations' is 4 tokens; .* num_route_tokens = 3"):
        init_expert_prompts_from_text(model, tokenizer, ["theme", "scene theme objects relations", "them"])
    with pytest.raises(ValueError, match="needs expert LLMs"):
        init_expert_prompts_from_text(tiny_model(moe={"num_experts": 3}), tokenizer, ["theme", "objects", "them"])


def test_summary_counts_k_adapters_and_k_passes_of_the_llm():
    from skymoe.model.summary import format_summary, summarize
    from skymoe.model.build import tiny_config

    llm = summarize(tiny_config(moe={"num_experts": 4, "top_k": 2, **LLM}))
    lora = summarize(tiny_config(moe={"num_experts": 4, "top_k": 2, "routing": "sequence"}))
    assert llm["llm_passes"] == 2 and lora["llm_passes"] == 1
    assert llm["groups"]["experts"]["active_per_token"] * 2 == llm["groups"]["experts"]["total"]  # k of E adapters
    assert llm["groups"]["lm"]["active_per_token"] == lora["groups"]["lm"]["active_per_token"]
    assert llm["groups"]["lm"]["flops_per_token"] == 2 * lora["groups"]["lm"]["flops_per_token"]
    assert "each token runs 2 passes of the LLM" in format_summary(llm)


def test_stage2_upcycling_check_compares_log_probabilities_then_applies_the_templates():
    from types import SimpleNamespace

    from skymoe.errors import ConfigError
    from skymoe.train.stages import upcycle_checked

    dense = tiny_model()
    randomize_adapters(dense)
    batch = make_batch(dense.config)
    tokenizer = WordTokenizer(["theme", "objects", "and", "relations"])

    def stage2(templates):
        moe = MoESettings(num_experts=2, top_k=2, **LLM, expert_templates=templates)
        return SimpleNamespace(model=ModelSettings(moe=moe), cda=SimpleNamespace(enabled=False))

    moe = upcycle_checked(dense, stage2(["theme", "objects"]), batch, tokenizer)
    table = moe.get_input_embeddings().weight
    assert moe.has_expert_llms and torch.equal(moe.router.prompt_base[:, 0], table[[10, 11]])
    with pytest.raises(ConfigError, match=r"model\.moe\.expert_templates\[1\] = 'objects and relations' is 3 tokens"):
        upcycle_checked(dense, stage2(["theme", "objects and relations"]), batch, tokenizer)
