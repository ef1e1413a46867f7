"""Projectors from vision features to LLM-sized visual tokens: LLaVA's mlp2x_gelu, a query resampler and
InstructBLIP's instruction-aware Q-Former."""
from __future__ import annotations

import math

import torch
from torch import nn

from skymoe.model.configuration import ProjectorSettings
from skymoe.model.location import grid_code
from skymoe.model.precision import in_own_precision


class FanInLinear(nn.Linear):
    """A projector layer that keeps PyTorch's fan-in scaled initialisation (the model's ``_init_weights`` resets it).

    transformers' N(0, 0.02) init shrinks a 2368 -> 128 -> 128 projection's output ~2.5x below the fan-in
    init's; next to the position code and the text embeddings the image content is then too faint for
    the LLM to pick up: a demo-sized model trained on it answered every scene with one class where the
    fan-in init learnt 0.5 accuracy at the same step (docs/LEARNING.md).
    """


class MLPProjector(nn.Module):
    """LLaVA-1.5 ``mlp2x_gelu``: one visual token per patch.

    Options: ``norm`` (LayerNorm on the features first) and ``position_code`` (the code of each
    token's centre on its square grid is added, see :mod:`skymoe.model.location`).
    """

    def __init__(self, vision_size: int, text_size: int, settings: ProjectorSettings | None = None):
        super().__init__()
        settings = settings or ProjectorSettings()
        self.norm = nn.LayerNorm(vision_size) if settings.norm else None
        self.net = nn.Sequential(FanInLinear(vision_size, text_size), nn.GELU(), FanInLinear(text_size, text_size))
        self.position_code = settings.position_code
        self._codes: dict[tuple, torch.Tensor] = {}  # (tokens, device, dtype) -> code; derived, never saved

    @in_own_precision
    def forward(self, features: torch.Tensor, instruction=None, instruction_mask=None) -> torch.Tensor:
        tokens = self.net(self.norm(features) if self.norm is not None else features)
        if self.position_code:
            tokens = tokens + self._code(tokens)
        return tokens

    def _code(self, tokens: torch.Tensor) -> torch.Tensor:
        key = (tokens.shape[1], tokens.device, tokens.dtype)
        if key not in self._codes:
            grid = math.isqrt(tokens.shape[1])
            if grid * grid != tokens.shape[1]:
                raise ValueError(f"position_code needs a square grid of visual tokens, got {tokens.shape[1]}")
            self._codes[key] = grid_code(grid, tokens.shape[-1]).to(tokens.device, tokens.dtype)
        return self._codes[key]


def feed_forward(size: int) -> nn.Sequential:
    return nn.Sequential(FanInLinear(size, 4 * size), nn.GELU(), FanInLinear(4 * size, size))


