"""The box head: where a grounding answer's box comes from, read off the visual grid instead of spelt by the LM.

A small LM trained from scratch on a CPU budget learns *that* an answer is a box
long before it learns *which* box: writing ``<x_12><y_43><x_20><y_50>`` token by
token asks it to turn attention over the image into four numbers with nothing
but its output head. Detection heads (DETR, the grounding decoders of
LLaVA-Grounding and Groma) instead score places directly. This head does that
on the grid the projector already has (one visual token per cell):

* every cell is scored against the query: the LLM's last hidden state at the
  position that writes the box's first token, and the head's own bag of the
  instruction's tokens (which words the question holds: "the red ship in the
  top left quadrant" is enough to find it on MGRS-mini, and this head with a
  bag-of-words query alone reaches 0.36 acc@0.5 on validation scenes in the
  demo's regime, ``benchmarks/grounding_probe.py``; the LM's own token
  embeddings, which drift as it learns, served the head worse); a cell reads the
  frozen tower's features there, the ones a linear probe reads;
* the head only reads: no gradient of its loss reaches the LLM, the projector
  or the tower. Trained through the projector's tokens and the LLM's states, it
  pulled the shared features towards grounding, and scene classification and
  captions fell to their priors in a validation demo (docs/LEARNING.md);
* the best cell's regression gives the box: its centre's offset within the cell
  and its size, relative to the cell.

Training (:meth:`BoxHead.loss`): the answers whose supervised tokens start with
a box of location tokens teach the head that box: cross-entropy over the cell
that holds its centre, smooth L1 on the offsets and log-sizes.

Generation (:func:`force_box`): the LM still decides whether and when to write
a box (the probability it gives to location tokens); the head decides which
box. At the position where a box may start, the location tokens' total mass is
put on the head's ``x1``; the three positions after it write ``y1``, ``x2``,
``y2``. An answer's first box is the head's; later boxes (a multi-object answer)
are the LM's own. Written by hand: no library head reads a causal LM's grid tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skymoe.data.boxes import X_TOKENS
from skymoe.model.evidence import EvidenceHead, add_to_answers, evidence_loss
from skymoe.model.grid_reader import SCALE, GridReader, box_starts, box_values, location_kind
from skymoe.model.precision import own_precision

BOX_DONE = 4  # progress of a row whose first box is written (or that writes no more boxes): nothing is forced
BOX_CLOSED = 5  # progress of a row that has just written its box's last token: a location token cannot follow


class BoxHead(GridReader):
    def __init__(self, vision_size: int, text_size: int, grid: int, hidden_size: int, vocab_size: int, location_start: int,
                 evidence: bool = False, zoom: bool = False):
        super().__init__(vision_size, grid, hidden_size, vocab_size)
        self.query_norm = nn.LayerNorm(text_size)
        self.query = nn.Linear(text_size, hidden_size)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.score = nn.Linear(hidden_size, 1)
        self.regress = nn.Linear(hidden_size, 4)  # centre offset (x, y) within the cell, log width and height in cells
        # the question's evidence for every answer, read by its own reader (skymoe.model.evidence)
        self.evidence = EvidenceHead(vision_size, text_size, grid, hidden_size, vocab_size, location_start, zoom) if evidence else None

    def forward(self, cells: torch.Tensor, query_states: torch.Tensor | None, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell scores [B, N] and regressions [B, N, 4] for the LLM's query states [B, D] (None: the words alone)
        and the instruction's bag [B, H] (:meth:`bag`). No gradient reaches the LLM."""
        query = words if query_states is None else words + self.query(self.query_norm(query_states.detach()))
        hidden = self.mlp(cells + query[:, None])
        return self.score(hidden).squeeze(-1).float(), self.regress(hidden).float()

    def loss(self, scores: torch.Tensor, regressions: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Cell cross-entropy + smooth L1 of the target cell's offsets and log-sizes; ``boxes`` [B, 4] on 0-100."""
        cell, offsets, log_sizes = self._encode(boxes.float())
        chosen = regressions[torch.arange(len(cell), device=cell.device), cell]
        return (F.cross_entropy(scores, cell) + F.smooth_l1_loss(chosen[:, :2].tanh(), offsets)
                + F.smooth_l1_loss(chosen[:, 2:], log_sizes))

    def decode(self, scores: torch.Tensor, regressions: torch.Tensor) -> torch.Tensor:
        """[B, 4] long boxes on the 0-100 scale: the best cell's box, never empty (x1 < x2, y1 < y2)."""
        cell = scores.argmax(-1)
        chosen = regressions[torch.arange(len(cell), device=cell.device), cell]
        step = SCALE / self.grid
        centre = torch.stack([cell % self.grid, cell // self.grid], -1).float() * step + step / 2
        centre = centre + chosen[:, :2].tanh() * step
        half = chosen[:, 2:].clamp(max=math.log(2 * self.grid)).exp() * step / 2
        low = (centre - half).round().clamp(0, SCALE - 1)
        high = torch.maximum((centre + half).round(), low + 1).clamp(max=SCALE)
        return torch.cat([low, high], -1).long()

    def _encode(self, boxes: torch.Tensor):
        step = SCALE / self.grid
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        index = (centre / step).long().clamp(0, self.grid - 1)
        cell = index[:, 1] * self.grid + index[:, 0]
        offsets = ((centre - (index.float() * step + step / 2)) / step).clamp(-0.99, 0.99)
        log_sizes = ((boxes[:, 2:] - boxes[:, :2]).clamp(min=0.5) / step).log()
        return cell, offsets, log_sizes


def box_targets(labels: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first box of each answer: (rows, query positions, boxes [M, 4] on 0-100) for the rows whose supervised
    tokens hold a box: an x, y, x, y run of location tokens. The query position is the one that predicts its x1."""
    if labels.shape[1] < 4:
        empty = labels.new_zeros(0)
        return empty, empty, labels.new_zeros(0, 4)
    starts = box_starts(location_kind(labels, start))
    starts[:, 0] = False  # a box at the first position has no position before it to predict it
    rows = starts.any(-1).nonzero().squeeze(-1)
    first = starts[rows].float().argmax(-1)
    return rows, first - 1, box_values(labels[rows], first, start)


@dataclass
class BoxPlan:
    """What generation carries from step to step: each row's planned box and the grid's cells (from the prefill),
    and where the prompt ends (location tokens of the prompt, a region question's box, are not the answer's)."""

    boxes: torch.Tensor  # [B, 4] long, 0-100
    cells: torch.Tensor  # [B, N, H]
    words: torch.Tensor  # [B, H] the instruction's bag (BoxHead.bag)
    prompt_length: int
    evidence: torch.Tensor | None = None  # [B, V] what the evidence head adds to every answer token's logits


def box_progress(input_ids: torch.Tensor, prompt_length: int, start: int) -> torch.Tensor:
    """[B] how far each row is into its answer's first box: 0 = not begun (the next token may begin it),
    1-3 = that many of its tokens written, :data:`BOX_CLOSED` = its last token just written, :data:`BOX_DONE` =
    written earlier (or left unfinished): nothing to force."""
    answer = location_kind(input_ids[:, prompt_length:], start) >= 0
    if answer.shape[1] == 0:
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    begun = answer.any(-1)
    first = answer.float().argmax(-1)
    after = torch.arange(answer.shape[1], device=answer.device)[None] >= first[:, None]
    written = (answer & after).sum(-1)
    unbroken = written == (answer.shape[1] - first)  # only location tokens since the box began
    progress = torch.where(unbroken & (written < 4), written, torch.full_like(written, BOX_DONE))
    progress = torch.where(unbroken & (written == 4), torch.full_like(progress, BOX_CLOSED), progress)
    return torch.where(begun, progress, torch.zeros_like(progress))


def force_box(logits: torch.Tensor, boxes: torch.Tensor, progress: torch.Tensor, start: int) -> torch.Tensor:
    """[B, V] next-token logits with the location tokens' total mass on the planned coordinate ``progress``
    (x1, y1, x2, y2) of each row still writing its first box (once begun, that coordinate is the only token
    left: a box is never left unfinished), no location token right after it; the other rows' logits unchanged."""
    locations = slice(start, start + 2 * len(X_TOKENS))
    active = progress < BOX_DONE
    coordinate = progress.clamp(max=3)
    token = start + (coordinate % 2) * len(X_TOKENS) + boxes.gather(1, coordinate[:, None]).squeeze(1)
    forced = logits.clone()
    forced[active | (progress == BOX_CLOSED), locations] = float("-inf")  # a closed box is followed by text
    forced[(progress > 0) & active] = float("-inf")  # a begun box is finished: only its next coordinate remains
    rows = active.nonzero().squeeze(-1)
    forced[rows, token[rows]] = logits[rows, locations].logsumexp(-1)
    return forced


def box_loss(head: BoxHead, cells, words, states, labels, start: int) -> torch.Tensor:
    """The head's training term on the batch's answers that hold a box (zero, with every parameter in the graph,
    when none does: data-parallel training expects every parameter to get a gradient)."""
    rows, positions, boxes = box_targets(labels, start)
    if cells is None or not len(rows):
        return sum(p.sum() for p in head.parameters()) * 0.0
    return head.loss(*head(cells[rows], states[rows, positions], words[rows]), boxes)


def plan_step(head: BoxHead, plan: BoxPlan | None, progress, prompt_length: int, cells, words, evidence,
              last_states, logits, start: int):
    """One generation step: the evidence added to the last position's logits, the head's box for each row that
    may begin one, the carried box for the others, and those logits forced to it (:func:`force_box`).
    ``cells``, ``evidence``: the prefill's (None on later steps, which read the plan). Returns (logits [B, V],
    the plan to carry)."""
    if plan is not None:  # the prefill's grid and words (an uncached step would also bag the generated tokens)
        cells, words, evidence = plan.cells, plan.words, plan.evidence
    elif cells is None:  # a prompt without an image: no grid to point at
        return logits, None
    if evidence is not None:
        logits = logits + evidence.to(logits.dtype)
    boxes = head.decode(*head(cells, last_states, words))
    if plan is not None:
        boxes = torch.where((progress == 0)[:, None], boxes, plan.boxes)
    return force_box(logits, boxes, progress, start), BoxPlan(boxes, cells, words, prompt_length, evidence)


def grid_heads_pass(head: BoxHead, output_head, states, logits, vision_features, instruction, answers, labels, cell_targets,
                    plan: BoxPlan | None, progress, start: int, zoom_features=None):
    """The box head's and the evidence head's part of a forward: (logits, their loss terms, the plan to carry).

    ``instruction``: (token ids, instruction mask), read at the prefill (a plan carries what they gave), as is
    ``zoom_features`` (the tower's features of the instruction's box: :mod:`skymoe.data.zoom`).
    Training (``labels``): the evidence is added to the logits of the ``answers`` positions ([B, S] bool: the
    kept positions of flat [M, V] logits, or the answer's of [B, S, V] ones) and the terms are returned.
    Generation: the last position's logits get the prefill's evidence and the box (:func:`plan_step`).
    Under autocast all of it runs in the heads' own precision (:mod:`skymoe.model.precision`)."""
    with own_precision(head) as cast:
        return _grid_heads_pass(head, output_head, cast(states), logits, cast(vision_features), instruction, answers, labels,
                                cell_targets, plan, progress, start, cast(zoom_features))


def _grid_heads_pass(head, output_head, states, logits, vision_features, instruction, answers, labels, cell_targets, plan,
                     progress, start, zoom_features):
    cells = words = evidence = cell_logits = None
    if plan is None:
        words = head.bag(*instruction)
        cells = head.cells(vision_features) if vision_features is not None else None
    if head.evidence is not None and plan is None and vision_features is not None:
        cell_logits, hidden = head.evidence(vision_features, *instruction, zoom_features)
        evidence = output_head(hidden)
    if labels is not None:
        terms = {"box": box_loss(head, cells, words, states, labels, start)}
        if evidence is not None:
            logits = add_to_answers(logits, evidence, answers)
            if cell_targets is not None:
                terms["evidence"] = evidence_loss(cell_logits, cell_targets)
        return logits, terms, None
    prompt_length = plan.prompt_length if plan is not None else instruction[0].shape[1]  # the prefill's is the prompt
    last, plan = plan_step(head, plan, progress, prompt_length, cells, words, evidence, states[:, -1], logits[:, -1], start)
    return torch.cat([logits[:, :-1], last[:, None]], dim=1), {}, plan
