"""Question-conditioned evidence: what the grid shows about the objects a question names, handed to the answer.

A small LM trained from scratch on a CPU budget does not learn, from its answers
alone, to find the objects a question names, count them or read their colour:
in the demo it answered presence, colour and count questions no better than the
blind control. ``benchmarks/evidence_probe.py`` measures what the frozen features
allow: on MGRS-mini VQA and counting, a classifier of the question's words alone
scores 0.34; one that also scores the grid's cells against the question scores
0.34 when only the answers teach the cells and 0.38 when the cells have targets of
their own, at ~8 samples per step, and 0.37 and 0.55 at 32 per step.

So this head, beside the box head (:mod:`skymoe.model.box_head`; each with its own
:class:`~skymoe.model.grid_reader.GridReader` of the cells and the question's words):

* scores each cell of the frozen grid against the question's bag of words: a
  sigmoid per cell, "this cell holds an object the question is about"; the cells
  under the instruction's (last) box (a region question's or a region caption's) are
  marked (a bag of four location tokens hardly says where a box lies), and their
  features are averaged by how much of each the box covers: what the box holds,
  an object caption's colour and category; with ``box_head.zoom``, the tower's
  features of the box's crop (:mod:`skymoe.data.zoom`) are added to that region,
  and reach the answer on a read-out of their own too: through the shared one
  alone, whose parameters every task moves, a validation demo named 0.76 of
  object captions exactly, against 0.94 with it (``benchmarks/results/evidence_val``,
  15 and 16; a linear probe on the zoom names 0.99);
* sums it up as evidence: the cells' features pooled by those scores (what the
  objects look like: their colour), the sum of the probabilities (how many; also
  as bumps around 0..10, so that a number's answer is a linear read-out), the
  largest (whether any), which an MLP reads together with the question's words;
* hands the evidence to the answer: a vector in the LLM's hidden space, added to
  the last hidden state at every answer position, so the output head reads
  ``logits + lm_head(evidence)`` (late fusion; the projection starts at zero, so
  a new head leaves the LM's answers as they were);
* learns from the LM loss through those logits, and from a per-cell binary
  cross-entropy wherever a sample names its objects (:func:`cell_targets`):
  VQA, counting and grounding samples with boxes; a cell is positive when it
  holds a box's centre, every other cell is negative.

Written by hand: no library head scores a VLM's grid against the question and
feeds the answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skymoe.data.schema import Sample, Task
from skymoe.model.grid_reader import GridReader, instruction_box_cover, instruction_has_box

# Their boxes are the objects the question asks about. Region captions too (every cell in the described box) left
# them where they were in a validation demo, and took VQA down a little (docs/LEARNING.md).
SUPERVISED_TASKS = (Task.VQA, Task.COUNTING, Task.GROUNDING)
UNSUPERVISED = -1.0  # a target row that teaches nothing
COUNT_CENTRES = torch.arange(11.0)


class ZeroStartLinear(nn.Linear):
    """A read-out into the answer's logits that starts at zero, so a new one changes no answer (nor does one a
    checkpoint predates: ``SkyMoEPreTrainedModel._init_weights`` zeroes it when it is missing from the weights)."""

    def reset_parameters(self) -> None:
        super().reset_parameters()  # draws as nn.Linear does, so every later parameter's draw stays what a seed gave
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class EvidenceHead(GridReader):
    def __init__(self, vision_size: int, text_size: int, grid: int, hidden_size: int, vocab_size: int, location_start: int,
                 zoom: bool = False):
        super().__init__(vision_size, grid, hidden_size, vocab_size)
        self.location_start = location_start
        self.inside = nn.Parameter(torch.zeros(hidden_size))  # a cell under the instruction's box
        # the tower's features of the box's crop (skymoe.data.zoom), averaged over its grid, added to the region
        self.zoom = nn.Sequential(nn.LayerNorm(vision_size), nn.Linear(vision_size, hidden_size)) if zoom else None
        # ...and straight to the answer: its own read-out, whose parameters learn from boxed rows alone (no bias:
        # rows without a box get nothing from it)
        self.zoom_out = nn.Sequential(nn.GELU(), ZeroStartLinear(hidden_size, text_size, bias=False)) if zoom else None
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.score = nn.Linear(hidden_size, 1)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.mix = nn.Sequential(nn.Linear(3 * hidden_size + 3 + len(COUNT_CENTRES), hidden_size), nn.GELU())
        self.out = ZeroStartLinear(hidden_size, text_size)

    def forward(self, vision_features: torch.Tensor, token_ids: torch.Tensor, instruction_mask: torch.Tensor,
                zoom_features: torch.Tensor | None = None):
        """Cell logits [B, N] (float32) and the evidence [B, D] in the LLM's hidden space, for the tower's features
        [B, N, C] and the instruction (its tokens where ``instruction_mask`` is set); ``zoom_features`` [B, N', C]:
        the tower's features of each row's zoom (any values in the rows without a box), which a zoom head needs
        whenever a row's instruction names a box."""
        cells, words = self.cells(vision_features), self.bag(token_ids, instruction_mask)
        cover = instruction_box_cover(token_ids, instruction_mask, self.location_start, self.grid).to(cells.dtype)
        hidden = self.mlp(cells + words[:, None] + cover[..., None] * self.inside)
        logits = self.score(hidden).squeeze(-1)
        probabilities = logits.sigmoid()
        values = self.value(cells)
        pooled = (logits.softmax(-1)[..., None] * values).sum(1)
        # what the instruction's box holds, read where it says (zero without a box): the cells a region caption
        # describes are known from its prompt, the scores need not learn to find them
        region = (cover[..., None] * values).sum(1) / cover.sum(-1, keepdim=True).clamp(min=1e-3)
        zoom = None
        if self.zoom is not None:  # a box too thin to cover a cell still has its zoom
            zoom = self._zoom(zoom_features, instruction_has_box(token_ids, instruction_mask, self.location_start))
            region = region + zoom
        count = probabilities.sum(-1, keepdim=True)
        bumps = torch.exp(-((count - COUNT_CENTRES.to(count)) ** 2))  # a number's answer, a linear read-out
        stats = torch.cat([count, count.log1p(), probabilities.max(-1, keepdim=True).values, bumps], -1)
        evidence = self.out(self.mix(torch.cat([pooled, region, stats, words], -1)))
        if zoom is not None:
            evidence = evidence + self.zoom_out(zoom)
        return logits.float(), evidence

    def _zoom(self, zoom_features: torch.Tensor | None, boxed: torch.Tensor) -> torch.Tensor:
        """[B, H] the zoom's averaged features, projected, in the rows whose instruction names a box (zero elsewhere)."""
        if zoom_features is None:
            if bool(boxed.any()):
                raise ValueError("this evidence head reads the zoom of the instruction's box (box_head.zoom): pass "
                                 "zoom_pixel_values or zoom_vision_features, as SkyMoEProcessor.prepare_generation makes them")
            return boxed.new_zeros(len(boxed), self.inside.shape[0], dtype=self.inside.dtype)
        zoom = self.zoom(zoom_features.detach().to(self.inside.dtype).mean(1))
        return zoom * boxed[:, None].to(zoom.dtype)


def cell_targets(samples: list[Sample | None], grid: int) -> torch.Tensor:
    """[B, grid*grid] per-cell targets: 1 where a box the sample names has its centre, 0 elsewhere, and rows of
    :data:`UNSUPERVISED` for samples that name no objects (other tasks, no boxes, no image size; None)."""
    targets = torch.full((len(samples), grid * grid), UNSUPERVISED)
    for row, sample in enumerate(samples):
        if sample is None or sample.task not in SUPERVISED_TASKS or not sample.boxes or not sample.image_size:
            continue
        width, height = sample.image_size
        targets[row] = 0.0
        for box in sample.boxes:
            column = min(max(int((box.x1 + box.x2) / 2 / width * grid), 0), grid - 1)
            line = min(max(int((box.y1 + box.y2) / 2 / height * grid), 0), grid - 1)
            targets[row, line * grid + column] = 1.0
    return targets


def evidence_loss(cell_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-cell binary cross-entropy over the supervised rows (zero, in the graph, when there are none)."""
    rows = targets[:, 0] != UNSUPERVISED
    if not bool(rows.any()):
        return cell_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(cell_logits[rows], targets[rows].to(cell_logits.dtype))


def add_to_answers(logits: torch.Tensor, bias: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``logits`` with each row's ``bias`` [B, V] added at the answer's positions ``answers`` [B, S] (bool):
    ``logits`` is [B, S, V], or [M, V] when only those positions were kept (training's ``logits_to_keep``)."""
    bias = bias.to(logits.dtype)
    if logits.dim() == 2:
        return logits + bias[answers.nonzero()[:, 0]]
    return logits + bias[:, None] * answers[..., None].to(logits.dtype)
