"""Experts and gates: grouped dispatch against a naive per-token reference, top-k invariants, upcycling."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from _model_helpers import make_batch, randomize_adapters, tiny_model
from skymoe.model import SkyMoEForConditionalGeneration
from skymoe.model import experts as experts_module
from skymoe.model.dispatch import DispatchPlan, OneTokenPlan, dispatching, grouped_matmul
from skymoe.model.experts import FFNExperts, LoRAExperts
from skymoe.model.router import ExpertGate

TOKENS, EXPERTS, TOP_K = 13, 5, 2


def random_routing(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(TOKENS, EXPERTS, generator=g)
    weight, index = logits.softmax(-1).topk(TOP_K, dim=-1)
    return index, weight / weight.sum(-1, keepdim=True)


def naive_lora(module: LoRAExperts, x, index, weight):
    """Reference: loop over tokens and their k experts."""
    flat = x.reshape(TOKENS, -1)
    out = module.base(flat).clone()
    for t in range(TOKENS):
        for j in range(TOP_K):
            e = index[t, j]
            out[t] += weight[t, j] * (flat[t] @ module.lora_A[e] @ module.lora_B[e]) * module.scale
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("form", ["grouped", "rank-space", "few-tokens"])
@pytest.mark.parametrize("base", [nn.Linear(12, 7), Conv1D(7, 12)], ids=["linear", "gpt2-conv1d"])
def test_lora_experts_dispatch_matches_naive_reference(base, form, monkeypatch):
    # "few-tokens": the decode-step path (few tokens, any width).
    monkeypatch.setattr(experts_module, "RANK_SPACE_RATIO", 0 if form == "rank-space" else 10**6)
    monkeypatch.setattr(experts_module, "FEW_TOKENS", TOKENS if form == "few-tokens" else 0)
    torch.manual_seed(0)
    module = LoRAExperts(base, EXPERTS, rank=3, alpha=6.0)
    assert module.rank_space == (form == "rank-space")
    if form != "grouped":  # only the grouped form sorts the assignments
        plan = DispatchPlan.from_topk(*random_routing(), EXPERTS)
        with dispatching(plan):
            module(torch.randn(1, TOKENS, 12))
        assert "order" not in vars(plan)
    nn.init.normal_(module.lora_B)
    x = torch.randn(1, TOKENS, 12)
    index, weight = random_routing()
    with dispatching(DispatchPlan.from_topk(index, weight, EXPERTS)):
        assert torch.allclose(module(x), naive_lora(module, x, index, weight), atol=1e-5)
        module(x).sum().backward()
    used = set(index.unique().tolist())
    for e in range(EXPERTS):  # only the experts that got tokens get gradient
        assert bool(module.lora_A.grad[e].abs().sum() > 0) == (e in used)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
def test_chosen_experts_decode_path_matches_naive_reference(grad, monkeypatch):
    """One token (batch-1 decode) reads only its chosen experts.

    With autograd (and under bf16 autocast) the gathered form runs and gradients reach the chosen
    experts and the gate; CPU inference runs one addmm_ per chosen expert.
    """
    torch.manual_seed(0)
    num_experts, tokens = 8, 1
    module = LoRAExperts(nn.Linear(12, 7), num_experts, rank=3, alpha=6.0)
    nn.init.normal_(module.lora_B)
    logits = torch.randn(tokens, num_experts, requires_grad=True)
    top, index = logits.topk(TOP_K, dim=-1)
    weight = top.softmax(-1)
    plan = DispatchPlan.from_topk(index, weight, num_experts)
    x = torch.randn(1, tokens, 12)
    monkeypatch.setattr(LoRAExperts, "_add_rank_space_delta", None)  # neither other form may run
    monkeypatch.setattr(experts_module, "grouped_matmul", None)
    with torch.set_grad_enabled(grad), dispatching(plan):
        got = module(x)
    assert ("chosen_pairs" in vars(plan)) == (not grad)
    expected = module.base(x[0]).clone()
    for t in range(tokens):
        for j in range(TOP_K):
            e = index[t, j]
            expected[t] += weight[t, j] * (x[0, t] @ module.lora_A[e] @ module.lora_B[e]) * module.scale
    assert torch.allclose(got[0], expected, atol=1e-5)
    if not grad:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), dispatching(plan):
            low = module(x)
        assert low.dtype == torch.bfloat16 and torch.allclose(low[0].float(), expected, atol=0.1, rtol=0.05)
        return
    got.sum().backward()
    used = set(index.unique().tolist())
    assert all(bool(module.lora_A.grad[e].abs().sum() > 0) == (e in used) for e in range(num_experts))
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("form,tokens", [("grouped", 13), ("rank-space", 13), ("few-tokens", 13), ("one-token", 1)])
def test_every_lora_form_runs_under_bf16_autocast_with_gradients(form, tokens, monkeypatch):
    """bf16 mixed precision (the trainer's autocast): in-place adds must not mix bf16 outputs with fp32 adapters."""
    monkeypatch.setattr(experts_module, "RANK_SPACE_RATIO", 0 if form == "rank-space" else 10**6)
    monkeypatch.setattr(experts_module, "FEW_TOKENS", 64 if form in ("few-tokens", "one-token") else 0)
    num_experts = 8
    module = LoRAExperts(nn.Linear(16, 16), num_experts, rank=2, alpha=4.0)
    nn.init.normal_(module.lora_B)
    logits = torch.randn(tokens, num_experts, requires_grad=True)
    top, index = logits.topk(TOP_K, dim=-1)
    plan = DispatchPlan.from_topk(index, top.softmax(-1), num_experts)
    x = torch.randn(1, tokens, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), dispatching(plan):
        out = module(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and module.lora_B.grad is not None and logits.grad is not None
    with torch.no_grad():
        reference = module.base(x) + torch.stack([
            sum(w * (x[0, t] @ module.lora_A[e] @ module.lora_B[e]) for e, w in zip(index[t], top.softmax(-1)[t]))
            for t in range(tokens)
        ]) * module.scale
    assert torch.allclose(out.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("tokens", [TOKENS, 1], ids=["rank-space", "one-token"])
def test_decode_forms_see_in_place_updates_and_new_storage_without_autograd(tokens):
    """The no-grad forms keep lora_A's [in, E*r] layout / per-expert views between forwards.

    An optimizer-style in-place update and a dtype move (new storage) must both reach the output.
    """
    module = LoRAExperts(nn.Linear(12, 7), 8, rank=3, alpha=6.0)
    nn.init.normal_(module.lora_B)
    x = torch.randn(1, tokens, 12)
    logits = torch.randn(tokens, 8)
    top, index = logits.topk(TOP_K, dim=-1)
    weight = top.softmax(-1)

    def reference(m, inputs):
        flat = inputs.reshape(tokens, -1)
        delta = torch.stack([sum(w * (flat[t] @ m.lora_A[e] @ m.lora_B[e]) for e, w in zip(index[t], weight[t])) for t in range(tokens)])
        return m.base(flat) + delta.to(flat.dtype) * m.scale

    assert tokens <= experts_module.FEW_TOKENS  # a decode-step form runs
    with torch.no_grad(), dispatching(DispatchPlan.from_topk(index, weight, 8)):
        module(x)
        clone = copy.deepcopy(module)  # caches are not copied (they would be extra copies of A and B)
        assert clone._columns_cache is None and clone._views_cache is None and torch.equal(clone(x), module(x))
        module.lora_A.mul_(-2.0)
        module.lora_B.add_(1.0)
        assert torch.allclose(module(x).reshape(tokens, -1), reference(module, x), atol=1e-5)
        module.double()
    with torch.no_grad(), dispatching(DispatchPlan.from_topk(index, weight.double(), 8)):
        got = module(x.double())
        assert got.dtype == torch.float64 and torch.allclose(got.reshape(tokens, -1), reference(module, x.double()), atol=1e-9)


def test_dispatch_plan_sorts_assignments_by_expert():
    index, weight = random_routing(1)
    plan = DispatchPlan.from_topk(index, weight, EXPERTS)
    assert torch.equal(plan.expert_index, plan.expert_index.sort().values)
    counts = torch.bincount(index.reshape(-1), minlength=EXPERTS)
    assert plan.offsets.tolist() == torch.cumsum(counts, 0).tolist()
    for row in range(TOKENS * TOP_K):  # each sorted row points at a real (token, expert, weight)
        t, e = plan.token_index[row], plan.expert_index[row]
        slot = (index[t] == e).nonzero().item()
        assert torch.isclose(plan.weight[row, 0], weight[t, slot])


@pytest.mark.parametrize("text_model_type", ["llama", "gpt2"])
def test_ffn_experts_grouped_dispatch_matches_naive_reference(text_model_type):
    model = tiny_model(text_model_type=text_model_type, moe={"dense_lora": False})
    mlp = model.language_model.base_model.h[0].mlp if text_model_type == "gpt2" else model.language_model.model.layers[0].mlp
    mlp.eval()
    experts = FFNExperts(mlp, EXPERTS)
    with torch.no_grad():
        for p in experts.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # make the experts different
    hidden = model.config.text_config.hidden_size
    x = torch.randn(1, TOKENS, hidden)
    index, weight = random_routing(2)
    with dispatching(DispatchPlan.from_topk(index, weight, EXPERTS)):
        fast = experts(x)

    reference = torch.zeros(TOKENS, hidden)
    for t in range(TOKENS):
        for j in range(TOP_K):
            e = index[t, j]
            h = x[0, t] @ experts.w_in[e] + (experts.b_in[e] if experts.b_in is not None else 0)
            if experts.gated:
                gate, up = h.chunk(2)
                h = experts.act(gate) * up
            else:
                h = experts.act(h)
            y = h @ experts.w_out[e] + (experts.b_out[e] if experts.b_out is not None else 0)
            reference[t] += weight[t, j] * y
    assert torch.allclose(fast[0], reference, atol=1e-5)


def test_identical_ffn_experts_equal_the_dense_mlp():
    model = tiny_model(text_model_type="gpt2", moe={"dense_lora": False})
    mlp = model.language_model.base_model.h[1].mlp.eval()
    experts = FFNExperts(mlp, EXPERTS)
    x = torch.randn(2, 7, model.config.text_config.hidden_size)
    g = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(EXPERTS, generator=g)[:TOP_K] for _ in range(14)])
    weight = torch.rand(14, TOP_K, generator=g)
    with dispatching(DispatchPlan.from_topk(index, weight / weight.sum(-1, keepdim=True), EXPERTS)):
        assert torch.allclose(experts(x), mlp(x), atol=1e-6)


@pytest.mark.parametrize("routing", ["token", "sequence"])
def test_gate_picks_k_distinct_experts_with_weights_summing_to_one(routing):
    torch.manual_seed(0)
    gate = ExpertGate(16, 8, EXPERTS, TOP_K, routing, jitter=0.0)
    records = []
    index, weight = gate(torch.randn(3, 4, 16), torch.randn(3, 8), records)
    assert index.shape == weight.shape == (12, TOP_K)
    assert torch.allclose(weight.sum(-1), torch.ones(12))
    assert all(len(set(row.tolist())) == TOP_K for row in index)
    (record,) = records
    expected = record.logits.softmax(-1).topk(TOP_K).indices
    top_probs = record.logits.softmax(-1).topk(TOP_K).values  # weights = renormalised top-k probabilities
    assert torch.allclose(record.topk_weight, top_probs / top_probs.sum(-1, keepdim=True), atol=1e-6)
    if routing == "sequence":  # one decision per sample, shared by its tokens
        assert record.logits.shape == (3, EXPERTS)
        assert torch.equal(index.view(3, 4, TOP_K), expected.unsqueeze(1).expand(3, 4, TOP_K))
    else:
        assert torch.equal(index, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_decode_step_decides_like_the_full_sequence(dtype):
    """A one-token forward (a cached decode step) gives the logits and choice of the full forward, in bf16 too."""
    torch.manual_seed(0)
    gate = ExpertGate(16, 8, EXPERTS, TOP_K, "token", jitter=0.0).to(dtype)
    embedding, records = torch.randn(3, 8, dtype=dtype), []
    hidden = torch.randn(3, 4, 16, dtype=dtype)
    index, weight = gate(hidden, embedding, records)
    step_index, step_weight = gate(hidden[:, -1:], embedding, records)
    full, step = records
    assert torch.equal(step.logits, full.logits.view(3, 4, EXPERTS)[:, -1])
    assert torch.equal(step_index, index.view(3, 4, TOP_K)[:, -1])
    assert torch.equal(step_weight, weight.view(3, 4, TOP_K)[:, -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_token_choice_in_python_numbers_is_the_gate_choice(dtype):
    """choose_for_one_token (CPU decode steps) picks the experts and weights that forward picks."""
    torch.manual_seed(0)
    gate = ExpertGate(16, 8, 8, 3, "token", jitter=0.0).to(dtype)
    embedding = torch.randn(1, 8, dtype=dtype)
    for _ in range(50):
        hidden = torch.randn(1, 1, 16, dtype=dtype)
        index, weight = gate(hidden, embedding)
        chosen = dict(gate.choose_for_one_token(hidden, embedding))
        assert list(chosen) == index[0].tolist()
        assert torch.allclose(torch.tensor(list(chosen.values()), dtype=dtype), weight[0], rtol=1e-6, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # 16-bit logits: left to forward (topk's tie order)
        assert (gate.choose_for_one_token(hidden, embedding) is None) == (dtype == torch.float32)  # autocast leaves fp64 alone
    assert gate.to(torch.bfloat16).choose_for_one_token(hidden.bfloat16(), embedding.bfloat16()) is None


def test_one_token_plan_builds_the_tensors_other_forms_need():
    plan = OneTokenPlan([(5, 0.75), (2, 0.25)], 8, torch.float32, torch.device("cpu"))
    assert plan.num_tokens == 1 and plan.top_k == 2 and "topk_index" not in vars(plan)
    assert plan.topk_index.tolist() == [[5, 2]] and plan.topk_weight.tolist() == [[0.75, 0.25]]
    assert plan.dense_weight.tolist() == [[0, 0, 0.25, 0, 0, 0.75, 0, 0]]
    assert plan.rank_weights(2).tolist() == [[0, 0, 0, 0, 0.25, 0.25, 0, 0, 0, 0, 0.75, 0.75, 0, 0, 0, 0]]
    module = LoRAExperts(nn.Linear(12, 7), 8, rank=3, alpha=6.0)
    nn.init.normal_(module.lora_B)
    x = torch.randn(1, 1, 12)
    with dispatching(plan):
        with torch.no_grad():
            loop = module(x)
        gathered = module(x)  # with autograd: the gathered form, from the plan's tensors
    expected = module.base(x[0, 0]) + sum(w * (x[0, 0] @ module.lora_A[e] @ module.lora_B[e]) for e, w in [(5, 0.75), (2, 0.25)]) * module.scale
    assert torch.allclose(loop[0, 0], expected, atol=1e-5) and torch.allclose(gathered[0, 0], expected, atol=1e-5)


def test_router_statistics_can_be_skipped_without_changing_the_logits():
    """generate() skips the per-step router losses/statistics (output_router_stats=False)."""
    model = tiny_model(moe={"num_experts": 4}).eval()
    batch = make_batch(model.config)
    with torch.no_grad():
        full = model(**batch)
        lean = model(**batch, output_router_stats=False)
    assert torch.equal(full.logits, lean.logits) and full.expert_load is not None
    assert lean.expert_load is None and lean.sample_expert_weights is None
    assert "load_balance" in full.loss_terms and "load_balance" not in lean.loss_terms


def test_gate_without_routing_embedding_is_a_clear_error():
    gate = ExpertGate(16, 8, EXPERTS, TOP_K, "token", jitter=0.0)
    with pytest.raises(RuntimeError, match="routing embedding"):
        gate(torch.randn(1, 2, 16), None)


def test_cached_routing_logits_follow_in_place_weight_updates():
    """Decode steps reuse the routing embedding's gate logits; an in-place update of the gate must refresh them."""
    gate = ExpertGate(16, 8, EXPERTS, TOP_K, "sequence", jitter=0.0)
    embedding = torch.randn(1, 8)
    hidden = torch.randn(1, 1, 16)
    with torch.no_grad():
        first, _ = gate(hidden, embedding)
        assert torch.equal(gate(hidden, embedding)[0], first)  # same embedding: the cached projection
        gate.routing_proj.weight.neg_()
        gate.routing_proj.bias.neg_()
        assert torch.equal(gate(hidden, embedding)[0], gate.routing_proj(embedding).topk(TOP_K)[1])


MOE_VARIANTS = {
    "lora": {},
    "ffn": {"expert_type": "ffn"},
    "sequence": {"routing": "sequence", "top_k": 1},
    "lora-one-layer": {"moe_layers": [1]},
    "ffn-other-layer": {"expert_type": "ffn", "moe_layers": [0]},
}


@pytest.mark.parametrize("text_model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", sorted(MOE_VARIANTS))
def test_upcycled_model_with_identical_experts_reproduces_dense_logits(text_model_type, variant):
    dense = tiny_model(text_model_type=text_model_type).eval()
    randomize_adapters(dense)
    batch = make_batch(dense.config)
    with torch.no_grad():
        dense_logits = dense(**batch).logits
        moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, **MOE_VARIANTS[variant]).eval()
        out = moe(**batch)
    assert moe.config.moe["num_experts"] == 4 and out.expert_load is not None
    assert (out.logits - dense_logits).abs().max() < 1e-5
    # the dense model is untouched by upcycling
    with torch.no_grad():
        assert torch.equal(dense(**batch).logits, dense_logits)


def test_upcycled_lora_experts_are_exact_copies_of_the_dense_adapter():
    dense = tiny_model()
    randomize_adapters(dense)
    moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=3)
    dense_loras = {n: m for n, m in dense.named_modules() if isinstance(m, LoRAExperts)}
    moe_loras = {n: m for n, m in moe.named_modules() if isinstance(m, LoRAExperts)}
    assert dense_loras.keys() == moe_loras.keys()
    for name, lora in moe_loras.items():
        for e in range(3):
            assert torch.equal(lora.lora_A[e], dense_loras[name].lora_A[0])
            assert torch.equal(lora.lora_B[e], dense_loras[name].lora_B[0])


def test_perturbation_lets_experts_diverge_and_training_moves_them_apart():
    dense = tiny_model()
    randomize_adapters(dense)
    moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, perturb=1e-3, seed=3)
    lora = next(m for m in moe.modules() if isinstance(m, LoRAExperts))
    assert not torch.equal(lora.lora_B[0], lora.lora_B[1])
    assert (lora.lora_B[0] - lora.lora_B[1]).abs().max() < 1e-2


def test_upcycle_rejects_bad_requests():
    dense = tiny_model()
    moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=2)
    with pytest.raises(ValueError, match="dense model"):
        SkyMoEForConditionalGeneration.upcycle(moe, num_experts=4)
    with pytest.raises(ValueError, match="top_k"):
        SkyMoEForConditionalGeneration.upcycle(dense, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="unknown key 'moe.experts_per_token' under 'moe'"):
        SkyMoEForConditionalGeneration.upcycle(dense, num_experts=2, experts_per_token=1)


@pytest.mark.parametrize(
    "width,out", [(16, 132), (128, 132), (128, 130)], ids=["per-slice-gemms", "grouped-mm-kernel", "unaligned-fallback"]
)
def test_grouped_matmul_matches_per_expert_products_and_gradients(width, out):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, width, generator=g, requires_grad=True)
    weight = torch.randn(4, width, out, generator=g, requires_grad=True)
    offsets = torch.tensor([3, 3, 9, 11], dtype=torch.int32)  # expert 1 gets no rows
    out = grouped_matmul(x, weight, offsets)
    reference = torch.cat([x[0:3] @ weight[0], x[3:9] @ weight[2], x[9:11] @ weight[3]])
    assert torch.allclose(out, reference, atol=1e-4)
    upstream = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (x, weight), upstream)
    expected = torch.autograd.grad(reference, (x, weight), upstream)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected))
    assert grads[1][1].abs().sum() == 0


