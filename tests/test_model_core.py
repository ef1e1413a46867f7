"""Forward, losses and gradients of SkyMoE across LLM families and MoE settings."""
from __future__ import annotations

import pytest
import torch

from _model_helpers import make_batch, tiny_model
from skymoe.model import SkyMoEForConditionalGeneration

SETTINGS = {
    "dense": {"num_experts": 0},
    "lora-token": {"num_experts": 4, "top_k": 2},
    "ffn-sequence": {"num_experts": 4, "top_k": 2, "expert_type": "ffn", "routing": "sequence"},
    "llm-experts": {"num_experts": 3, "top_k": 3, "expert_type": "llm", "routing": "sequence"},  # k = E: all get gradients
}


@pytest.mark.parametrize("text_model_type", ["llama", "gpt2", "qwen2", "gemma3_text"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_training_steps_give_every_trainable_parameter_a_gradient(text_model_type, setting):
    model = tiny_model(text_model_type=text_model_type, moe=SETTINGS[setting])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    touched = set()
    losses = []
    for step in range(3):
        out = model(**make_batch(model.config, seed=step))
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.loss_terms.values())
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        touched |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable - touched == set()
    assert not any(p.requires_grad for p in model.vision_tower.parameters())  # frozen by default
    moe_terms = {"load_balance", "router_z", "cda"} if setting != "dense" else set()  # CDA contrasts an MoE's routing
    assert set(out.loss_terms) == {"lm", "router_task_ce", "router_granularity_ce"} | moe_terms


@pytest.mark.parametrize("setting,text_model_type",
                         [("lora-token", "llama"), ("ffn-sequence", "llama"), ("lora-token", "gpt2"), ("llm-experts", "llama")])
def test_activation_checkpointing_gives_the_gradients_of_a_plain_backward(setting, text_model_type, monkeypatch):
    """Recomputing a checkpointed layer must redo every op that saves tensors for backward.

    The routing plan is made outside the checkpointed layer and shared by its experts, so it must not
    hand the recompute a tensor it built (and saved for backward) in the first pass. Both the
    grouped and the rank-space LoRA forms run (RANK_SPACE_RATIO picks one).
    """
    from skymoe.model import experts as experts_module
    from skymoe.model.build import enable_activation_checkpointing

    for ratio in (10**6, 0):
        monkeypatch.setattr(experts_module, "RANK_SPACE_RATIO", ratio)
        grads = []
        for checkpointing in (False, True):
            model = tiny_model(text_model_type=text_model_type, moe=SETTINGS[setting]).train()
            for module in model.modules():  # no gate noise: both runs must route alike
                if hasattr(module, "jitter"):
                    module.jitter = 0.0
            if checkpointing:
                enable_activation_checkpointing(model)
            model(**make_batch(model.config)).loss.backward()
            grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        plain, checkpointed = grads
        assert plain.keys() == checkpointed.keys() and any("lora_B" in n or "w_in" in n for n in plain)
        for name in plain:
            assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), (ratio, name)


def test_loss_is_the_weighted_sum_of_its_terms():
    from skymoe.model.losses import granularity_info_nce

    loss = {"load_balance": 0.5, "router_z": 0.25, "router_ce": 2.0, "cda": 0.125, "cda_temperature": 0.5, "box": 3.0, "evidence": 2.0}
    model = tiny_model(moe={"num_experts": 4}, loss=loss)
    batch = make_batch(model.config)
    out = model(**batch)
    terms = out.loss_terms
    expected = (
        terms["lm"]
        + 0.5 * terms["load_balance"]
        + 0.25 * terms["router_z"]
        + 2.0 * (terms["router_task_ce"] + terms["router_granularity_ce"])
        + 0.125 * terms["cda"]
    )
    assert torch.allclose(out.loss, expected)
    assert torch.allclose(terms["cda"], granularity_info_nce(out.routing_embedding, batch["granularity_labels"], 0.5))
    assert SkyMoEForConditionalGeneration(model.config).config.loss == loss  # the weights travel in the config
    # the LM term is plain next-token cross-entropy over the supervised tokens
    batch = make_batch(model.config)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    ref = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss_terms["lm"], ref)


def test_routing_statistics_have_the_documented_shapes_and_sums():
    model = tiny_model(moe={"num_experts": 4, "top_k": 2})
    batch = make_batch(model.config, batch_size=3)
    batch["attention_mask"][0, -4:] = 0  # padding is excluded from the statistics
    out = model(**batch)
    assert out.expert_load.shape == (2, 4)
    assert torch.allclose(out.expert_load.sum(-1), torch.ones(2))
    assert out.sample_expert_weights.shape == (3, 2, 4)
    assert torch.allclose(out.sample_expert_weights.sum(-1), torch.ones(3, 2), atol=1e-6)
    assert out.task_logits.shape == (3, 7) and out.granularity_logits.shape == (3, 3)
    assert out.routing_embedding.shape == (3, model.config.router["hidden_size"])


def test_load_balance_loss_is_one_when_routing_is_uniform_and_grows_when_collapsed():
    from skymoe.model.router import GateRecord, load_balance_loss

    tokens, experts = 8, 4
    uniform_logits = torch.zeros(tokens, experts)
    index = torch.arange(tokens).remainder(experts).unsqueeze(1)
    rec = GateRecord(uniform_logits, index, torch.ones(tokens, 1), torch.ones(tokens, dtype=torch.bool), torch.zeros(tokens, dtype=torch.long))
    assert torch.isclose(load_balance_loss([rec], experts), torch.tensor(1.0))
    collapsed = torch.full((tokens, experts), -20.0)
    collapsed[:, 0] = 20.0
    rec = GateRecord(collapsed, torch.zeros(tokens, 1, dtype=torch.long), torch.ones(tokens, 1), rec.row_mask, rec.row_sample)
    assert torch.isclose(load_balance_loss([rec], experts), torch.tensor(4.0), atol=1e-4)


def test_router_ce_ignores_unknown_labels():
    model = tiny_model()
    batch = make_batch(model.config)
    batch["granularity_labels"][:] = -100
    out = model(**batch)
    assert "router_granularity_ce" not in out.loss_terms and "router_task_ce" in out.loss_terms


def test_placeholder_mismatch_is_a_clear_error():
    model = tiny_model()
    batch = make_batch(model.config)
    batch["input_ids"][:, 2] = 7  # one <route> fewer per sample
    with pytest.raises(ValueError, match="route tokens.*placeholder"):
        model(**batch)


def test_frozen_vision_tower_stays_in_eval_mode():
    model = tiny_model(vision_model_type="skymoe_efficientnet_lite", image_size=64)
    model.train()
    assert not model.vision_tower.training and model.projector.training
    bn = model.vision_tower.model._bn0
    before = bn.running_mean.clone()
    model(**make_batch(model.config, batch_size=2))
    assert torch.equal(bn.running_mean, before)


def test_parameter_groups_partition_the_parameters():
    model = tiny_model(moe={"num_experts": 2})
    groups = model.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert all("lora_" in n for n in groups["experts"]) and not groups["adapter"]
    assert all("lora_" in n for n in tiny_model().parameter_groups()["adapter"])
    assert any(".gate." in n for n in groups["router"]) and any(n.startswith("router.") for n in groups["router"])
    assert isinstance(model, SkyMoEForConditionalGeneration)
