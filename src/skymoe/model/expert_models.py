"""Expert LLMs as separate small LMs (``moe.expert_models``): the second form of RS-MoE's expert LLMs.

Instead of E adapters on the shared base LLM, expert e is its own causal LM, read from a local folder when
stage 2 upcycles. The expert LMs are trained whole (the ``experts`` parameter group): the simpler form, and
a small LM is what one names here. They share the base LLM's hidden size (the visual tokens and routing
instructions are made in that space) and its tokenizer (one id sequence feeds every expert, and the mixture
adds their distributions token by token): both are checked when the folders are read.

Rows of the k*B expert-major batch (:mod:`skymoe.model.expert_llms`) run through their own expert's LM:
text tokens are embedded by that LM's own table, image tokens and the expert's routing instruction are
scattered as for adapter experts. A generation cache is an :class:`ExpertCaches`: one ``DynamicCache`` per
expert LM holding that expert's rows.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from skymoe.errors import ConfigError
from skymoe.model.attention import causal_lm_from_config


class ExpertLMs(nn.ModuleList):
    """The expert LMs, built from the configs kept in ``SkyMoEConfig.expert_text_configs`` (weights come later)."""

    def __init__(self, text_configs: list[dict] | None, num_experts: int):
        if len(text_configs or ()) != num_experts:
            raise ValueError(f"moe.expert_models needs expert_text_configs, one per expert ({num_experts}): stage 2 reads "
                             "them from the folders when it upcycles a dense model (read_expert_configs)")
        lms = []
        for config in text_configs:
            config = dict(config)
            lms.append(causal_lm_from_config(AutoConfig.for_model(config.pop("model_type"), **config)))
        super().__init__(lms)

    @property
    def all_tied_weights_keys(self) -> dict[str, str]:
        """The LMs' tied weights (an LM's head tied to its embeddings): transformers gathers these from a model's
        children only, and saves, loads and ties by them."""
        return {f"{i}.{k}": f"{i}.{v}" for i, lm in enumerate(self) for k, v in lm.all_tied_weights_keys.items()}


def read_expert_configs(folders: list[str], text_config, tokenizer) -> list[dict]:
    """Each folder's LM config (vocabulary grown to the base's, as the base LLM's is grown by SkyMoE's tokens), after
    checking its hidden size and tokenizer against the base LLM's and the stage-1 ``tokenizer``."""
    configs = []
    for index, folder in enumerate(folders):
        field = f"model.moe.expert_models[{index}]"
        try:
            config = AutoConfig.from_pretrained(folder).get_text_config()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder}: not a causal-LM folder ({' '.join(str(exc).split())})", field=field) from None
        if config.hidden_size != text_config.hidden_size:
            raise ConfigError(f"{folder}: the expert LM's hidden size is {config.hidden_size}, the base LLM's "
                              f"{text_config.hidden_size}; an expert LM reads the visual tokens and routing instructions "
                              f"made in the base's space, so they must be equal", field=field)
        check_tokenizer(folder, tokenizer, field)
        config.vocab_size = text_config.vocab_size
        configs.append(config.to_dict())
    return configs


def check_tokenizer(folder: str, tokenizer, field: str) -> None:
    """The folder's tokenizer, with SkyMoE's tokens added as stage 1 adds them to a pretrained LLM's, must be the
    stage-1 ``tokenizer``: the same token at every id."""
    from transformers import AutoTokenizer

    from skymoe.data.tokenizer import add_skymoe_tokens

    try:
        own = add_skymoe_tokens(AutoTokenizer.from_pretrained(folder))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder}: no tokenizer to check against the base's ({' '.join(str(exc).split())})", field=field) from None
    base_vocab, own_vocab = tokenizer.get_vocab(), own.get_vocab()
    if own_vocab == base_vocab:
        return
    by_id = [{i: t for t, i in vocab.items()} for vocab in (base_vocab, own_vocab)]
    first = min(i for i in by_id[0].keys() | by_id[1].keys() if by_id[0].get(i) != by_id[1].get(i))
    raise ConfigError(f"{folder}: the expert LM's tokenizer differs from the base LLM's: {len(own_vocab)} tokens against "
                      f"{len(base_vocab)} (with SkyMoE's tokens added); first difference at id {first}: "
                      f"{by_id[1].get(first)!r} against the base's {by_id[0].get(first)!r}", field=field)


