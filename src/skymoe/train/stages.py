"""What differs between the stages: how the model is made, what trains, at which learning rate.

Stage 1 (foundation) builds the dense model (tokenizer trained on the mix's
text for a from-scratch LLM) and trains projector + router + a dense LoRA
adapter (or the whole small LLM). Stage 2 (specialisation) loads a stage-1
output directory, upcycles it into E identical experts — checked to reproduce
the dense model's outputs — and trains router + experts (+ projector).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from skymoe.errors import ConfigError, DataError
from skymoe.model.gguf import pretrained_llm_folder
from skymoe.train.config import TrainConfig
from skymoe.train.data import MixPart
from skymoe.train.errors import StageError

logger = logging.getLogger(__name__)

# Groups of SkyMoEForConditionalGeneration.parameter_groups() that train: stage 1 the dense adapter
# (model.moe.dense_lora: true) or else the whole LLM; stage 2 always router + experts (+ projector with
# optim.train_projector). The vision tower never trains.
# The box head only reads the model (no gradient leaves it), so it learns in both stages: more grounding samples.
STAGE1_TRAINABLE = {True: {"projector", "router", "adapter", "box_head"}, False: {"projector", "router", "lm", "box_head"}}
STAGE2_TRAINABLE = {"router", "experts", "box_head"}
# relative to the largest |logit|: float32 sums in another order differ by ~1e-6 of the logit scale
UPCYCLE_TOLERANCE = 1e-4


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Freeze per stage and return AdamW groups with per-module learning rates (no decay on biases/norms)."""
    if cfg.stage == 1:
        trainable = set(STAGE1_TRAINABLE[cfg.model.moe.dense_lora])
    else:
        trainable = STAGE2_TRAINABLE | ({"projector"} if cfg.optim.train_projector else set()) | ({"lm"} if cfg.optim.train_lm else set())
    lrs = {
        "projector": cfg.optim.projector_lr,
        "router": cfg.optim.router_lr,
        "experts": cfg.optim.experts_lr,
        "adapter": cfg.optim.lm_lr,
        "lm": cfg.optim.lm_lr,
    }
    buckets: dict[tuple[str, bool], list] = {}
    for group, params in model.parameter_groups().items():
        for param in params.values():
            param.requires_grad_(group in trainable)
            if param.requires_grad:
                decay = param.ndim >= 2 and cfg.optim.weight_decay > 0
                buckets.setdefault((group, decay), []).append(param)
    if not buckets:
        raise StageError(f"stage {cfg.stage} found no trainable parameters in groups {sorted(trainable)}")
    return [
        {
            "name": f"{group}" + ("" if decay else "_no_decay") * (cfg.optim.weight_decay > 0),
            "params": params,
            "lr": lrs[group] if lrs.get(group) is not None else cfg.optim.lr,
            "weight_decay": cfg.optim.weight_decay if decay else 0.0,
        }
        for (group, decay), params in sorted(buckets.items())
    ]


def training_texts(parts: list[MixPart]) -> list[str]:
    return [turn.text for part in parts for sample in part.samples for turn in sample.conversation]


def build(cfg: TrainConfig, parts: list[MixPart], resume_from: Path | None):
    """(model, processor) for the stage; stage 2 returns the dense model (see :func:`upcycle_checked`)."""
    if cfg.stage == 1:
        return _build_stage1(cfg, parts, resume_from)
    dense, processor = load_stage1_output(cfg.model.init_from)
    if cfg.data.blind != processor.blind:
        raise ConfigError(f"'data.blind' is {cfg.data.blind} but the stage-1 model in {cfg.model.init_from} was trained "
                          f"with blind={processor.blind}; stage 2 keeps the stage-1 setting: set data.blind: {processor.blind}")
    check_moe_layers(cfg.model.moe.moe_layers, dense.config.text_config.num_hidden_layers)
    check_dense_adapter(cfg, dense.config.moe)
    return dense, processor


