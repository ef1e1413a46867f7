"""What the box and evidence heads read: the frozen grid's cells and the instruction's bag of words.

Both heads score the cells of the visual grid against a question. Each holds its own
reader (its own cell projection and word table): the evidence head learns from far more
samples than grounding's, and sharing one reader let it pull the box head's cells its way
(MGRS-mini grounding fell from 0.32 to 0.20 acc@0.5 in the test demo; docs/LEARNING.md).
"""
from __future__ import annotations

import torch
from torch import nn

WORD_BUCKETS = 8192


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
