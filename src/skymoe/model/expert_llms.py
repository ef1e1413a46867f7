"""Expert LLMs (``moe.expert_type: llm``, RS-MoE): each expert is a full pass of the language model with its own
LoRA adapter on the shared frozen base, so E experts cost E adapters, not E models. The router's
:class:`~skymoe.model.router.SequenceGate` chooses k of them once per sample.

The k chosen passes of a batch run as one batch of k*B rows, expert-major: row j*B + b is sample b through its
j-th chosen expert (expert-major, so that every tensor reshapes to [k, B, ...] and a ``supervised_positions``
mask repeated k times keeps the same M positions in each of the k blocks). A row reads its expert's own routing
instruction at the ``<route>`` positions, and every token of a row goes to that row's expert
(:meth:`~skymoe.model.install.MoEDecoderLayer._row_plan`). The next-token distribution is the gate-weighted
mixture of the k passes' distributions, in log space:
``log p(y) = logsumexp_j(log g_bj + log_softmax(logits_jb)(y))``. ``output.logits`` holds these
log-probabilities: valid logits whose softmax is the mixture, so the LM loss is the mixture's NLL and
generation (greedy or sampling) draws from the mixture unchanged. A generation cache holds the k*B rows: one
KV cache per (sample, chosen expert), run as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExpertRows:
    """The experts chosen for a batch and the k*B rows that run them."""

    index: torch.Tensor  # [B, k] chosen experts
    log_weight: torch.Tensor  # [B, k] float32 log gate weights

    @classmethod
    def choose(cls, gate, routing_embedding: torch.Tensor, records: list | None) -> "ExpertRows":
        return cls(*gate(routing_embedding, records))

    @property
    def top_k(self) -> int:
        return self.index.shape[1]

    @property
    def row_expert(self) -> torch.Tensor:
        """[k*B] the expert of each row."""
        return self.index.T.reshape(-1)

    def expand(self, value):
        """A per-sample input [B, ...] (2 or more dims) as the k*B rows' input; anything else (None, an int,
        ``logits_to_keep``'s 1-D positions shared by every row) unchanged."""
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return value
        return value.repeat(self.top_k, *([1] * (value.dim() - 1)))

    def instructions(self, prompts: torch.Tensor | None) -> torch.Tensor | None:
        """Per-expert routing instructions [B, E, R, D] -> each row's own expert's, [k*B, R, D]."""
        if prompts is None:
            return None
        samples = torch.arange(self.index.shape[0], device=prompts.device).repeat(self.top_k)
        return prompts[samples, self.row_expert]

    def mix(self, logits: torch.Tensor, logits_to_keep) -> torch.Tensor:
        """Mixture log-probabilities (float32) from the rows' logits: [k*B, S, V] -> [B, S, V]; with a
        boolean positions mask (``logits_to_keep`` [B, S]; the LLM flattened the kept ones) [k*M, V] -> [M, V]."""
        k, vocab = self.top_k, logits.shape[-1]
        log_weight = self.log_weight.T  # [k, B]
        if logits.dim() == 2:
            positions = logits_to_keep.shape[1]
            log_weight = log_weight[:, :, None].expand(-1, -1, positions)[:, logits_to_keep]  # [k, M]
            log_probs = logits.float().log_softmax(-1).view(k, -1, vocab)
            return torch.logsumexp(log_probs + log_weight[..., None], dim=0)
        log_probs = logits.float().log_softmax(-1).view(k, -1, *logits.shape[1:])
        return torch.logsumexp(log_probs + log_weight[:, :, None, None], dim=0)



def beam_rows(beam_index: torch.Tensor, top_k: int) -> torch.Tensor:
    """Beam search's reordering of the N sample rows as the reordering of the k*N cache rows."""
    offsets = torch.arange(top_k, device=beam_index.device) * beam_index.shape[0]
    return (offsets[:, None] + beam_index[None]).reshape(-1)


@torch.no_grad()
def init_expert_prompts_from_text(model, tokenizer, templates: list[str]) -> None:
    """Start expert e's routing instruction with the token embeddings of ``templates[e]`` (RS-MoE's
    theme / objects / relations instructions).

    This is how a template prefixes an expert's instruction: as prompt tuning's initialisation from text
    (Lester et al. 2021), the first n route tokens of expert e begin as the n token embeddings of its text
    (the task/granularity mix and the term from the routing embedding are still added, as to every route
    token), and the rest keep their prompt; training then tunes them like any soft prompt. The template's
    tokens must fit in ``num_route_tokens``. Separate expert LMs (``moe.expert_models``) read their template
    in their own embedding table, the space their instruction is read in.
    """
    router = model.router
    if router is None or router.expert_gate is None or not router.num_route_tokens:
        raise ValueError("moe.expert_templates needs expert LLMs (moe.expert_type: llm) and num_route_tokens > 0")
    base = router.prompt_base
    if len(templates) != base.shape[0]:
        raise ValueError(f"moe.expert_templates has {len(templates)} texts for {base.shape[0]} experts (moe.num_experts)")
    for expert, text in enumerate(templates):
        table = (model.language_model if model.expert_lms is None else model.expert_lms[expert]).get_input_embeddings().weight
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not 0 < len(ids) <= router.num_route_tokens:
            raise ValueError(f"moe.expert_templates[{expert}] = {text!r} is {len(ids)} tokens; its expert's instruction has "
                             f"num_route_tokens = {router.num_route_tokens} (1..{router.num_route_tokens} tokens fit)")
        base[expert, : len(ids)] = table[torch.tensor(ids, device=table.device)].to(base.dtype)