def check_moe_layers(moe_layers: list[int] | None, num_layers: int) -> None:
    """Stage 2's ``model.moe.moe_layers`` against the stage-1 LLM (only known once it is loaded); None means all."""
    if moe_layers is None:
        return
    if not moe_layers:
        raise ConfigError("'model.moe.moe_layers' is empty; stage 2 needs at least one MoE layer (null = every layer)")
    bad = [i for i in moe_layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"'model.moe.moe_layers' {bad} out of range: the stage-1 LLM has {num_layers} layers, valid 0..{num_layers - 1}")


def check_dense_adapter(cfg: TrainConfig, dense_moe: dict) -> None:
    """LoRA experts (and expert LLMs) start as copies of the stage-1 dense adapter: they need its rank, scale and targets."""
    moe = cfg.model.moe
    if not dense_moe["dense_lora"] or moe.expert_type not in ("lora", "llm") or moe.expert_models:
        return
    differ = [k for k in ("lora_rank", "lora_alpha", "lora_targets") if getattr(moe, k) != dense_moe[k]]
    if differ:
        given = ", ".join(f"model.moe.{k}={getattr(moe, k)!r}" for k in differ)
        raise ConfigError(f"{given}: LoRA experts are copies of the stage-1 adapter in {cfg.model.init_from}, which has "
                          + ", ".join(f"{k}={dense_moe[k]!r}" for k in differ) + "; set the same values")


def _build_stage1(cfg: TrainConfig, parts: list[MixPart], resume_from: Path | None):
    from transformers import AutoTokenizer

    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import add_skymoe_tokens, build_tokenizer
    from skymoe.model.build import build_model, dense_config

    llm = cfg.model.llm
    if resume_from is not None and (resume_from / "processor").is_dir():
        # the tokenizer of the interrupted run, not a fresh one: token ids must not change under the weights
        tokenizer = SkyMoEProcessor.from_pretrained(resume_from / "processor").tokenizer
    elif llm.pretrained is None:
        tokenizer = build_tokenizer(training_texts(parts), vocab_size=llm.vocab_size)
    else:
        tokenizer = add_skymoe_tokens(AutoTokenizer.from_pretrained(pretrained_llm_folder(llm.pretrained)))
    model = build_model(dense_config(cfg.model, tokenizer), tokenizer=tokenizer)
    processor = SkyMoEProcessor.from_model_config(model.config, tokenizer, max_length=cfg.data.max_length, blind=cfg.data.blind)
    return model, processor


def load_stage1_output(init_from: str | None):
    """Dense model + processor from a stage-1 output dir, or a StageError that says what is wrong."""
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.model import SkyMoEForConditionalGeneration

    model_dir = Path(init_from or "") / "model"
    if not init_from or not (model_dir / "config.json").is_file():
        raise StageError(
            f"stage 2 needs a finished stage-1 output directory: {model_dir}/config.json not found "
            "(run stage 1 first and set model.init_from to its --output)"
        )
    try:
        processor = SkyMoEProcessor.from_pretrained(model_dir)
        model = SkyMoEForConditionalGeneration.from_pretrained(model_dir)
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise StageError(f"cannot load the stage-1 model from {model_dir}: {exc}") from exc
    if model.config.moe["num_experts"]:
        raise StageError(
            f"{model_dir} already has {model.config.moe['num_experts']} experts; stage 2 starts from a dense stage-1 model"
        )
    return model, processor


def upcycle_checked(dense, cfg: TrainConfig, batch: dict, tokenizer=None):
    """Upcycle with ``cfg.model.moe`` into identical experts and assert the MoE reproduces the dense logits
    (expert LLMs: the dense log-probabilities, which their mixture's logits are). Separate expert LMs
    (``moe.expert_models``, checked against ``tokenizer``) are other models: there is nothing to reproduce.

    The MoE config takes stage 2's trainable settings: ``moe`` (but ``dense_lora``, which describes the
    stage-1 model), ``router.jitter_noise``, ``loss`` and ``location_sigma``. ``moe.expert_templates``
    (expert LLMs) then start each expert's routing instruction from its text, read with ``tokenizer``:
    after the check, as the experts are no longer identical.
    """
    from dataclasses import asdict

    from skymoe.model import SkyMoEForConditionalGeneration

    batch = {k: v for k, v in batch.items() if k != "cda_view"}
    m = cfg.model
    dense.eval()
    with torch.no_grad():
        reference = dense(**batch).logits
    dense.config.router = {**dense.config.router, "jitter_noise": m.router.jitter_noise}
    dense.config.loss = {**asdict(m.loss), "cda": m.loss.cda if cfg.cda.enabled else 0.0}  # no views, no CDA term
    dense.config.location_sigma = m.location_sigma
    moe_settings = {k: v for k, v in asdict(m.moe).items() if k not in ("num_experts", "dense_lora")}
    moe = SkyMoEForConditionalGeneration.upcycle(dense, num_experts=m.moe.num_experts, tokenizer=tokenizer, **moe_settings)
    if m.moe.expert_models:
        logger.info("upcycled to %d expert LMs read from moe.expert_models", m.moe.num_experts)
    else:
        _check_reproduces(moe, batch, reference)
    moe.train()
    return _with_templates(moe, m.moe.expert_templates, tokenizer)