@torch.no_grad()
def load_expert_weights(model, folders: list[str]) -> None:
    """Each expert LM's pretrained weights from its folder; the rows of the tokens SkyMoE added to the vocabulary
    are the base LLM's, so that ``<image>``, ``<route>`` and the location tokens start as they are in the base."""
    from skymoe.model.build import load_language_model

    base_tables = _vocabulary_tables(model.language_model)
    for lm, folder in zip(model.expert_lms, folders):
        vocab = load_language_model(lm, folder)
        for table, base in zip(_vocabulary_tables(lm), base_tables):
            table[vocab:].copy_(base[vocab:])


def _vocabulary_tables(lm) -> list[torch.Tensor]:
    return [lm.get_input_embeddings().weight, lm.get_output_embeddings().weight]


class ExpertCaches:
    """The generation cache of the expert LMs: one ``DynamicCache`` per expert LM holding its rows, in row order.

    generate() creates one cache for the top model; the first forward replaces it by this object, which
    generate then carries (it reads ``get_seq_length`` and beam search reorders it through ``_reorder_cache``).
    """

    is_croppable = False  # generate's deferred stop check may only skip a rollback it cannot do

    def __init__(self, expert_lms: nn.ModuleList):
        self.caches = [DynamicCache(config=lm.config) for lm in expert_lms]
        self.row_expert: torch.Tensor | None = None  # set by each forward: the rows' experts

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(cache.get_seq_length(layer_idx) for cache in self.caches)

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """New row r takes old row ``rows[r]``. Beams of one sample share its experts, so each expert's rows
        move among themselves: expert e's cache is reordered by the positions of its old rows in its cache."""
        expert = self.row_expert
        if not torch.equal(expert[rows], expert):
            raise RuntimeError("a beam reordering moved rows between expert LMs; the beams of a sample must share its experts")
        position = torch.empty_like(rows)  # of each row in its expert's cache
        for e, cache in enumerate(self.caches):
            own = expert == e
            if own.any():
                position[own] = torch.arange(int(own.sum()), device=rows.device)
                cache.reorder_cache(position[rows[own]])


def run_expert_lms(expert_lms: nn.ModuleList, row_expert: torch.Tensor, ids: torch.Tensor, embeds: torch.Tensor,
                   text: torch.Tensor, cache, use_cache, llm_inputs: dict, **kwargs) -> CausalLMOutputWithPast:
    """The k*B rows (``ids``, ``embeds`` [rows, S, D] with image tokens and instructions scattered, ``text`` [rows, S]
    the positions each expert embeds itself) through their experts' LMs; logits back in row order."""
    if use_cache is not False:
        if not isinstance(cache, ExpertCaches):
            if cache is not None and cache.get_seq_length():
                raise ValueError("expert LMs (moe.expert_models) continue only their own ExpertCaches, not another cache")
            cache = ExpertCaches(expert_lms)
        cache.row_expert = row_expert
    keep = llm_inputs["logits_to_keep"]
    owner = row_expert  # the expert of each logits row: a boolean logits_to_keep flattens the rows' kept positions
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
        owner = row_expert.repeat_interleave(keep.sum(1))
    logits = None
    for e, lm in enumerate(expert_lms):
        own = row_expert == e
        if not own.any():
            continue
        own_embeds = torch.where(text[own, :, None], lm.get_input_embeddings()(ids[own]), embeds[own])
        inputs = {k: v[own] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v for k, v in llm_inputs.items()}
        out = lm(inputs_embeds=own_embeds, cache=cache.caches[e] if cache is not None else None, use_cache=use_cache,
                 **inputs, **kwargs).logits
        if logits is None:
            logits = out.new_empty(owner.shape[0], *out.shape[1:])
        logits[owner == e] = out
    return CausalLMOutputWithPast(logits=logits, cache=cache)
