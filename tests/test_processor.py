"""Tokenizer, SkyMoEProcessor (chat template, label masking, padding) and SampleDataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skymoe.data.boxes import LOC_TOKENS
from skymoe.data.processor import IGNORE_INDEX, SkyMoEProcessor
from skymoe.data.schema import Box, Sample, Turn
from skymoe.data.tokenizer import SPECIAL_TOKENS, add_skymoe_tokens, build_tokenizer, special_token_ids
from skymoe.data.torch_dataset import SampleDataset
from skymoe.errors import DataError

TEXTS = [
    "Is there a road in the image?",
    "Yes",
    "How many buildings are in [12, 40, 57, 88]?",
    "There are 17 buildings near the river.",
    "Describe the image.",
    "A dense residential area with many small houses.",
]


def vqa(sample_id="q1", question="Is there a road in the image?", answer="Yes", image="img.png"):
    return Sample(
        id=sample_id,
        image=image,
        task="vqa",
        granularity="image",
        conversation=[Turn("user", "<image>\n" + question), Turn("assistant", answer)],
    )


def two_turns():
    return Sample(
        id="c1",
        image="img.png",
        task="counting",
        granularity="region",
        conversation=[
            Turn("user", "How many buildings are in [12, 40, 57, 88]?"),
            Turn("assistant", "17"),
            Turn("user", "Is there a road?"),
            Turn("assistant", "Yes"),
        ],
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS * 3, vocab_size=400)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return SkyMoEProcessor(tokenizer, image_size=16, num_image_tokens=5, num_route_tokens=2)


def image(color=(10, 200, 30), size=(20, 12)):
    return Image.new("RGB", size, color)


# ---- tokenizer -----------------------------------------------------------------------------------


def test_build_tokenizer_fixes_special_ids_lowercases_and_splits_digits(tokenizer):
    assert special_token_ids(tokenizer) == {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "image": 4, "route": 5}
    tokens = tokenizer.tokenize("Box [12, 407]")
    assert [t for t in tokens if any(c.isdigit() for c in t)] == ["1", "2", "4", "0", "7"]
    assert tokenizer.decode(tokenizer("Box [12, 407]")["input_ids"]) == "box [12, 407]"
    ids = tokenizer("<image><route> road", add_special_tokens=False)["input_ids"]
    assert ids[:2] == [4, 5]


def test_tokenizer_round_trips_through_save(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "how many buildings are in [12, 40, 57, 88]? <image>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert special_token_ids(loaded) == special_token_ids(tokenizer)


def test_add_skymoe_tokens_to_a_gpt2_style_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False))
    gpt2_like = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    before = len(gpt2_like)
    add_skymoe_tokens(gpt2_like)
    ids = special_token_ids(gpt2_like)
    assert gpt2_like.bos_token == gpt2_like.eos_token == "<|endoftext|>"  # its own roles are kept
    assert gpt2_like.pad_token == SPECIAL_TOKENS["pad"]
    assert {ids["image"], ids["route"], ids["pad"]} == set(range(before, before + 3))
    assert gpt2_like("<image> road", add_special_tokens=False)["input_ids"][0] == ids["image"]
    assert gpt2_like("<x_7><y_100>", add_special_tokens=False)["input_ids"] == gpt2_like.convert_tokens_to_ids(["<x_7>", "<y_100>"])
    add_skymoe_tokens(gpt2_like)  # idempotent
    assert len(gpt2_like) == before + 3 + len(LOC_TOKENS)


def test_real_gpt2_bpe_gets_the_skymoe_tokens():
    from skymoe.data.tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    ids = special_token_ids(tokenizer)
    assert ids["bos"] == ids["eos"] == 50256  # <|endoftext|>
    assert sorted([ids["pad"], ids["image"], ids["route"]]) == [50257, 50258, 50259]
    assert tokenizer("Is there a road?", add_special_tokens=False)["input_ids"] == [3792, 612, 257, 2975, 30]
    processor = SkyMoEProcessor(tokenizer, image_size=16, num_image_tokens=3, num_route_tokens=1)
    batch = processor.collate([vqa()], [image()])
    labels = batch["labels"][0]
    assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == " Yes<|endoftext|>"


def test_special_token_ids_demands_placeholders():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=100, special_tokens=["[UNK]"], show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(ValueError, match="add_skymoe_tokens"):
        special_token_ids(plain)


# ---- processor -----------------------------------------------------------------------------------


def test_layout_labels_and_instruction_mask(processor, tokenizer):
    batch = processor.collate([vqa()], [image()])
    ids, labels, instr = batch["input_ids"][0], batch["labels"][0], batch["instruction_mask"][0]
    assert ids[:8].tolist() == [1, 5, 5, 4, 4, 4, 4, 4]  # <s> <route>x2 <image>x5
    assert tokenizer.decode(ids[8:]) == "user: is there a road in the image?\nassistant: yes</s>"
    supervised = labels[labels != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " yes</s>"
    assert ids[-len(supervised) :].tolist() == supervised.tolist()  # the answer is the supervised tail
    assert tokenizer.decode(ids[instr.bool()]) == "is there a road in the image?"  # <image> text removed
    assert batch["task_labels"].tolist() == [1] and batch["granularity_labels"].tolist() == [0]


def test_multi_turn_supervises_every_answer_only(processor, tokenizer):
    batch = processor.collate([two_turns()], [image()])
    labels = batch["labels"][0]
    assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == " 17</s> yes</s>"
    instruction = batch["input_ids"][0][batch["instruction_mask"][0].bool()]
    # the box is read as four location tokens, and decoded back to the canonical text
    assert tokenizer.decode(instruction) == "how many buildings are in <x_12><y_40><x_57><y_88>?is there a road?"
    assert processor.decode([instruction])[0] == "how many buildings are in [12, 40, 57, 88]?is there a road?"
    assert batch["task_labels"].tolist() == [6] and batch["granularity_labels"].tolist() == [1]


def test_right_padding_for_training(processor):
    batch = processor.collate([vqa(answer="Yes"), two_turns()], [image(), image()])
    short = batch["attention_mask"][0]
    n = int(short.sum())
    assert short[:n].all() and not short[n:].any()
    assert (batch["input_ids"][0][n:] == 0).all()  # <pad>
    assert (batch["labels"][0][n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].all()


def test_pixel_values_are_resized_and_normalised(processor):
    pixels = processor.preprocess_images([image((255, 0, 51), size=(40, 30))])
    assert pixels.shape == (1, 3, 16, 16)
    mean, std = processor.image.image_mean, processor.image.image_std
    expected = [(1.0 - mean[0]) / std[0], (0.0 - mean[1]) / std[1], (0.2 - mean[2]) / std[2]]
    assert torch.allclose(pixels[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    with pytest.raises(TypeError, match="PIL"):
        processor.preprocess_images([np.zeros((4, 4, 3))])


def test_generation_inputs_are_left_padded_and_end_with_the_assistant_cue(processor, tokenizer):
    prompts = ["Is there a road?", [Turn("user", "How many buildings?"), Turn("assistant", "17"), Turn("user", "And roads?")]]
    batch = processor.prepare_generation([image(), image()], prompts, tasks=["vqa", "counting"])
    assert "labels" not in batch
    first = batch["input_ids"][0]
    n = int(batch["attention_mask"][0].sum())
    assert (first[: len(first) - n] == 0).all() and first[len(first) - n] == 1  # left pad, then <s>
    for row in batch["input_ids"]:
        assert tokenizer.decode(row, skip_special_tokens=True).endswith("?\nassistant:")
    assert tokenizer.decode(batch["input_ids"][1][batch["instruction_mask"][1].bool()]) == "how many buildings?and roads?"
    assert batch["task_labels"].tolist() == [1, 6]
    with pytest.raises(ValueError, match="user turn"):
        processor.prepare_generation([image()], [[Turn("user", "q"), Turn("assistant", "a")]])


def test_bad_samples_raise_typed_errors(tokenizer):
    processor = SkyMoEProcessor(tokenizer, image_size=16, num_image_tokens=5, max_length=20)
    with pytest.raises(DataError, match="max_length"):
        processor.encode(vqa())
    unanswered = vqa()
    unanswered.conversation = unanswered.conversation[:1]
    with pytest.raises(DataError, match="q1.*assistant"):
        processor.encode(unanswered)
    with pytest.raises(ValueError, match="2 samples but 1 images"):
        processor.collate([vqa(), vqa()], [image()])


def test_processor_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = SkyMoEProcessor.from_pretrained(tmp_path)
    a = processor.collate([two_turns()], [image()])
    b = loaded.collate([two_turns()], [image()])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        SkyMoEProcessor.from_pretrained(tmp_path / "missing")


def test_from_model_config_matches_the_model(tokenizer):
    from skymoe.model.build import tiny_config

    config = tiny_config(image_size=24, num_route_tokens=3)
    processor = SkyMoEProcessor.from_model_config(config, tokenizer)
    batch = processor.collate([vqa()], [image()])
    assert int((batch["input_ids"] == config.image_token_id).sum()) == config.num_image_tokens == 9
    assert int((batch["input_ids"] == config.route_token_id).sum()) == 3
    assert batch["pixel_values"].shape[-1] == 24


# ---- torch dataset -------------------------------------------------------------------------------


def write_images(tmp_path):
    good = tmp_path / "good.png"
    image((100, 120, 140), size=(30, 30)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:40])
    return str(good), str(corrupt), str(tmp_path / "missing.png")


def test_dataset_over_real_rsvqa_samples(processor):
    from torch.utils.data import DataLoader

    from skymoe.data.datasets import load_dataset
    from skymoe.data.imagery import load_image

    samples = load_dataset("rsvqa_lr", "train")[:4]
    dataset = SampleDataset(samples, processor)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)))
    direct = processor.collate(samples, [load_image(s.image) for s in samples])
    assert batch.keys() == direct.keys() and all(torch.equal(batch[k], direct[k]) for k in batch)
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].std() > 0.1
    for row, sample in enumerate(samples):  # every answer is exactly what is supervised
        labels = batch["labels"][row]
        assert processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == " " + sample.answer.lower() + "</s>"


def test_dataset_is_deterministic(processor, tmp_path):
    good, _, _ = write_images(tmp_path)
    samples = [vqa("a", image=good), two_turns()]
    samples[1].image = good
    dataset = SampleDataset(samples, processor)
    first = dataset.collate([dataset[0], dataset[1]])
    again = dataset.collate([dataset[0], dataset[1]])
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_dataset_raises_on_bad_images_by_default(processor, tmp_path):
    _, corrupt, missing = write_images(tmp_path)
    for path in (corrupt, missing):
        dataset = SampleDataset([vqa("bad", image=path)], processor)
        with pytest.raises(DataError, match=f"record bad.*{path}"):
            dataset[0]


@pytest.mark.parametrize("image_size", [None, (1000, 1000)], ids=["no image_size", "wrong image_size"])
def test_dataset_checks_boxes_against_the_opened_image(processor, tmp_path, image_size):
    """A box outside the real image is caught before training even when image_size is absent or wrong."""
    good, _, _ = write_images(tmp_path)  # 30 x 30
    inside, outside = vqa("inside", image=good), vqa("outside", image=good)
    inside.boxes, outside.boxes = [Box(2, 2, 20, 20)], [Box(10, 10, 500, 500)]
    outside.image_size = image_size
    dataset = SampleDataset([inside, outside], processor, on_error="skip")
    assert dataset[0] is not None and dataset[1] is None
    assert "lies outside the image of size 30x30" in dataset.skipped["outside"]


def test_dataset_skip_counts_and_reports(processor, tmp_path):
    good, corrupt, missing = write_images(tmp_path)
    samples = [vqa("ok", image=good), vqa("broken", image=corrupt), vqa("gone", image=missing)]
    dataset = SampleDataset(samples, processor, on_error="skip")
    batch = dataset.collate([dataset[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 1
    assert set(dataset.skipped) == {"broken", "gone"}
    assert "skipped gone" in dataset.report()
    assert dataset.collate([dataset[1]]) is None
    assert len(dataset.skipped) == 2  # a sample seen twice is counted once
    with pytest.raises(ValueError, match="on_error"):
        SampleDataset(samples, processor, on_error="ignore")


def test_blind_processor_gives_every_image_the_same_pixels_and_keeps_the_setting(tokenizer, tmp_path):
    blind = SkyMoEProcessor(tokenizer, image_size=16, num_image_tokens=5, blind=True)
    pixels = blind.preprocess_images([image((10, 200, 30)), image((250, 0, 0), size=(40, 40))])
    assert torch.equal(pixels[0], pixels[1]) and float(pixels.abs().max()) == 0.0  # the mean image, normalised
    seeing = SkyMoEProcessor(tokenizer, image_size=16, num_image_tokens=5).preprocess_images([image((10, 200, 30)), image((250, 0, 0))])
    assert not torch.equal(seeing[0], seeing[1])
    blind.save_pretrained(tmp_path)
    assert SkyMoEProcessor.from_pretrained(tmp_path).blind