def _check_reproduces(moe, batch: dict, reference: torch.Tensor) -> None:
    moe.eval()
    with torch.no_grad():
        upcycled = moe(**batch).logits
    if moe.has_expert_llms:
        reference = reference.float().log_softmax(-1)
    diff = (upcycled - reference).abs().max().item()
    allowed = UPCYCLE_TOLERANCE * max(1.0, reference.abs().max().item())
    if diff > allowed:
        raise StageError(f"upcycling changed the model: max |logit difference| = {diff:.3g} > {allowed:.3g}")
    logger.info("upcycled to %d experts; identical-expert logits match the dense model (max diff %.2e)", moe.num_experts, diff)


def _with_templates(moe, templates: list[str] | None, tokenizer):
    from skymoe.model.expert_llms import init_expert_prompts_from_text

    if templates:
        try:
            init_expert_prompts_from_text(moe, tokenizer, templates)
        except ValueError as exc:  # a template longer than the stage-1 model's route tokens
            raise ConfigError(f"model.{exc}") from None
    return moe


def check_samples(parts: list[MixPart], processor, on_error: str, image_loader, source=None) -> list[MixPart]:
    """Encode every sample and open every image once, before training, so no epoch dies on bad data.

    ``on_error="raise"``: the first bad sample raises DataError naming it.
    ``"skip"``: bad samples are dropped, counted and reported. With a feature cache as ``source``
    the tower's features of every opened image, and of the zoom of every box an instruction names, are stored on
    the way (one decode per image; CDA views, random, are encoded when first drawn).
    """
    from skymoe.data.torch_dataset import SampleDataset

    warm = _CacheWarmer(source, processor) if getattr(source, "batch_key", None) == "vision_features" and not processor.blind else None
    checked = []
    for part in parts:
        dataset = SampleDataset(part.samples, processor, on_error=on_error, image_loader=image_loader)
        good = dataset.check_all(on_image=warm)
        if dataset.skipped:
            logger.warning("%s: skipped %d of %d samples\n%s", part.label, len(dataset.skipped), len(part.samples), dataset.report())
        if not good:
            raise DataError(f"dataset mix entry {part.label}: every sample was skipped", field="data.mix")
        checked.append(dataclasses.replace(part, samples=good))
    if warm is not None:
        warm.flush()
    return checked


class _CacheWarmer:
    """Collects opened images and stores the features of their plain views, and of a zoom model's zooms of the
    boxes their samples' instructions name, in batches (the keys training asks for, so its first epoch hits)."""

    BATCH = 64

    def __init__(self, cache, processor):
        self.cache, self.processor, self.pending = cache, processor, {}

    def __call__(self, path: str, image, encoded: list[dict]) -> None:
        from skymoe.data.feature_cache import image_request
        from skymoe.data.zoom import instruction_box, zoom_request

        plain = image_request(path, lambda _path, image=image: image)
        self.pending[plain.key] = plain
        if self.processor.zoom:
            for features in encoded:
                box = instruction_box(features["input_ids"], features["instruction_mask"], self.processor.location_start)
                if box is not None:
                    zoom = zoom_request(plain, box, self.processor.zoom_size)
                    self.pending[zoom.key] = zoom
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        self.cache.get(list(self.pending.values()))
        self.pending = {}
