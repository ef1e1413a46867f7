"""Captioning and region captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when possible).

All metrics come from pycocoevalcap, the COCO caption evaluation code every
captioning paper reports with, called the way its ``COCOEvalCap`` calls them:
captions are lowercased and tokenised by the Stanford PTB tokenizer (Java), which
also drops punctuation; BLEU is corpus-level (``Bleu(4)``), METEOR 1.5, ROUGE-L,
CIDEr-D (its IDF comes from the references of the scored set, so a subset's CIDEr
differs from the whole set's). Scores are on pycocoevalcap's 0-1 scale.

SPICE needs Stanford CoreNLP jars that pycocoevalcap downloads on first use; we
never download at run time, so SPICE is ``{"status": "unavailable", "reason": ...}``
unless those jars are already in pycocoevalcap's ``spice/lib`` - never 0.

Normalisation beyond the PTB tokenizer: none. An empty or whitespace-only
prediction is kept (it scores 0 on every metric).
"""
from __future__ import annotations

import functools
from pathlib import Path

from skymoe.eval.records import Prediction

PRIMARY = "CIDEr"
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_status() -> dict:
    """Whether SPICE can run offline: its CoreNLP jars must already be installed."""
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    missing = [name for name in SPICE_JARS if not (lib / name).is_file()]
    if missing:
        return {"status": "unavailable", "reason": f"Stanford CoreNLP jars {missing} are not installed in pycocoevalcap/spice/lib; SPICE would download them and runs offline only"}
    return {"status": "available"}


def spice(references: dict[str, list[str]], candidates: dict[str, str]) -> dict:
    status = spice_status()
    if status["status"] != "available":
        return status
    from pycocoevalcap.spice.spice import Spice

    value, _ = Spice().compute_score(references, {k: [c] for k, c in candidates.items()})
    return {"status": "ok", "value": float(value)}


# PTB tokenisation is line by line, so a caption's tokens never depend on the other captions:
# they are cached, and one scoring run starts the tokenizer's JVM once per batch of new captions
# instead of once per subset (per task, granularity, dataset, question type).
_TOKENS: dict[str, str] = {}


def tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """PTB-tokenise {id: [caption, ...]}. Every caption is one line for the tokenizer: line breaks
    of any kind (``\\r``, ``\\v``, ``\\f``, U+2028, ...) become spaces, or the Java tokenizer would split the
    caption and hand every later caption the wrong tokens. Empty captions come back as empty strings."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {k: [" ".join(c.split()) for c in v] for k, v in captions.items()}  # str.split() knows every line break
    new = sorted({c for v in captions.values() for c in v if c and c not in _TOKENS})
    if new:
        tokenized = PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(new)})
        _TOKENS.update((c, tokenized[str(i)][0]) for i, c in enumerate(new))
    return {k: [_TOKENS[c] if c else "" for c in v] for k, v in captions.items()}


@functools.cache
def _meteor():
    """One METEOR 1.5 JVM per process (it takes seconds to start); its __del__ stops it at exit."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def coco_scores(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr for tokenised {id: refs} and {id: candidate}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {k: [c] for k, c in candidates.items()}
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(references, res, verbose=0)
    scores.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
    scores["METEOR"] = float(_meteor().compute_score(references, res)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(references, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(references, res)[0])
    return scores


def score(predictions: list[Prediction]) -> dict:
    keys = [f"{i}" for i in range(len(predictions))]  # ids may repeat across datasets
    refs = tokenize({k: p.references for k, p in zip(keys, predictions)})
    cands = tokenize({k: [p.prediction] for k, p in zip(keys, predictions)})
    result = {"n": len(predictions), **coco_scores(refs, {k: v[0] for k, v in cands.items()})}
    result["SPICE"] = spice(refs, {k: v[0] for k, v in cands.items()})
    result["empty_predictions"] = sum(1 for p in predictions if not p.prediction.strip())
    return result
