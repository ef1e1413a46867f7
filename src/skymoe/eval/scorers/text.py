"""Answer normalisation shared by the VQA, classification and counting scorers.

Rules (applied in this order, to predictions and references alike):

1. ``None``/NaN/non-string -> ``""`` (an empty answer, scored as wrong, never a crash);
2. lowercase, strip surrounding whitespace;
3. thousands separators inside numbers are dropped (``1,000`` -> ``1000``, ``2,500m2`` -> ``2500m2``);
4. punctuation is replaced by spaces, except a decimal point between digits (``2.5``),
   a minus sign starting a number (``-2``) and ``/`` (``yes/no``-style answers are rare; HRVQA types contain it);
5. the articles ``a``, ``an``, ``the`` are removed;
6. number words ``zero`` .. ``twenty``, the tens up to ``ninety`` and their compounds
   (``twenty-one``, ``forty two``) become digits;
7. yes/no synonyms map to ``yes``/``no`` (``yeah``, ``yep``, ``true``, ``correct`` /
   ``nope``, ``false``, ``incorrect``);
8. runs of whitespace collapse to one space.

Nothing else is done: no stemming, no spelling correction, no partial matching
beyond the yes/no rule in :func:`answers_match`.
"""
from __future__ import annotations

import math
import re

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({w: str(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)})
_YES_NO = {"yeah": "yes", "yep": "yes", "true": "yes", "correct": "yes", "nope": "no", "false": "no", "incorrect": "no"}
_UNITS = {w: i for i, w in enumerate("one two three four five six seven eight nine".split(), 1)}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))(?!(?<!\w)-(?=\d))[^\w\s/]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def as_text(value) -> str:
    """Model output / reference -> str; None, NaN and non-strings become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def normalize_answer(value) -> str:
    """Normalise one answer by the rules in the module docstring."""
    text = _THOUSANDS.sub("", as_text(value).lower().strip())
    text = _PUNCTUATION.sub(" ", text).replace("_", " ")
    words, previous = [], None
    for word in text.split():
        if word in _ARTICLES:
            continue
        if previous in _TENS and word in _UNITS:  # "twenty one" (from "twenty-one") is one number
            words[-1] = str(_TENS[previous] + _UNITS[word])
            previous = None
            continue
        words.append(_YES_NO.get(word, _NUMBER_WORDS.get(word, word)))
        previous = word
    return " ".join(words)


def answers_match(prediction, reference) -> bool:
    """Exact match after normalisation; for a yes/no reference the prediction's first word decides
    (models often answer "yes, there is a road")."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if ref in ("yes", "no") and pred:
        return pred.split()[0] == ref
    return pred == ref


def parse_number(value) -> float | None:
    """The first number in a normalised answer (number words included), or None if there is none."""
    match = _NUMBER.search(normalize_answer(value))
    return float(match.group()) if match else None
