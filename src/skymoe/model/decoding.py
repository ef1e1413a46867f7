"""How ``generate()`` steps a SkyMoE model: what it carries from one step to the next.

transformers' generation loop calls these hooks around each forward. SkyMoE carries two things per sequence that
its forward computes once and reuses: the routing embedding decided at the prefill (routing is per sequence), and,
with a box head, the planned box and the grid's cells (:mod:`skymoe.model.box_head`). Expert LLMs keep k cache rows
per sample row, which beam search must reorder together (:mod:`skymoe.model.expert_llms`).
"""
from __future__ import annotations

import torch
from transformers import GenerationMixin

from skymoe.model.box_head import box_progress
from skymoe.model.expert_llms import beam_rows
from skymoe.model.outputs import RoutingReadout, SkyMoEGenerateOutput


class SkyMoEGenerationMixin(GenerationMixin):
    def generate(self, *args, output_routing: bool = False, **kwargs):
        """transformers' generate; with ``output_routing`` a :class:`SkyMoEGenerateOutput` whose ``routing``
        is the router's decision at the prefill (read from that pass: no second prefill)."""
        beams = kwargs.get("num_beams") or (kwargs.get("generation_config") or self.generation_config).num_beams or 1
        if self.box_head is not None and beams > 1:
            raise ValueError("a model with a box head generates greedily or by sampling: its planned box is carried "
                             "per row, which beam search reorders; set num_beams=1")
        if not output_routing:
            return super().generate(*args, **kwargs)
        readouts: list[RoutingReadout] = []
        kwargs["return_dict_in_generate"] = True
        result = super().generate(*args, routing_record=readouts, **kwargs)
        return SkyMoEGenerateOutput(**result, routing=readouts[0] if readouts else None)

    def prepare_inputs_for_generation(self, input_ids, *args, is_first_iteration: bool | None = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, is_first_iteration=is_first_iteration, **kwargs)
        if self.box_head is not None:  # read from every token generated so far, before the cache trims input_ids
            plan = kwargs.get("box_plan")
            prompt_length = plan.prompt_length if plan is not None else input_ids.shape[1]
            model_inputs["box_progress"] = box_progress(input_ids, prompt_length, self.config.location_token_start)
        # generate() returns only tokens: gate statistics are kept only for the prefill, and only when a
        # routing_record asks for the router's read-out.
        model_inputs["output_router_stats"] = bool(is_first_iteration) and model_inputs.get("routing_record") is not None
        return model_inputs

    def _reorder_cache(self, cache, beam_index: torch.Tensor):
        """Beam search: expert LLMs keep k cache rows per sample row (see expert_llms.py)."""
        cache.reorder_cache(beam_rows(beam_index, self.config.moe["top_k"]) if self.has_expert_llms else beam_index)
        return cache

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)
        if outputs.routing_embedding is not None:  # decided at prefill, reused for every new token
            model_kwargs["routing_embedding"] = outputs.routing_embedding
        if outputs.box_plan is not None:
            model_kwargs["box_plan"] = outputs.box_plan
        return model_kwargs
