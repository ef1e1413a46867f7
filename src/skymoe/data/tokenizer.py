"""Tokenizers for SkyMoE: train a small BPE on the training text, or extend an existing HF tokenizer.

Both paths give a ``PreTrainedTokenizerFast`` that knows the SkyMoE special
tokens (:data:`SPECIAL_TOKENS`): ``<image>`` placeholders are replaced by visual
tokens and ``<route>`` placeholders by the router's routing instructions.
"""
from __future__ import annotations

from typing import Iterable

SPECIAL_TOKENS = {
    "pad": "<pad>",
    "bos": "<s>",
    "eos": "</s>",
    "unk": "<unk>",
    "image": "<image>",
    "route": "<route>",
}
# Tokens that are not one of the tokenizer's standard roles (bos/eos/pad/unk).
EXTRA_TOKENS = [SPECIAL_TOKENS["image"], SPECIAL_TOKENS["route"]]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 4000, location_tokens: bool = True):
    """Train a byte-level BPE on ``texts``; lower-cased, every digit its own token.

    Splitting digits keeps numbers compositional instead of memorising each
    number as one token. With ``location_tokens`` the 2 x 101 box location tokens
    (:data:`skymoe.data.boxes.LOC_TOKENS`) are added whole, and the processor writes
    every canonical box as four of them.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from skymoe.data.boxes import strip_boxes

    # boxes become location tokens in the processor: BPE merges spent on their digits would be wasted
    texts = [strip_boxes(t) if location_tokens else t for t in texts if t]
    if not texts:
        raise ValueError("build_tokenizer needs at least one non-empty training text")
    special = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")] + EXTRA_TOKENS
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        extra_special_tokens=EXTRA_TOKENS,
    )
    if location_tokens:
        add_location_tokens(fast)
    return fast


def add_location_tokens(tokenizer):
    """Add the 2 x 101 box location tokens (x and y axes) whole, as ordinary (decoded, never skipped) tokens; in place."""
    from skymoe.data.boxes import LOC_TOKENS

    vocab = tokenizer.get_vocab()  # a fresh dict per call: 30 ms for GPT-2's 50k tokens, so once, not per token
    missing = [t for t in LOC_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    return tokenizer


def has_location_tokens(tokenizer) -> bool:
    from skymoe.data.boxes import LOC_TOKENS

    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in LOC_TOKENS)


def location_token_start(tokenizer) -> int | None:
    """Id of ``<x_0>`` when the tokenizer holds all location tokens under consecutive ids, else None."""
    from skymoe.data.boxes import LOC_TOKENS

    vocab = tokenizer.get_vocab()
    if LOC_TOKENS[0] not in vocab:
        return None
    start = vocab[LOC_TOKENS[0]]
    if [vocab.get(t) for t in LOC_TOKENS] != list(range(start, start + len(LOC_TOKENS))):
        raise ValueError("the tokenizer's location tokens <x_0>..<x_100>, <y_0>..<y_100> must have consecutive ids")
    return start


def add_skymoe_tokens(tokenizer, location_tokens: bool = True):
    """Add what SkyMoE needs to an existing HF tokenizer (GPT-2, Llama, Qwen, ...), in place.

    Keeps the tokenizer's own bos/eos (adding ours only where missing), adds a pad token where it has none, the
    ``<image>``/``<route>`` placeholders and (``location_tokens``) the box location tokens. Returns the tokenizer; resize the LLM's
    embeddings to ``len(tokenizer)`` afterwards (``build_model(config, tokenizer=...)`` does).
    """
    roles = {}
    for role in ("bos", "eos", "pad"):  # the layout needs these; byte-level BPEs never need an unk
        if getattr(tokenizer, f"{role}_token") is None:
            roles[f"{role}_token"] = SPECIAL_TOKENS[role]
    tokenizer.add_special_tokens(roles)
    vocab = tokenizer.get_vocab()
    missing = [t for t in EXTRA_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return add_location_tokens(tokenizer) if location_tokens else tokenizer


def gpt2_tokenizer():
    """The real GPT-2 BPE (from the assets registry) with the SkyMoE tokens added."""
    from transformers import GPT2TokenizerFast

    from skymoe.assets import get_asset

    folder = get_asset("gpt2-bpe")
    tokenizer = GPT2TokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    return add_skymoe_tokens(tokenizer)


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the SkyMoE roles in ``tokenizer`` (``image``/``route`` included)."""
    ids = {role: getattr(tokenizer, f"{role}_token_id") for role in ("pad", "bos", "eos", "unk")}
    for role in ("image", "route"):
        token_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[role])
        if token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != SPECIAL_TOKENS[role]):
            raise ValueError(f"tokenizer has no {SPECIAL_TOKENS[role]} token; call add_skymoe_tokens(tokenizer) first")
        ids[role] = token_id
    return ids