def test_upcycled_token_routing_starts_at_the_routers_choice_per_prompt():
    """The per-token gate term starts at zero: every token of a prompt goes to its prompt's experts until
    training teaches tokens to depart (a random term scatters each task over all experts from step one)."""
    dense = tiny_model().eval()
    moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, routing="token").eval()
    gates = [m for m in moe.modules() if isinstance(m, ExpertGate)]
    assert gates and all(torch.count_nonzero(g.token_proj.weight) == 0 for g in gates)
    batch = make_batch(moe.config, batch_size=3, text_len=7)
    with torch.no_grad():
        records = moe(**batch).gate_records
    assert len(records) == len(moe.moe_layers())
    for record in records:
        per_prompt = record.topk_index.view(3, -1, record.topk_index.shape[-1])
        assert torch.equal(per_prompt, per_prompt[:, :1].expand_as(per_prompt))


def test_projector_keeps_fan_in_initialisation():
    """transformers' N(0, 0.02) init made the image content too faint for the LLM to learn from."""
    model = tiny_model()
    for layer in (m for m in model.projector.modules() if isinstance(m, nn.Linear)):
        bound = layer.in_features ** -0.5  # PyTorch's kaiming-uniform(a=sqrt(5)) bound
        weight = layer.weight.detach()
        assert float(weight.abs().max()) <= bound
        assert float(weight.std()) == pytest.approx(bound / 3**0.5, rel=0.2)


