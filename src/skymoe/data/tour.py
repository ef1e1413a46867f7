"""Contact sheet of real samples: one row per dataset, image + boxes + question/answer per cell."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from skymoe.data.imagery import load_image
from skymoe.data.schema import Sample

CELL = 240  # thumbnail side in pixels
TEXT_LINES = 7
_LINE = 16
_PAD = 8
_HEADER = 30
_COLOURS = ("#ff3b30", "#ffcc00", "#34c759", "#00c7ff", "#af52de")


def pick_samples(samples: Sequence[Sample], n: int) -> list[Sample]:
    """Up to ``n`` samples showing the variety: new task and image first, then new question type, then any."""
    chosen: list[Sample] = []
    for kind in (lambda s: s.task, lambda s: (s.task, s.question_type), None):
        for s in samples:
            if len(chosen) == n:
                return chosen
            if s in chosen:
                continue
            if kind is not None and (any(s.image == c.image or kind(s) == kind(c) for c in chosen)):
                continue
            chosen.append(s)
    return chosen


def _thumbnail(sample: Sample) -> Image.Image:
    image = load_image(sample.image)
    scale = CELL / max(image.size)
    thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(thumb)
    sx, sy = thumb.width / image.width, thumb.height / image.height
    for i, box in enumerate(sample.boxes):
        colour = _COLOURS[i % len(_COLOURS)]
        draw.rectangle((box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy), outline=colour, width=2)
    return thumb


def _caption(sample: Sample, width_chars: int) -> list[str]:
    head = f"{sample.task.value}/{sample.granularity.value}" + (f" · {sample.question_type}" if sample.question_type else "")
    lines = [head]
    for prefix, text in (("Q: ", sample.question), ("A: ", sample.answer or "(no answer)")):
        lines += textwrap.wrap(prefix + " ".join(text.split()), width_chars)[:3]
    return lines[:TEXT_LINES]


def render_contact_sheet(rows: dict[str, Sequence[Sample]], out_path: str | Path, per_row: int = 4) -> Path:
    """Draw ``rows`` (title -> samples) into one PNG at ``out_path``."""
    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=17)
    cell_h = CELL + TEXT_LINES * _LINE + 2 * _PAD
    width = per_row * (CELL + _PAD) + _PAD
    sheet = Image.new("RGB", (width, len(rows) * (_HEADER + cell_h)), "white")
    draw = ImageDraw.Draw(sheet)
    width_chars = int(CELL / 6.6)
    for r, (title, samples) in enumerate(rows.items()):
        top = r * (_HEADER + cell_h)
        draw.text((_PAD, top + 6), title, fill="black", font=bold)
        for c, sample in enumerate(samples[:per_row]):
            left, y = _PAD + c * (CELL + _PAD), top + _HEADER
            sheet.paste(_thumbnail(sample), (left, y))
            for k, line in enumerate(_caption(sample, width_chars)):
                draw.text((left, y + CELL + _PAD // 2 + k * _LINE), line, fill="#222222" if k else "#0a5cad", font=font)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
