"""Box text: one canonical form for our models, codecs for the field's formats, a tolerant parser.

Every remote-sensing VLM invented its own box text (see the design notes §4).
Inside SkyMoE boxes are pixel ``xyxy`` + image size (:class:`~skymoe.data.schema.Box`);
text appears only at the edges:

========== ========================================== ========
style      text of one box                            range
========== ========================================== ========
canonical  ``[x1, y1, x2, y2]``                       0-100
loc        ``<x_x1><y_y1><x_x2><y_y2>``               0-100
geochat    ``{<x1><y1><x2><y2>|<θ>}``                 0-100
teochat    ``[x1, y1, x2, y2]``                       0-100
internvl   ``<box>[[x1, y1, x2, y2]]</box>``          0-1000
pixel      ``[x1, y1, x2, y2]``                       pixels
========== ========================================== ========

``loc`` is what our models read and write: one location token per coordinate
(:data:`LOC_TOKENS`: ``<x_0>``..``<x_100>`` and ``<y_0>``..``<y_100>``, added to the
tokenizer), so a box is four tokens instead of ~17 digit and punctuation tokens a
small model must learn to spell; x and y have tokens of their own so that each
can share the code of the visual tokens' x or y position (:mod:`skymoe.model.location`). The processor converts canonical boxes to it on the way in and
back on the way out; every style's parser also reads it.

Several boxes: ``; `` between bracketed boxes, GeoChat braces side by side,
InternVL boxes inside one ``<box>[[...], [...]]</box>``. Scaled coordinates
are integers: x on the image width, y on its height. A box thinner than one
step is widened to one step so it stays non-empty (x1 < x2). GeoChat's angle
θ is written as 0 and ignored when read (our boxes are axis-aligned).

:func:`parse_boxes` never guesses: text with no box, a malformed box, a value
out of range or an empty box gives ``failed=True`` and no boxes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from skymoe.data.schema import Box

STYLES = ("canonical", "loc", "geochat", "teochat", "internvl", "pixel")
_SCALE = {"canonical": 100, "loc": 100, "geochat": 100, "teochat": 100, "internvl": 1000, "pixel": None}
X_TOKENS = tuple(f"<x_{i}>" for i in range(_SCALE["loc"] + 1))
Y_TOKENS = tuple(f"<y_{i}>" for i in range(_SCALE["loc"] + 1))
LOC_TOKENS = X_TOKENS + Y_TOKENS
BOX_PATTERN = (0, 1, 0, 1)  # a box's location tokens by axis (0 x, 1 y): x1, y1, x2, y2

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_FOUR_NUMBERS = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$")
_BRACKETS = re.compile(r"\[([^\[\]]*\d[^\[\]]*)\]")  # [...] groups holding a digit (skips "[refer]")
_GEOCHAT_GROUP = re.compile(r"\{([^{}]*\d[^{}]*)\}")
_GEOCHAT_BOX = re.compile(r"^\s*<(\d+)><(\d+)><(\d+)><(\d+)>\s*(?:\|\s*<?\s*-?\d+(?:\.\d+)?\s*>?\s*)?$")
_INTERNVL_GROUP = re.compile(r"<box>(.*?)</box>", re.DOTALL)
_LOC = re.compile(r"<[xy]_(\d+)>")
_LOC_BOX = re.compile(r"<x_(\d+)>\s*<y_(\d+)>\s*<x_(\d+)>\s*<y_(\d+)>")
_CANONICAL_BOX = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


@dataclass
class ParsedBoxes:
    boxes: list[Box] = field(default_factory=list)
    failed: bool = False


def _check_style(style: str) -> int | None:
    if style not in _SCALE:
        raise ValueError(f"unknown box style {style!r}; expected one of {STYLES}")
    return _SCALE[style]


def _quantise(box: Box, image_size: tuple[int, int], scale: int | None) -> tuple[int, int, int, int]:
    """Integer coordinates on ``scale`` steps per side (None: whole pixels), clamped to the image.

    A box thinner than a step would round to an empty one, which no parser accepts: it is widened
    by one step, inside the range.
    """
    w, h = image_size
    steps_x, steps_y = (w, h) if scale is None else (scale, scale)

    def q(v: float, size: int, steps: int) -> int:
        return min(steps, max(0, round(v if scale is None else v / size * scale)))

    x1, x2 = _non_empty(q(box.x1, w, steps_x), q(box.x2, w, steps_x), steps_x)
    y1, y2 = _non_empty(q(box.y1, h, steps_y), q(box.y2, h, steps_y), steps_y)
    return x1, y1, x2, y2


def _non_empty(low: int, high: int, steps: int) -> tuple[int, int]:
    if high > low:
        return low, high
    return (low, low + 1) if low < steps else (low - 1, low)


def _values(box: Box, image_size: tuple[int, int], style: str) -> tuple:
    return _quantise(box, image_size, _check_style(style))


def format_box(box: Box, image_size: tuple[int, int], style: str = "canonical") -> str:
    """Text of one box in ``style`` (image_size = (W, H) of the full image)."""
    x1, y1, x2, y2 = _values(box, image_size, style)
    if style == "geochat":
        return f"{{<{x1}><{y1}><{x2}><{y2}>|<0>}}"
    if style == "internvl":
        return f"<box>[[{x1}, {y1}, {x2}, {y2}]]</box>"
    if style == "loc":
        return f"{X_TOKENS[x1]}{Y_TOKENS[y1]}{X_TOKENS[x2]}{Y_TOKENS[y2]}"
    return f"[{x1}, {y1}, {x2}, {y2}]"


def format_boxes(boxes: Sequence[Box], image_size: tuple[int, int], style: str = "canonical") -> str:
    """Text of several boxes in ``style``."""
    if style == "internvl":
        inner = ", ".join("[{}, {}, {}, {}]".format(*_values(b, image_size, style)) for b in boxes)
        return f"<box>[{inner}]</box>"
    separator = "" if style in ("geochat", "loc") else "; "
    return separator.join(format_box(b, image_size, style) for b in boxes)


def _candidates(text: str, style: str) -> list[tuple[str, ...] | None]:
    """Coordinate strings of every box-like group in ``text``; None marks a malformed group."""
    if style == "loc":
        groups = _LOC_BOX.findall(text)
        stray = len(_LOC.findall(text)) != 4 * len(groups)  # a group of fewer than four location tokens
        return [tuple(g) for g in groups] + ([None] if stray else [])
    if style == "geochat":
        groups = [_GEOCHAT_BOX.match(g) for g in _GEOCHAT_GROUP.findall(text)]
    else:
        if style == "internvl":
            inner = [g for block in _INTERNVL_GROUP.findall(text) for g in _BRACKETS.findall(block)]
        else:
            inner = _BRACKETS.findall(text)
        groups = [_FOUR_NUMBERS.match(g) for g in inner]
    return [m.groups()[:4] if m else None for m in groups]


def parse_boxes(text: str, image_size: tuple[int, int], style: str = "canonical") -> ParsedBoxes:
    """Boxes written in ``text`` (model output or dataset text) as pixel boxes of an image of ``image_size``."""
    _check_style(style)
    text = text if isinstance(text, str) else ""
    if _LOC.search(text):  # location tokens are unambiguous: every style reads them
        style = "loc"
    scale = _SCALE[style]
    w, h = image_size
    found = _candidates(text, style)
    if not found or any(c is None for c in found):
        return ParsedBoxes(failed=True)
    boxes = []
    for coords in found:
        x1, y1, x2, y2 = (float(v) for v in coords)
        limit_x, limit_y = (w, h) if scale is None else (scale, scale)
        if not (0 <= x1 < x2 <= limit_x and 0 <= y1 < y2 <= limit_y):
            return ParsedBoxes(failed=True)
        if scale is not None:
            x1, x2, y1, y2 = x1 / scale * w, x2 / scale * w, y1 / scale * h, y2 / scale * h
        boxes.append(Box(x1, y1, x2, y2))
    return ParsedBoxes(boxes=boxes)


def convert_box_text(text: str, image_size: tuple[int, int], source: str, target: str = "canonical") -> tuple[str, list[Box]]:
    """Rewrite every ``source``-style box in ``text`` in the ``target`` style; returns the text and the boxes.

    Readers use it to bring a peer's dataset text (e.g. GeoChat) to the
    canonical form our models read; writers use it the other way. A malformed
    box raises ValueError.
    """
    pattern = {"geochat": _GEOCHAT_GROUP, "internvl": _INTERNVL_GROUP}.get(source, _BRACKETS)
    boxes: list[Box] = []

    def replace(match: re.Match) -> str:
        parsed = parse_boxes(match.group(0), image_size, source)
        if parsed.failed:
            raise ValueError(f"malformed {source} box {match.group(0)!r}")
        boxes.extend(parsed.boxes)
        return format_boxes(parsed.boxes, image_size, target)

    return pattern.sub(replace, text), boxes


def canonical_to_loc(text: str) -> str:
    """Every canonical box ``[x1, y1, x2, y2]`` (integers 0-100) in ``text`` as location tokens; other text unchanged."""

    def replace(match: re.Match) -> str:
        x1, y1, x2, y2 = (int(v) for v in match.groups())
        if max(x1, y1, x2, y2) > _SCALE["loc"]:
            return match.group(0)
        return f"{X_TOKENS[x1]}{Y_TOKENS[y1]}{X_TOKENS[x2]}{Y_TOKENS[y2]}"

    return _CANONICAL_BOX.sub(replace, text)


def loc_to_canonical(text: str) -> str:
    """Every complete group of four location tokens in ``text`` as a canonical box, ``; `` between neighbours."""
    text = _LOC_BOX.sub(lambda m: "[{}, {}, {}, {}]".format(*m.groups()), text)
    return re.sub(r"\](?=\[)", "]; ", text)


def strip_boxes(text: str) -> str:
    """``text`` without its canonical boxes and location tokens (what a tokenizer trainer should not see)."""
    return _LOC.sub(" ", _CANONICAL_BOX.sub(" ", text))


def hold_back_partial_box(text: str) -> str:
    """Decoded text (whole boxes already canonical) without its trailing location tokens: a box still being written."""
    return re.sub(r"(?:<[xy]_\d+>\s*)+$", "", text)
