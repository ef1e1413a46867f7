"""The box head: targets read from the labels, its box written by generate, and a model that learns to point."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skymoe.data.processor import SkyMoEProcessor
from skymoe.data.schema import Box, Granularity, Sample, Task, Turn
from skymoe.data.tokenizer import build_tokenizer
from skymoe.model.box_head import BOX_CLOSED, BOX_DONE, BoxHead, box_progress, box_targets
from skymoe.model.build import build_model, tiny_config

QUESTION = "Where is the bright square? Answer with a box."
SIZE = 32
STEPS = 250


def _tokenizer():
    return build_tokenizer([QUESTION, "Describe the region [1, 2, 3, 4].", "a dark field"], vocab_size=300)


def _model(tokenizer, seed: int = 0, **overrides):
    config = tiny_config(vocab_size=len(tokenizer), image_size=SIZE, box_head={"enabled": True, "hidden_size": 32}, **overrides)
    torch.manual_seed(seed)
    model = build_model(config, tokenizer=tokenizer)
    return model, SkyMoEProcessor.from_model_config(model.config, tokenizer)


def _square(rng: np.random.Generator) -> tuple[Image.Image, Box]:
    """A 32 px dark image with a bright 8 px square somewhere; its box."""
    x, y = (int(v) for v in rng.integers(0, SIZE - 8, size=2))
    pixels = np.full((SIZE, SIZE, 3), 20, np.uint8)
    pixels[y : y + 8, x : x + 8] = 235
    return Image.fromarray(pixels), Box(x, y, x + 8, y + 8)


def _sample(box: Box, question: str = QUESTION) -> Sample:
    from skymoe.data.boxes import format_box

    return Sample(id="s", dataset="t", split="train", image="mem.png", task=Task.GROUNDING, granularity=Granularity.OBJECT,
                  conversation=[Turn("user", question), Turn("assistant", format_box(box, (SIZE, SIZE)))], image_size=(SIZE, SIZE))


def test_targets_are_the_first_answer_box_and_never_a_prompt_box():
    start = 100
    x, y = (lambda v: start + v), (lambda v: start + 101 + v)
    labels = torch.full((3, 12), -100)
    labels[0, 5:10] = torch.tensor([7, x(10), y(20), x(30), y(40)])
    labels[1, 3:12] = torch.tensor([x(1), y(2), x(3), y(4), 9, x(50), y(60), x(70), y(80)])  # two boxes: the first
    # row 2: only its prompt holds a box (ignored labels): no target
    rows, positions, boxes = box_targets(labels, start)
    assert rows.tolist() == [0, 1] and positions.tolist() == [5, 2]
    assert boxes.tolist() == [[10, 20, 30, 40], [1, 2, 3, 4]]


def test_a_perfect_cell_and_regression_decode_to_the_target_box():
    head = BoxHead(vision_size=8, text_size=8, grid=8, hidden_size=4, vocab_size=10, location_start=10)
    boxes = torch.tensor([[3.0, 4.0, 17.0, 10.0], [60.0, 61.0, 99.0, 100.0], [0.0, 0.0, 1.0, 1.0]])
    cell, offsets, log_sizes = head._encode(boxes)
    scores = torch.nn.functional.one_hot(cell, 64).float()
    regressions = torch.zeros(3, 64, 4)
    regressions[torch.arange(3), cell] = torch.cat([offsets.atanh(), log_sizes], -1)
    assert (head.decode(scores, regressions) - boxes).abs().max() <= 1


def test_progress_counts_the_answer_box_only():
    start, prompt = 100, 3
    ids = [
        [7, 100, 201, 8],                        # the prompt's box is no answer: not begun
        [7, 100, 201, 8, 9],                     # not begun
        [7, 8, 9, 110, 220],                     # two tokens of the box written
        [7, 8, 9, 110, 220, 130, 240],           # box just written: no location token may follow
        [7, 8, 9, 110, 220, 130, 240, 9],        # box written
        [7, 8, 9, 110, 9],                       # broken off: nothing more is forced
    ]
    got = [int(box_progress(torch.tensor([row]), prompt, start)[0]) for row in ids]
    assert got == [0, 0, 2, BOX_CLOSED, BOX_DONE, BOX_DONE]


def test_loss_adds_the_weighted_box_term_and_trains_the_head():
    tokenizer = _tokenizer()
    model, processor = _model(tokenizer, loss={"box": 2.5})
    image, box = _square(np.random.default_rng(0))
    out = model(**processor.collate([_sample(box)] * 2, [image] * 2))
    terms = out.loss_terms
    assert terms["box"].item() > 0
    expected = terms["lm"] + 2.5 * terms["box"] + 0.1 * (terms["router_task_ce"] + terms["router_granularity_ce"])
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert model.box_head.score.weight.grad.abs().sum() > 0 and model.box_head.cell_position.grad.abs().sum() > 0


def test_generate_writes_the_heads_box_cached_as_uncached_and_after_a_reload(tmp_path):
    tokenizer = _tokenizer()
    model, processor = _model(tokenizer)
    model.eval()
    image, _ = _square(np.random.default_rng(1))
    inputs = processor.prepare_generation([image, image], [QUESTION, "Describe the region [1, 2, 3, 4]."])
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
        states = model(**inputs, output_hidden_states=True)
    assert torch.equal(cached, uncached)
    # an untrained LM starts a box at once here: it is the head's box, read at the prompt's last position
    start = model.config.location_token_start
    tokens = cached[:, prompt : prompt + 4] - start
    tokens[:, 1::2] -= 101
    with torch.no_grad():
        cells = model.box_head.cells(model.vision_tower(inputs["pixel_values"]))
        words = model.box_head.bag(inputs["input_ids"], inputs["instruction_mask"])
        head_boxes = model.box_head.decode(*model.box_head(cells, states.hidden_states[-1][:, -1], words))
    assert torch.equal(tokens, head_boxes)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded.generate(**inputs, max_new_tokens=6, do_sample=False), cached)
    with pytest.raises(ValueError, match="num_beams=1"):
        model.generate(**inputs, max_new_tokens=2, num_beams=2)


def test_a_tiny_model_learns_to_point_at_the_square():
    """Trained on a few thousand generated images, it boxes the square in unseen ones (acc@0.5), where the mean
    box would not."""
    from skymoe.data.boxes import parse_boxes

    tokenizer = _tokenizer()
    model, processor = _model(tokenizer, seed=0)
    rng = np.random.default_rng(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    seen = []
    for _ in range(STEPS):
        chosen = [_square(rng) for _ in range(16)]
        seen += [box for _, box in chosen]
        batch = processor.collate([_sample(box) for _, box in chosen], [image for image, _ in chosen])
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    test = [_square(rng) for _ in range(64)]
    inputs = processor.prepare_generation([image for image, _ in test], [QUESTION] * len(test))
    with torch.no_grad():
        answers = processor.decode(model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:])
    hits = []
    for answer, (_, box) in zip(answers, test):
        found = parse_boxes(answer, (SIZE, SIZE)).boxes
        hits.append(bool(found) and found[0].iou(box) >= 0.5)
    mean = Box(*np.mean([[b.x1, b.y1, b.x2, b.y2] for b in seen], axis=0))
    assert np.mean(hits) >= 0.5, answers[:4]
    assert np.mean([mean.iou(box) >= 0.5 for _, box in test]) < 0.2


@pytest.mark.parametrize("overrides, message", [
    ({"projector": {"type": "qformer"}}, "square grid"),
    ({"moe": {"num_experts": 2, "top_k": 1, "expert_type": "llm", "routing": "sequence"}}, "expert LLMs"),
])
def test_a_box_head_without_a_grid_or_with_expert_llms_is_a_config_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(box_head={"enabled": True}, **overrides)


def test_upcycling_a_box_head_model_into_expert_llms_is_refused():
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    model, _ = _model(_tokenizer())
    with pytest.raises(ValueError, match="expert LLMs"):
        SkyMoEForConditionalGeneration.upcycle(model, 2, top_k=1, expert_type="llm", routing="sequence")


def test_a_bf16_model_reads_float32_cached_features():
    """The feature cache stores float32; the head casts them as the projector does."""
    model, processor = _model(_tokenizer())
    model = model.to(torch.bfloat16).eval()
    image, _ = _square(np.random.default_rng(2))
    inputs = processor.prepare_generation([image], [QUESTION])
    features = model.vision_tower(inputs.pop("pixel_values").to(torch.bfloat16)).float()
    with torch.no_grad():
        out = model.generate(**inputs, vision_features=features, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
