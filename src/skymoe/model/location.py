"""One coordinate code for "where": visual tokens' grid positions and the location tokens of boxes.

A small LLM trained from scratch must learn to point: read a box in the question
(``<x_12><y_40>...``) and attend to the visual tokens there, or attend to an
object and write its box. Both are easy when a visual token's position and a
location token share one code: attention matches the codes by a dot product and
the answer copies the attended position. So the projector adds to each visual
token the code of its centre (``ProjectorSettings.position_code``) and the
location tokens' input and output embeddings start as the code of their value
(:func:`init_location_embeddings`); the LLM refines both in training. Attending
to an object's visual tokens then puts the code of its x and y in the residual
stream, and the output head already scores ``<x_v>``/``<y_v>`` by that code.

The code of a value v on the canonical 0-100 box scale is [sin(πfv/100), cos(πfv/100)]
for f = 1..D/4 (nearby values have similar codes, so a near miss is a small
error), in the first half of the D dims for x and the second half for y.
"""
from __future__ import annotations

import math

import torch

from skymoe.data.boxes import LOC_TOKENS, X_TOKENS

SCALE = len(X_TOKENS) - 1  # the canonical 0-100 box scale


def coordinate_code(values: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """[..., size] code of ``values`` (0-100) on ``axis`` 0 (x: first half of the dims) or 1 (y: second half)."""
    if size % 4:
        raise ValueError(f"the coordinate code needs a hidden size divisible by 4, got {size}")
    freqs = torch.arange(1, size // 4 + 1, dtype=torch.float32, device=values.device)
    angles = values.float()[..., None] * (math.pi / SCALE) * freqs
    half = torch.cat([angles.sin(), angles.cos()], dim=-1) / math.sqrt(size // 4)  # unit norm per axis
    zeros = torch.zeros_like(half)
    return torch.cat([half, zeros] if axis == 0 else [zeros, half], dim=-1)


def grid_code(grid: int, size: int) -> torch.Tensor:
    """[grid*grid, size] code of the centres of a square grid of tokens in raster order."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * SCALE / grid
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return coordinate_code(x.flatten(), size, 0) + coordinate_code(y.flatten(), size, 1)


def location_code(size: int) -> torch.Tensor:
    """[202, size] the code of every location token (LOC_TOKENS order: the x tokens, then the y tokens)."""
    values = torch.arange(SCALE + 1, dtype=torch.float32)
    return torch.cat([coordinate_code(values, size, 0), coordinate_code(values, size, 1)])


def init_location_embeddings(language_model, tokenizer) -> bool:
    """Set the input (and, if untied, output) embedding rows of the location tokens to their code,
    scaled to the mean length of the other rows.

    Returns False, changing nothing, when the tokenizer has no location tokens.
    """
    vocab = tokenizer.get_vocab()
    if LOC_TOKENS[0] not in vocab:
        return False
    ids = torch.tensor([vocab[t] for t in LOC_TOKENS])
    embeddings = [language_model.get_input_embeddings().weight]
    output = language_model.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0]:
        embeddings.append(output.weight)
    with torch.no_grad():
        for weight in embeddings:
            others = torch.ones(weight.shape[0], dtype=torch.bool)
            others[ids] = False
            # as long as the other rows: a longer code would make an untrained model prefer location tokens
            scale = weight[others].float().norm(dim=1).mean()
            weight[ids] = (location_code(weight.shape[1]) * scale).to(weight.dtype)
    return True