class ResamplerBlock(nn.Module):
    """Pre-norm block over learned queries: self-attention over [queries; instruction], cross-attention to the
    image (unless ``cross_attention`` is off), FFN.

    ``context_ffn`` makes the instruction part of the sequence, as in InstructBLIP's Q-Former: the self-attention
    updates its tokens too and they have their own FFN, so the next block's queries read an instruction that has
    read the queries. Without it (the resampler) the instruction is the same keys and values in every block.
    """

    def __init__(self, size: int, num_heads: int, cross_attention: bool = True, context_ffn: bool = False):
        super().__init__()
        self.norm_self = nn.LayerNorm(size)
        self.self_attn = nn.MultiheadAttention(size, num_heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(size) if cross_attention else None
        self.cross_attn = nn.MultiheadAttention(size, num_heads, batch_first=True) if cross_attention else None
        self.norm_ffn = nn.LayerNorm(size)
        self.ffn = feed_forward(size)
        self.norm_context_ffn = nn.LayerNorm(size) if context_ffn else None
        self.context_ffn = feed_forward(size) if context_ffn else None

    def forward(self, queries, image, context=None, context_padding=None):
        """The updated queries and context (the context as given without ``context_ffn``)."""
        num_queries = queries.shape[1]
        tokens = queries if context is None else torch.cat([queries, context], dim=1)
        padding = None
        if context is not None:
            query_padding = context_padding.new_zeros(queries.shape[:2])
            padding = torch.cat([query_padding, context_padding], dim=1)
        normed = self.norm_self(tokens)
        attended, _ = self.self_attn(normed, normed, normed, key_padding_mask=padding, need_weights=False)
        queries = queries + attended[:, :num_queries]
        if self.context_ffn is not None:
            context = context + attended[:, num_queries:]
            context = context + self.context_ffn(self.norm_context_ffn(context))
        if self.cross_attn is not None:
            normed = self.norm_cross(queries)
            attended, _ = self.cross_attn(normed, image, image, need_weights=False)
            queries = queries + attended
        return queries + self.ffn(self.norm_ffn(queries)), context


class ResamplerProjector(nn.Module):
    """N learned queries read the image by cross-attention: the ``resampler`` and InstructBLIP's ``qformer``.

    The queries also self-attend to the instruction's LLM input embeddings when ``instruction_aware`` (the
    resampler's option; a Q-Former always is), so what they extract depends on the question. A Q-Former carries
    the instruction through its blocks (ResamplerBlock's ``context_ffn``) and cross-attends to the image in
    blocks 0, k, 2k.. only (k = ``cross_attention_every``); the resampler in every block. The blocks run at
    ``hidden_size`` (default: the LLM's width); only the queries come out, projected to the LLM's width.
    """

    def __init__(self, vision_size: int, text_size: int, settings: ProjectorSettings):
        super().__init__()
        qformer = settings.type == "qformer"
        self.instruction_aware = qformer or settings.instruction_aware
        size = settings.hidden_size or text_size
        every = settings.cross_attention_every if qformer else 1
        self.norm = nn.LayerNorm(vision_size) if settings.norm else None
        self.queries = nn.Parameter(torch.randn(settings.num_queries, size) * 0.02)
        self.image_in = FanInLinear(vision_size, size)
        self.instruction_in = FanInLinear(text_size, size) if self.instruction_aware and size != text_size else None
        # The last block's instruction tokens feed nothing: a context FFN there would get no gradient (DDP fails).
        last = settings.num_layers - 1
        self.blocks = nn.ModuleList(
            ResamplerBlock(size, settings.num_heads, cross_attention=i % every == 0, context_ffn=qformer and i < last)
            for i in range(settings.num_layers)
        )
        self.norm_out = nn.LayerNorm(size)
        self.out = FanInLinear(size, text_size)

    @in_own_precision
    def forward(self, features, instruction=None, instruction_mask=None) -> torch.Tensor:
        image = self.image_in(self.norm(features) if self.norm is not None else features)
        # A copy, not an expand: a view of a parameter made under no_grad still requires grad, which breaks
        # module hooks that track gradients (FlopCounterMode in `skymoe model summary`).
        queries = self.queries.unsqueeze(0).repeat(features.shape[0], 1, 1)
        context = padding = None
        if self.instruction_aware:
            if instruction is None:
                raise ValueError("an instruction-aware resampler or Q-Former needs the instruction embeddings")
            context = instruction if self.instruction_in is None else self.instruction_in(instruction)
            padding = ~instruction_mask.bool()
        for block in self.blocks:
            queries, context = block(queries, image, context, padding)
        return self.out(self.norm_out(queries))


def build_projector(settings: ProjectorSettings, vision_size: int, text_size: int) -> nn.Module:
    if settings.type == "mlp2x_gelu":
        return MLPProjector(vision_size, text_size, settings)
    return ResamplerProjector(vision_size, text_size, settings)


def count_visual_tokens(settings: ProjectorSettings, num_patches: int) -> int:
    return num_patches if settings.type == "mlp2x_gelu" else settings.num_queries
