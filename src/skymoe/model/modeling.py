"""SkyMoEForConditionalGeneration: vision tower + projector + router + an HF causal LM with MoE layers.

Forward: the LLM's input embeddings get the projected visual tokens at the
``<image>`` positions and the router's routing instructions at the ``<route>``
positions (masked_scatter, as LLaVA does). The routing embedding goes down to
the MoE layers as an argument of the LLM's forward, and their gate decisions
come back in a per-call list (``gate_records``), as transformers' output
recorders collect router logits: no state is kept on the model between or
during calls, so one model can serve concurrent forwards. In cached generation
the routing embedding computed at prefill is carried in the model kwargs, so
routing is decided once per sequence, and ``generate(..., output_routing=True)``
returns that prefill's decision with the tokens. Expert LLMs run the k experts
chosen per sample as k*B rows of the LLM and mix their distributions
(:mod:`skymoe.model.expert_llms`); with ``moe.expert_models`` each row runs
through its expert's own LM instead (:mod:`skymoe.model.expert_models`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from skymoe.model.attention import causal_lm_from_config
from skymoe.model.box_head import BoxHead, grid_heads_pass
from skymoe.model.configuration import SkyMoEConfig
from skymoe.model.decoding import SkyMoEGenerationMixin
from skymoe.model.evidence import ZeroStartLinear
from skymoe.model.experts import FFNExperts, LoRAExperts
from skymoe.model.dispatch import keeping_plan
from skymoe.model.expert_llms import ExpertRows
from skymoe.model.expert_models import ExpertLMs, run_expert_lms
from skymoe.model.grid_reader import instruction_has_box
from skymoe.model.install import MoEDecoderLayer, install_experts
from skymoe.model.last_hidden import install_last_hidden_hook, keeping_last_hidden_state
from skymoe.model.losses import IGNORE_INDEX, auxiliary_terms, location_smoothed_ce, weighted_total
from skymoe.model.outputs import RoutingReadout, SkyMoEOutput
from skymoe.model.precision import own_precision
from skymoe.model.projector import FanInLinear, build_projector
from skymoe.model.router import ExpertGate, Router, expert_load, sample_expert_weights
from skymoe.model.vision import build_vision_tower, without_autocast


class SkyMoEPreTrainedModel(PreTrainedModel):
    config_class = SkyMoEConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # transformers' init functions skip weights already loaded from a checkpoint.
        if isinstance(module, (LoRAExperts, FanInLinear)):
            module.reset_parameters()
        elif isinstance(module, BoxHead):
            init.zeros_(module.cell_position)
        elif isinstance(module, ZeroStartLinear):  # e.g. a model saved before the evidence head's zoom_out
            super()._init_weights(module)  # drawn as any linear layer is, so later draws stay what a seed gave
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Router) and module.num_route_tokens:
            for prompts in (module.prompt_base, module.task_prompts, module.granularity_prompts):
                init.normal_(prompts, std=0.02)
        elif not isinstance(module, FFNExperts):  # FFN experts are built as copies of the initialised MLP
            super()._init_weights(module)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers: int = 1):
        # A checkpointed decoder layer is recomputed in backward, after its MoE wrapper returned: the recompute
        # must run under the dispatch plan of the forward (see dispatch.keeping_plan).
        from torch.utils.checkpoint import checkpoint

        func = keeping_plan(gradient_checkpointing_func or checkpoint)
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func=func, every_n_layers=every_n_layers)


class SkyMoEForConditionalGeneration(SkyMoEPreTrainedModel, SkyMoEGenerationMixin):
    def __init__(self, config: SkyMoEConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config, config.vision_feature_layer, config.image_size)
        self.language_model = causal_lm_from_config(config.text_config)
        config.text_config = self.language_model.config  # one object, so resizing updates the saved config
        install_last_hidden_hook(self.language_model.get_decoder())
        text_size = config.text_config.hidden_size
        self.projector = build_projector(config.projector_settings, self.vision_tower.hidden_size, text_size)
        self.router = None
        if config.has_router:
            moe = config.moe_settings
            expert_llms = moe.num_experts if moe.expert_type == "llm" else 0  # the router chooses them (expert_llms.py)
            self.router = Router(text_size, config.router_settings.hidden_size, config.num_route_tokens, expert_llms, moe.top_k,
                                 uniform_gate=moe.gate == "uniform")
        self.box_head = None
        if config.box_head["enabled"]:
            if config.location_token_start is None:
                raise ValueError("box_head.enabled writes boxes as location tokens, but the tokenizer has none "
                                 "(build the model with a SkyMoE tokenizer: skymoe.data.tokenizer)")
            self.box_head = BoxHead(self.vision_tower.hidden_size, text_size, math.isqrt(config.num_image_tokens),
                                    config.box_head["hidden_size"], config.text_config.vocab_size, config.location_token_start,
                                    config.box_head["evidence"], config.box_head["zoom"])
        self.expert_lms = None
        if config.moe["expert_models"]:  # separate expert LMs: the base LLM embeds the router's input and runs no pass
            self.expert_lms = ExpertLMs(config.expert_text_configs, config.moe["num_experts"])
        else:
            install_experts(self.language_model, config)
        if config.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.post_init()
        # Token routing starts as the router's task-aware choice (a zero per-token term) and learns how tokens depart
        # from it; a random per-token term would scatter every task over every expert from the first step. Set here:
        # the LLM's own weight init (transformers applies it to the LLM's subtree) would overwrite it in _init_weights.
        for gate in self.modules():
            if isinstance(gate, ExpertGate) and gate.token_proj is not None:
                init.zeros_(gate.token_proj.weight)
        if self.router is not None and self.router.expert_prompt_proj is not None:  # upcycled expert LLMs start identical
            init.zeros_(self.router.expert_prompt_proj.weight)
            init.zeros_(self.router.expert_prompt_proj.bias)
        if self.generation_config is not None:
            # A generated placeholder would have no image/routing content to fill it.
            self.generation_config.suppress_tokens = [config.image_token_id, config.route_token_id]

    # ---- HF plumbing ----------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_vision:  # frozen BatchNorm/dropout stay in inference mode
            self.vision_tower.eval()
        return self

    @property
    def num_experts(self) -> int:
        return self.config.moe["num_experts"]

    @property
    def has_expert_llms(self) -> bool:
        return bool(self.num_experts) and self.config.moe["expert_type"] == "llm"

    def moe_layers(self) -> list[MoEDecoderLayer]:
        return [m for m in self.modules() if isinstance(m, MoEDecoderLayer)]

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Parameters by module group, for per-group learning rates and freezing.

        ``vision``, ``projector``, ``router`` (router + per-layer gates), ``experts`` (LoRA A/B,
        FFN expert weights, whole expert LMs), ``adapter`` (the dense model's LoRA), ``box_head`` and ``lm``
        (everything else in the LLM).
        """
        names = ("vision", "projector", "router", "experts", "adapter", "box_head", "lm")
        groups: dict[str, dict[str, nn.Parameter]] = {k: {} for k in names}
        expert_names = set()
        for module_name, module in self.named_modules():
            if isinstance(module, (LoRAExperts, FFNExperts)):
                expert_names |= {f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)}
        for name, param in self.named_parameters():
            if name.startswith("vision_tower."):
                group = "vision"
            elif name.startswith("projector."):
                group = "projector"
            elif name.startswith("box_head."):
                group = "box_head"
            elif name.startswith("router.") or ".gate." in name:
                group = "router"
            elif name in expert_names or name.startswith("expert_lms."):
                group = "experts" if self.num_experts else "adapter"
            else:
                group = "lm"
            groups[group][name] = param
        return groups

    # ---- pieces of the forward ------------------------------------------------------------------
    def get_image_features(self, pixel_values=None, instruction_embeds=None, instruction_mask=None, vision_features=None) -> torch.Tensor:
        """Visual tokens [B, N, D]; ``vision_features`` (the tower's output, e.g. from a feature cache) skips the tower."""
        if vision_features is None:
            vision_features = self.read_tower(pixel_values)
        return self.projector(vision_features.to(self.dtype), instruction_embeds, instruction_mask)

    def read_tower(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's features of ``pixel_values``. A frozen tower reads with autocast off, in the model's dtype: its
        features then equal the feature cache's (made with autocast off too), so a bf16 step and evaluation see the
        same features whether a batch came as pixels or from the cache; on a GPU too, where a cache-off bf16 step
        pays for a float32 tower."""
        pixels = pixel_values.to(self.dtype)
        if not self.config.freeze_vision:
            return self.vision_tower(pixels)
        with without_autocast(pixels.device.type):
            return self.vision_tower(pixels)

    def _scatter(self, embeds, input_ids, token_id, values, what: str):
        mask = input_ids == token_id
        expected = int(mask.sum())
        if expected != values.shape[0] * values.shape[1]:
            raise ValueError(
                f"{what}: the input has {expected} placeholder tokens but the model made "
                f"{values.shape[0]} x {values.shape[1]}; build the processor with SkyMoEProcessor.from_model_config"
            )
        # index_put rather than masked_scatter: the same values in the same (row-major) places, and its backward
        # gathers, where masked_scatter's runs a single-threaded masked_select
        return embeds.index_put(mask.nonzero(as_tuple=True), values.reshape(-1, values.shape[-1]).to(embeds.dtype))

    def _zoom_features(self, pixels, input_ids, instruction_mask):
        """The tower's features of the zooms of the rows whose instruction names a box (the others' pixels are
        filler), read without gradient: the evidence head detaches them. None when no row names a box."""
        boxed = instruction_has_box(input_ids, instruction_mask, self.config.location_token_start)
        if not bool(boxed.any()):
            return None
        with torch.no_grad():
            read = self.read_tower(pixels[boxed])
        features = read.new_zeros(len(pixels), *read.shape[1:])
        features[boxed] = read
        return features

    def _instruction_mask(self, input_ids, attention_mask, instruction_mask, labels):
        if instruction_mask is None:  # fall back to every real text token but the answer's (its box is no prompt's)
            instruction_mask = (input_ids != self.config.image_token_id) & (input_ids != self.config.route_token_id)
            if attention_mask is not None:
                instruction_mask &= attention_mask.bool()
            if labels is not None:
                instruction_mask &= labels == IGNORE_INDEX
        elif instruction_mask.shape[1] < input_ids.shape[1]:  # uncached generation appends tokens on the right
            instruction_mask = F.pad(instruction_mask, (0, input_ids.shape[1] - instruction_mask.shape[1]))
        return instruction_mask[:, -input_ids.shape[1] :]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        task_labels: torch.LongTensor | None = None,
        granularity_labels: torch.LongTensor | None = None,
        routing_embedding: torch.Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_router_stats: bool = True,
        routing_record: list | None = None,
        box_plan=None,
        box_progress: torch.Tensor | None = None,
        evidence_cells: torch.Tensor | None = None,
        zoom_pixel_values: torch.FloatTensor | None = None,
        zoom_vision_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> SkyMoEOutput:
        """``output_router_stats``: keep the gate decisions (aux losses, ``expert_load``, ``gate_records``).
        ``routing_record``: a list that receives this pass's router read-out (:class:`RoutingReadout`) when the
        router ran; ``generate(..., output_routing=True)`` passes one to return the prefill's routing.
        ``box_plan``, ``box_progress``: a box head's generation state (set by ``prepare_inputs_for_generation``).
        ``evidence_cells``: the evidence head's per-cell targets in training (:func:`skymoe.model.evidence.cell_targets`).
        ``zoom_pixel_values``, ``zoom_vision_features``: each row's zoom of its instruction's box, as pixels or as the
        tower's features (:mod:`skymoe.data.zoom`), for an evidence head with ``box_head.zoom``."""
        use_box_head = self.box_head is not None and (labels is not None or box_progress is not None)
        embeds = self.get_input_embeddings()(input_ids)
        instruction_mask = self._instruction_mask(input_ids, attention_mask, instruction_mask, labels)
        image_tokens = None
        has_image = pixel_values is not None or vision_features is not None
        if has_image and (input_ids == self.config.image_token_id).any():
            if self.box_head is not None and vision_features is None:  # the heads read the tower's features: run it once
                vision_features = self.read_tower(pixel_values)
            image_tokens = self.get_image_features(pixel_values, embeds, instruction_mask, vision_features)
            embeds = self._scatter(embeds, input_ids, self.config.image_token_id, image_tokens, "image tokens")
            if zoom_vision_features is None and zoom_pixel_values is not None:  # the prefill's zoom: the tower reads it once
                zoom_vision_features = self._zoom_features(zoom_pixel_values, input_ids, instruction_mask)

        router_out = prompts = None
        has_prompt = image_tokens is not None or (input_ids == self.config.route_token_id).any()
        if self.router is not None and (routing_embedding is None or has_prompt):
            router_out = self.router(embeds, instruction_mask, image_tokens)
            routing_embedding, prompts = router_out.routing_embedding, router_out.prompts

        records = [] if output_router_stats else None
        ids, rows = input_ids, None
        llm_inputs = {"attention_mask": attention_mask, "position_ids": position_ids, "logits_to_keep": logits_to_keep}
        if self.has_expert_llms:  # the k chosen experts' passes, as k*B rows (see expert_llms.py)
            rows = ExpertRows.choose(self.router.expert_gate, routing_embedding, records)
            ids, embeds, prompts = rows.expand(input_ids), rows.expand(embeds), rows.instructions(prompts)
            llm_inputs = {k: rows.expand(v) for k, v in llm_inputs.items()}
            if self.expert_lms is None:  # adapter experts: the MoE layers dispatch each row to its expert
                kwargs["row_expert"] = rows.row_expert
        elif self.num_experts:  # the MoE layers' inputs (see install.py)
            token_mask = attention_mask if attention_mask is not None and attention_mask.shape == input_ids.shape else None
            kwargs.update(routing_embedding=routing_embedding, routing_mask=token_mask, gate_records=records)
        if prompts is not None:
            embeds = self._scatter(embeds, ids, self.config.route_token_id, prompts, "route tokens")
        if self.expert_lms is not None:  # each row through its expert's own LM, text embedded by that LM
            text = (ids != self.config.image_token_id) & (ids != self.config.route_token_id)
            outputs = run_expert_lms(self.expert_lms, rows.row_expert, ids, embeds, text, cache, use_cache, llm_inputs, **kwargs)
        else:
            with keeping_last_hidden_state() as last_hidden:  # the grid heads read it
                outputs = self.language_model(inputs_embeds=embeds, cache=cache, use_cache=use_cache, **llm_inputs, **kwargs)
        logits = outputs.logits if rows is None else rows.mix(outputs.logits, logits_to_keep)
        head_terms = {}
        if use_box_head:
            features = vision_features if image_tokens is not None else None
            answers = logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else (
                None if labels is None else self.supervised_positions(labels))
            logits, head_terms, box_plan = grid_heads_pass(
                self.box_head, self.get_output_embeddings(), last_hidden[-1], logits, features,
                (input_ids, instruction_mask), answers,
                labels, evidence_cells, box_plan, box_progress, self.config.location_token_start, zoom_vision_features)
        elif self.box_head is not None and self.box_head.evidence is not None and image_tokens is not None:
            # a scoring pass (label likelihoods): every position reads the evidence, as every answer token did in training
            with own_precision(self.box_head) as cast:
                hidden = self.box_head.evidence(cast(vision_features), input_ids, instruction_mask, cast(zoom_vision_features))[1]
                logits = logits + self.get_output_embeddings()(hidden).to(logits.dtype)[:, None]
        targets = self._targets(labels, logits_to_keep)
        output = self._output(outputs, logits, targets, router_out, routing_embedding, records, task_labels, granularity_labels,
                              input_ids.shape[0], head_terms)
        output.box_plan = box_plan if use_box_head else None
        if routing_record is not None and router_out is not None:
            routing_record.append(RoutingReadout(output.task_logits, output.granularity_logits, output.sample_expert_weights))
        return output

    @staticmethod
    def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
        """[B, S] bool: the positions whose logits predict a supervised label (for ``logits_to_keep``).

        Training passes it so the output head (a large share of a small LLM's compute) runs on the
        answer positions only; ``logits`` is then [M, V] for the M kept positions.
        """
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        return keep

    @staticmethod
    def _targets(labels, logits_to_keep):
        """The labels the kept logits predict, flat: next-token labels of every position, or of the kept ones."""
        if labels is None:
            return None
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            return labels[:, 1:][logits_to_keep[:, :-1]]
        if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("with labels, logits_to_keep must be 0 (all positions) or a supervised_positions() mask")
        return labels[:, 1:].reshape(-1)

    def _output(self, outputs, logits, targets, router_out, routing_embedding, records, task_labels, granularity_labels, batch_size,
                head_terms):
        terms = {**auxiliary_terms(self.config, records, router_out, routing_embedding, task_labels, granularity_labels),
                 **head_terms}
        loss = None
        if targets is not None:
            kept = logits if logits.dim() == 2 else logits[:, :-1]  # a supervised_positions() mask flattens them
            lm = location_smoothed_ce(kept.float().reshape(-1, logits.shape[-1]), targets, self.config.location_token_start,
                                      self.config.location_sigma)
            terms = {"lm": lm, **terms}
            loss = weighted_total(self.config, terms)
        return SkyMoEOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            loss_terms=terms,
            task_logits=router_out.task_logits if router_out is not None else None,
            granularity_logits=router_out.granularity_logits if router_out is not None else None,
            routing_embedding=routing_embedding,
            expert_load=expert_load(records, self.num_experts) if records else None,
            sample_expert_weights=sample_expert_weights(records, self.num_experts, batch_size) if records else None,
            gate_records=tuple(records) if records else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # ---- upcycling ------------------------------------------------------------------------------
    @classmethod
    def upcycle(cls, dense_model: "SkyMoEForConditionalGeneration", num_experts: int, tokenizer=None, **moe_kwargs):
        from skymoe.model.upcycle import upcycle

        return upcycle(cls, dense_model, num_experts, tokenizer=tokenizer, **moe_kwargs)


def register_auto_classes() -> None:
    from transformers import AutoModel, AutoModelForImageTextToText

    for auto in (AutoModel, AutoModelForImageTextToText):
        auto.register(SkyMoEConfig, SkyMoEForConditionalGeneration, exist_ok=True)
