"""What the box and evidence heads read: the frozen grid's cells, the instruction's bag of words and its box.

Both heads score the cells of the visual grid against a question. Each holds its own
reader (its own cell projection and word table): the evidence head learns from far more
samples than grounding's, and sharing one reader let it pull the box head's cells its way
(MGRS-mini grounding fell from 0.32 to 0.20 acc@0.5 in the test demo; docs/LEARNING.md).
"""
from __future__ import annotations

import torch
from torch import nn

from skymoe.data.boxes import BOX_PATTERN, X_TOKENS

WORD_BUCKETS = 8192
SCALE = len(X_TOKENS) - 1  # the canonical 0-100 box scale of the location tokens


def location_kind(ids: torch.Tensor, start: int) -> torch.Tensor:
    """Per token: 0 = x location token, 1 = y location token, -1 = any other token."""
    offset = ids - start
    kind = torch.div(offset, len(X_TOKENS), rounding_mode="floor")
    return torch.where((offset >= 0) & (kind <= 1), kind, torch.full_like(kind, -1))


def box_starts(kind: torch.Tensor) -> torch.Tensor:
    """[B, S-3] bool: where an x, y, x, y run of location tokens begins (``kind``: :func:`location_kind`, S >= 4)."""
    return (kind.unfold(1, 4, 1) == torch.tensor(BOX_PATTERN, device=kind.device)).all(-1)


def box_values(ids: torch.Tensor, first: torch.Tensor, start: int) -> torch.Tensor:
    """[B, 4] the box (0-100) whose location tokens begin at ``first`` [B] in each row of ``ids``."""
    values = ids.gather(1, first[:, None] + torch.arange(4, device=ids.device)) - start
    values[:, 1::2] -= len(X_TOKENS)
    return values


def last_instruction_box(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] bool: whether the instruction (``mask``) holds a box; [B] where its last box's tokens begin (S >= 4)."""
    starts = box_starts(location_kind(ids.masked_fill(~mask.bool(), -1), start))
    return starts.any(-1), starts.shape[1] - 1 - starts.flip(-1).float().argmax(-1)


def instruction_has_box(ids: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """[B] bool: whether the instruction (``mask``) holds an x, y, x, y run of location tokens."""
    if ids.shape[1] < 4:
        return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    return last_instruction_box(ids, mask, start)[0]


def instruction_box_cover(ids: torch.Tensor, mask: torch.Tensor, start: int, grid: int) -> torch.Tensor:
    """[B, grid*grid] how much of each cell (row-major) the instruction's last box covers (0-1); zeros in the rows
    whose instruction (``mask``) holds no box. A region question's or a region caption's box says where to look; in
    a conversation, the last box of its user turns (the question being answered, when that turn names one)."""
    if ids.shape[1] < 4:
        return ids.new_zeros(ids.shape[0], grid * grid, dtype=torch.float32)
    present, last = last_instruction_box(ids, mask, start)
    boxes = box_values(ids, last, start).float() * present[:, None]
    step = SCALE / grid
    low = torch.arange(grid, device=ids.device) * step  # each cell's first coordinate along either axis

    def share(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:  # [B, grid] of each cell's side in [first, last]
        return ((torch.minimum(last, low + step) - torch.maximum(first, low)) / step).clamp(0, 1)

    cover_x, cover_y = share(boxes[:, 0:1], boxes[:, 2:3]), share(boxes[:, 1:2], boxes[:, 3:4])
    return (cover_y[:, :, None] * cover_x[:, None, :]).flatten(1) * present[:, None]


class GridReader(nn.Module):
    def __init__(self, vision_size: int, grid: int, hidden_size: int, vocab_size: int):
        super().__init__()
        self.grid = grid
        self.cell_norm = nn.LayerNorm(vision_size)
        self.cell = nn.Linear(vision_size, hidden_size)
        self.cell_position = nn.Parameter(torch.zeros(grid * grid, hidden_size))
        # token ids hashed into at most WORD_BUCKETS rows: a 262k-token vocabulary needs no 262k-row table here
        self.words = nn.Embedding(min(vocab_size, WORD_BUCKETS), hidden_size)
        self.words_norm = nn.LayerNorm(hidden_size)

    def cells(self, vision_features: torch.Tensor) -> torch.Tensor:
        """[B, N, H] what each cell offers: the tower's features there (no gradient reaches the tower), and where it is."""
        return self.cell(self.cell_norm(vision_features.detach().to(self.cell.weight.dtype))) + self.cell_position

    def bag(self, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, H] the reader's embeddings of each row's tokens where ``mask`` is set (its instruction), summed and
        normalised: a sum keeps the few words that name the object as strong as the template's many."""
        weights = mask.to(self.words.weight.dtype)[..., None]
        return self.words_norm((self.words(token_ids % self.words.num_embeddings) * weights).sum(1))