@pytest.mark.parametrize("expert_type", ["ffn", "lora"])
def test_bf16_autocast_training_step_matches_fp32(expert_type):
    # bf16 autocast (accelerate's mixed_precision bf16) gives bf16 expert rows next to fp32 gate weights
    dense = tiny_model(moe={"dense_lora": False})
    model = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, top_k=2, expert_type=expert_type, perturb=0.01)
    batch = make_batch(model.config, batch_size=4)
    fp32 = model(**batch).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(**batch).loss
    bf16.backward()
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0.0)  # bf16 keeps ~3 significant digits
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameter_groups()["experts"].values())


def test_grouped_mm_under_autocast_computes_in_the_autocast_dtype_like_the_loop():
    # autocast does not cover grouped_mm: without the cast a bf16 step would multiply fp32 there (or fail on GPU)
    x, weight = torch.randn(10, 128), torch.randn(2, 128, 128)
    offsets = torch.tensor([4, 10], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grouped = grouped_matmul(x, weight, offsets)  # 128 wide: the kernel path on CPU
        loop = torch.cat([part @ w for part, w in zip(x.split([4, 6]), weight.unbind(0))])
    assert grouped.dtype == loop.dtype == torch.bfloat16
    torch.testing.assert_close(grouped, loop)


@pytest.mark.parametrize("text_model_type,path", [("llama", "model.layers"), ("gpt2", "transformer.h"), ("gemma3_text", "model.layers")])
def test_decoder_layers_are_found_through_get_decoder(text_model_type, path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from skymoe.model.build import TINY_TEXT
    from skymoe.model.install import find_decoder_layers

    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(text_model_type, vocab_size=32, **TINY_TEXT[text_model_type]))
    assert find_decoder_layers(llm, 2) is llm.get_submodule(path)
    with pytest.raises(TypeError, match="has 2 layers, the config says 3"):
        find_decoder_layers(llm, 3)
    with pytest.raises(TypeError, match=r"no decoder layers found in Sequential: .*\('layers', 'h'\)"):
        find_decoder_layers(nn.Sequential(nn.ModuleList([nn.Linear(2, 2)] * 2)), 2)


@pytest.mark.parametrize("hidden_states", [False, True])
def test_a_compiled_expert_layer_runs_the_plan_of_its_pass_whole_or_split_by_a_graph_break(monkeypatch, hidden_states):
    """compile_decoder_layers compiles a rank-space expert layer whole: its plan is made and read in one graph, one
    graph for every expert layer and sequence length. With output_hidden_states, transformers' capture hook breaks
    that graph inside the layer; the parts traced apart must still read this pass's plan (not none, which would run
    every row through expert 0 alone)."""
    from torch._dynamo.utils import counters

    from skymoe.model.build import compile_decoder_layers
    from skymoe.model.install import MoEDecoderLayer

    monkeypatch.setattr(experts_module, "RANK_SPACE_RATIO", 0)  # the rank-space form at this width
    torch.compiler.reset()
    dense = tiny_model(moe={"dense_lora": False})
    model = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=4, top_k=2, expert_type="lora", perturb=0.01,
                                                   routing="token", moe_layers=[0, 1])
    randomize_adapters(model)
    batches = [make_batch(model.config, batch_size=4, text_len=length) for length in (6, 9)]

    def losses_and_grads():
        out = []
        for batch in batches:
            model.zero_grad()
            loss = model(**batch, use_cache=False, output_hidden_states=hidden_states).loss
            loss.backward()
            out.append((loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
        return out

    eager = losses_and_grads()
    assert compile_decoder_layers(model) == 2
    assert all(layer._compiled_pass is not None for layer in model.modules() if isinstance(layer, MoEDecoderLayer))
    counters.clear()
    compiled = losses_and_grads()
    if not hidden_states:  # both layers and both lengths: one graph, unbroken
        assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
    for (loss, grads), (eager_loss, eager_grads) in zip(compiled, eager):
        torch.testing.assert_close(loss, eager_loss)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    torch.compiler.reset()
