"""Readers of the native formats: real embedded data where it exists, files written here otherwise."""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from skymoe.data.boxes import format_box
from skymoe.data.readers.bigearthnet import LABEL_SEPARATOR, decode_patch, read_bigearthnet
from skymoe.data.readers.captions import read_karpathy
from skymoe.data.readers.conversation import read_conversations, to_llava_record, write_conversations
from skymoe.data.readers.dior_rsvg import read_dior_rsvg
from skymoe.data.readers.hrvqa import read_hrvqa
from skymoe.data.readers.image_folder import read_image_folder
from skymoe.data.readers.rsvqa import count_bin, read_rsvqa
from skymoe.data.schema import Box, Granularity, Sample, Task
from skymoe.errors import DataError


# ---------------------------------------------------------------- RSVQA (real)
@pytest.mark.parametrize(
    "asset, splits, types",
    [
        ("rsvqa_lr", {"train": 300, "val": 500, "test": 400}, {"presence", "comp", "count", "rural_urban"}),
        ("rsvqa_hr", {"train": 400, "val": 300, "test": 300, "test_phili": 201}, {"presence", "comp", "count", "area"}),
    ],
)
def test_rsvqa_real_splits(real_assets, asset, splits, types):
    images_per_split = []
    for split, n in splits.items():
        samples = read_rsvqa(real_assets[asset], split)
        assert len(samples) == n and samples.skipped == {}
        assert samples.excluded["inactive image entry"] > 0  # the JSON lists inactive placeholder images
        assert {s.question_type for s in samples} == types
        assert {s.task for s in samples} == {Task.VQA} and {s.granularity for s in samples} == {Granularity.IMAGE}
        assert all(Path(s.image).is_file() and s.split == split and s.dataset == asset for s in samples)
        images_per_split.append({s.image for s in samples})
    assert sum(map(len, images_per_split)) == 12 and len(set().union(*images_per_split)) == 12  # splits share no image


def test_rsvqa_count_answers_exact_and_binned(real_assets):
    samples = read_rsvqa(real_assets["rsvqa_lr"], "train")
    counts = [s for s in samples if s.question_type == "count"]
    assert len(counts) == 73
    for s in counts:
        assert s.answer.isdigit() and s.meta["answer_bin"] == count_bin(int(s.answer))
    by_answer = {s.answer: s.meta["answer_bin"] for s in counts}
    assert by_answer["0"] == "0" and by_answer["69"] == "11-100" and by_answer["442"] == "101-1000"
    assert all("answer_bin" not in s.meta for s in samples if s.question_type != "count")
    lr = read_rsvqa(real_assets["rsvqa_lr"], "train")[0]
    assert lr.image_size == (256, 256) and lr.question == "Is it a rural or an urban area" and lr.answer == "rural"


def test_count_bins():
    assert [count_bin(v) for v in (0, 1, 10, 11, 100, 101, 1000, 1001)] == ["0", "1-10", "1-10", "11-100", "11-100", "101-1000", "101-1000", ">1000"]


def test_rsvqa_hr_area_bins(real_assets):
    areas = [s for s in read_rsvqa(real_assets["rsvqa_hr"], "train") if s.question_type == "area"]
    assert len(areas) == 65
    assert {s.meta["answer_bin"] for s in areas if s.answer == "0m2"} == {"0m2"}
    assert next(s for s in areas if s.answer == "859m2").meta["answer_bin"] == "101-1000m2"


def _copy_rsvqa(real_assets, tmp_path) -> Path:
    root = tmp_path / "lr"
    shutil.copytree(real_assets["rsvqa_lr"], root)
    return root


def test_rsvqa_inactive_questions_are_excluded_and_counted(real_assets, tmp_path):
    root = _copy_rsvqa(real_assets, tmp_path)
    qfile = root / "LR_split_train_questions.json"
    data = json.loads(qfile.read_text())
    for q in data["questions"][:7]:
        q["active"] = False
    qfile.write_text(json.dumps(data))
    samples = read_rsvqa(root, "train")
    assert len(samples) == 293 and samples.excluded["inactive question"] == 7


def test_rsvqa_bad_input(real_assets, tmp_path, caplog):
    root = _copy_rsvqa(real_assets, tmp_path)
    qfile = root / "LR_split_train_questions.json"
    data = json.loads(qfile.read_text())
    data["questions"][3]["type"] = "colour"
    bad_id = data["questions"][3]["id"]
    qfile.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown question type 'colour'") as err:
        read_rsvqa(root, "train")
    assert err.value.file == str(qfile) and err.value.record == bad_id and err.value.field == "type"
    with caplog.at_level(logging.WARNING, logger="skymoe.data"):
        samples = read_rsvqa(root, "train", on_error="skip")
    assert len(samples) == 299 and list(samples.skipped) == [str(bad_id)]
    assert "skipped 1 bad record" in caplog.text

    (root / "Images_LR" / "72.tif").write_bytes(b"")  # 0-byte image: all its 100 questions
    with pytest.raises(DataError, match="0 bytes"):
        read_rsvqa(root, "train")
    assert len(read_rsvqa(root, "train", on_error="skip").skipped) == 100

    (root / "LR_split_val_answers.json").write_text('{"answers": [')
    with pytest.raises(DataError, match="malformed JSON") as err:
        read_rsvqa(root, "val")
    assert "LR_split_val_answers.json" in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        read_rsvqa(root, "nosuchsplit")


# ---------------------------------------------------------------- HRVQA, BigEarthNet (real)
def test_hrvqa_real(real_assets):
    train = read_hrvqa(real_assets["hrvqa"], "train")
    assert len(train) == 5 and all(s.image_size == (1024, 1024) for s in train)
    assert Counter(s.question_type for s in train) == {"size": 2, "scene": 1, "areas": 1, "location": 1}
    assert [s.answer for s in train] == ["highdensity", "nonexistent", "0.0m2", "topleft", "nonexistent"]
    test = read_hrvqa(real_assets["hrvqa"], "test")  # no public answers: question-only samples
    assert len(test) == 5 and all(s.answer == "" and len(s.conversation) == 1 for s in test)


def test_bigearthnet_real(real_assets, tmp_path):
    samples = read_bigearthnet(real_assets["bigearthnet"], "train", derived_dir=tmp_path)
    assert len(samples) == 10
    for s in samples:
        assert s.task == Task.MULTILABEL and s.image_size == (120, 120)
        assert s.meta["labels"] == sorted(s.meta["labels"]) and s.answer == LABEL_SEPARATOR.join(s.meta["labels"])
        with Image.open(s.image) as im:
            assert im.size == (120, 120) and im.mode == "RGB"
            assert max(im.getextrema()[0]) == 255  # stretched to the 8-bit range
    old = read_bigearthnet(real_assets["bigearthnet"], "train", labels="43", derived_dir=tmp_path)
    assert [s.id for s in old] == [s.id for s in samples] and old[0].answer != samples[0].answer


def test_bigearthnet_refuses_foreign_pickles():
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match="cannot decode BigEarthNet patch") as err:
        decode_patch(pickle.dumps(Evil()), file="x.lmdb", record="p1")
    assert err.value.record == "p1"


def test_bigearthnet_missing_patch(real_assets, tmp_path):
    root = tmp_path / "ben"
    shutil.copytree(real_assets["bigearthnet"], root)
    (root / "val.csv").write_text("S2_NOT_A_PATCH\n" + (root / "val.csv").read_text())
    with pytest.raises(DataError, match="patch not in the LMDB"):
        read_bigearthnet(root, "val", derived_dir=tmp_path / "d")
    samples = read_bigearthnet(root, "val", derived_dir=tmp_path / "d", on_error="skip")
    assert len(samples) == 10 and list(samples.skipped) == ["S2_NOT_A_PATCH"]


# ---------------------------------------------------------------- Karpathy captions (real text)
def karpathy_from_shared(shared_dir: Path, folder: Path, n_images: int = 6) -> Path:
    """A Karpathy JSON of the first UCM test images (real captions), with small stand-in images."""
    captions = (shared_dir / "data" / "captions" / "ucm_test_caps.txt").read_text().splitlines()
    names = (shared_dir / "data" / "captions" / "ucm_test_filename.txt").read_text().splitlines()
    images = []
    for k in range(n_images):
        name = names[5 * k]
        assert names[5 * k : 5 * k + 5] == [name] * 5
        sentences = [{"raw": c, "tokens": c.lower().rstrip(" .").split()} for c in captions[5 * k : 5 * k + 5]]
        images.append({"filename": name, "imgid": k, "split": "test", "sentences": sentences, "sentids": list(range(5 * k, 5 * k + 5))})
        (folder / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (k * 40, 90, 120)).save(folder / "images" / name)
    path = folder / "dataset_ucm.json"
    path.write_text(json.dumps({"images": images, "dataset": "ucm"}))
    return path


def test_karpathy_captions(shared_dir, tmp_path):
    path = karpathy_from_shared(shared_dir, tmp_path)
    captions = (shared_dir / "data" / "captions" / "ucm_test_caps.txt").read_text().splitlines()
    samples = read_karpathy(path, "test")
    assert len(samples) == 6 and read_karpathy(path, "train") == []
    assert samples[0].task == Task.CAPTION and samples[0].answer == captions[0].strip()
    assert samples[1].meta["references"] == [c.strip() for c in captions[5:10]]
    assert len(read_karpathy(path, "test", per_sentence=True)) == 30


def test_karpathy_bad_input(shared_dir, tmp_path):
    path = karpathy_from_shared(shared_dir, tmp_path)
    data = json.loads(path.read_text())
    data["images"][2]["sentences"] = []
    (tmp_path / "images" / data["images"][4]["filename"]).unlink()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="no .*caption sentence") as err:
        read_karpathy(path, "test")
    assert err.value.record == "2" and err.value.field == "sentences"
    samples = read_karpathy(path, "test", on_error="skip")
    assert len(samples) == 4 and set(samples.skipped) == {"2", "4"}
    assert "image file not found" in samples.skipped["4"]


# ---------------------------------------------------------------- DIOR-RSVG (XML written here)
DIOR_XML = """<annotation><filename>{name}.jpg</filename><size><width>800</width><height>800</height><depth>3</depth></size>
{objects}</annotation>"""
DIOR_OBJECT = """<object><name>{cls}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
<description>{desc}</description></object>"""


def write_dior(root: Path, files: dict[str, list[tuple]], splits: dict[str, list[int]]) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    # written in reverse name order: the reader must sort before applying indices
    for name in sorted(files, reverse=True):
        objects = "".join(DIOR_OBJECT.format(cls=c, x1=b[0], y1=b[1], x2=b[2], y2=b[3], desc=d) for c, b, d in files[name])
        (root / "Annotations" / f"{name}.xml").write_text(DIOR_XML.format(name=name, objects=objects))
        Image.new("RGB", (8, 8)).save(root / "JPEGImages" / f"{name}.jpg")
    for split, indices in splits.items():
        (root / f"{split}.txt").write_text("\n".join(map(str, indices)) + "\n")
    return root


DIOR_FILES = {
    "00002": [("ship", (400, 400, 480, 440), "the ship on the right")],
    "00001": [("vehicle", (10, 20, 50, 60), "a white vehicle"), ("airplane", (100, 100, 300, 260), "the large airplane")],
}


def test_dior_rsvg_sorted_indices(tmp_path):
    root = write_dior(tmp_path / "dior", DIOR_FILES, {"train": [0, 2], "test": [1]})
    train = read_dior_rsvg(root, "train")
    assert [s.meta["description"] for s in train] == ["a white vehicle", "the ship on the right"]
    test = read_dior_rsvg(root, "test")[0]
    assert test.task == Task.GROUNDING and test.granularity == Granularity.OBJECT
    assert test.question == "Give the bounding box of: the large airplane"
    assert test.answer == "[12, 12, 38, 32]" == format_box(test.boxes[0], (800, 800))
    assert test.boxes[0] == Box(100, 100, 300, 260, "airplane")
    region = read_dior_rsvg(root, "test", task="region_caption")[0]
    assert region.question == "Describe the object in [12, 12, 38, 32]." and region.answer == "the large airplane"


def test_dior_rsvg_bad_input(tmp_path):
    files = {**DIOR_FILES, "00003": [("tank", (700, 700, 900, 750), "a tank outside the image")]}
    root = write_dior(tmp_path / "dior", files, {"train": [0, 3, 9]})
    with pytest.raises(DataError, match="outside the image") as err:
        read_dior_rsvg(root, "train")
    assert err.value.file.endswith("00003.xml") and err.value.field == "boxes"
    samples = read_dior_rsvg(root, "train", on_error="skip")
    assert len(samples) == 1 and set(samples.skipped) == {"3", "9"}
    assert "out of range" in samples.skipped["9"]
    (root / "Annotations" / "00004.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="malformed XML"):
        read_dior_rsvg(root, "train")


# ---------------------------------------------------------------- GeoChat / LLaVA conversations
def conversation_records():
    return [
        {"id": "a", "image": "scene.png", "conversations": [
            {"from": "human", "value": "<image>\n[refer] give me the location of <p>the ship</p>"},
            {"from": "gpt", "value": "{<10><20><30><40>|<0>}"}]},
        {"id": "b", "image": "scene.png", "conversations": [
            {"from": "human", "value": "[identify] what is in {<50><50><60><70>|<0>}?"},
            {"from": "gpt", "value": "a storage tank"},
            {"from": "human", "value": "[vqa] what colour is it?"},
            {"from": "gpt", "value": "white"}]},
        {"id": "c", "image": "scene.png", "conversations": [
            {"from": "human", "value": "<image>\n[caption] Describe the image."}, {"from": "gpt", "value": "A harbour."}]},
        {"id": "d", "image": "scene.png", "conversations": [
            {"from": "human", "value": "<image>\nIs there a ship?"}, {"from": "gpt", "value": "yes"}]},
    ]  # fmt: skip


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_conversations(tmp_path, suffix):
    Image.new("RGB", (200, 100)).save(tmp_path / "scene.png")
    path = tmp_path / f"geochat{suffix}"
    records = conversation_records()
    path.write_text(json.dumps(records) if suffix == ".json" else "\n".join(json.dumps(r) for r in records))
    a, b, c, d = read_conversations(path)
    assert (a.task, a.granularity) == (Task.GROUNDING, Granularity.OBJECT)
    assert a.question == "give me the location of <p>the ship</p>" and a.answer == "[10, 20, 30, 40]"
    assert a.boxes == [Box(20, 20, 60, 40)]
    assert (b.task, b.granularity) == (Task.REGION_CAPTION, Granularity.OBJECT) and len(b.conversation) == 4
    assert b.question == "what is in [50, 50, 60, 70]?" and b.answer == "white" and b.boxes == [Box(100, 50, 120, 70)]
    assert (c.task, c.granularity, c.question) == (Task.CAPTION, Granularity.IMAGE, "Describe the image.")
    assert (d.task, d.question) == (Task.VQA, "Is there a ship?")


def test_conversation_write_read_round_trip(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "scene.png")
    (tmp_path / "in.json").write_text(json.dumps(conversation_records()))
    samples = read_conversations(tmp_path / "in.json", dataset="geo")
    record = to_llava_record(samples[0], image_root=tmp_path)
    assert record == {"id": "geo/a", "image": "scene.png", "conversations": [
        {"from": "human", "value": "<image>\n[refer] give me the location of <p>the ship</p>"},
        {"from": "gpt", "value": "{<10><20><30><40>|<0>}"}]}  # fmt: skip
    assert write_conversations(samples, tmp_path / "out.jsonl", image_root=tmp_path) == 4
    again = read_conversations(tmp_path / "out.jsonl", dataset="geo")
    assert [(s.task, s.granularity, s.conversation, s.boxes) for s in again] == [
        (s.task, s.granularity, s.conversation, s.boxes) for s in samples
    ]


def test_schema_jsonl_keeps_relative_images_readable_from_the_file(tmp_path, monkeypatch):
    """Samples read through a relative annotation path must still find their images once written elsewhere."""
    from skymoe.data.schema import read_jsonl, write_jsonl

    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(tmp_path / "data" / "images" / "scene.png")
    (tmp_path / "data" / "images" / "in.json").write_text(json.dumps(conversation_records()))
    monkeypatch.chdir(tmp_path)
    samples = read_conversations("data/images/in.json", dataset="geo")
    write_jsonl(samples, "data/converted.jsonl")
    again = list(read_jsonl("data/converted.jsonl"))
    assert [Path(s.image) for s in again] == [(tmp_path / "data" / "images" / "scene.png").resolve()] * len(samples)


def test_conversation_bad_input(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "scene.png")
    records = conversation_records()
    records[1]["conversations"] = []
    records[2]["conversations"][1]["value"] = "{<10><20><130><40>|<0>}"  # outside the 0-100 range
    records[3]["image"] = "missing.png"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    with pytest.raises(DataError, match="conversation is empty") as err:
        read_conversations(path)
    assert err.value.record == "line 2" and err.value.field == "conversations" and err.value.file == str(path)
    samples = read_conversations(path, on_error="skip")
    assert [s.id for s in samples] == ["bad/a"]
    assert set(samples.skipped) == {"line 2", "line 3", "line 4", "line 5"}
    assert "malformed geochat box" in samples.skipped["line 3"]
    assert "missing.png" in samples.skipped["line 4"] and "malformed JSON" in samples.skipped["line 5"]


# ---------------------------------------------------------------- image folders
def test_image_folder(tmp_path):
    for cls, n in (("dense_residential", 2), ("harbor", 3)):
        (tmp_path / "ucm" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16)).save(tmp_path / "ucm" / cls / f"{cls}{i:02d}.tif")
    samples = read_image_folder(tmp_path / "ucm")
    assert Counter(s.answer for s in samples) == {"dense residential": 2, "harbor": 3}
    assert all(s.task == Task.CLASSIFICATION for s in samples)
    only = read_image_folder(tmp_path / "ucm", classes={"harbor": "harbour"}, on_error="skip")
    assert [s.answer for s in only] == ["harbour"] * 3 and len(only.skipped) == 2
    with pytest.raises(DataError, match="not one of the classes"):
        read_image_folder(tmp_path / "ucm", classes=["harbor"])
    with pytest.raises(DataError, match="class folders \\['airport'\\] not found"):
        read_image_folder(tmp_path / "ucm", classes=["harbor", "airport"])
    (tmp_path / "ucm" / "harbor" / "harbor01.tif").write_bytes(b"GIF89a truncated")
    with pytest.raises(DataError) as err:
        read_image_folder(tmp_path / "ucm")
    assert "harbor01.tif" in str(err.value)


# ---------------------------------------------------------------- SkyMoE JSONL schema
def sample_record(**changes) -> dict:
    record = {
        "id": "r1", "image": "scene.png", "task": "vqa", "granularity": "image", "image_size": [128, 64],
        "conversation": [{"role": "user", "text": "what?"}, {"role": "assistant", "text": "a field"}],
    }  # fmt: skip
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"image_size": "big"}, "image_size", "expected \\[width, height\\] as two positive integers"),
        ({"image_size": [128]}, "image_size", "expected \\[width, height\\] as two positive integers"),
        ({"image_size": [128, 0]}, "image_size", "expected \\[width, height\\] as two positive integers"),
        ({"image_size": [128, True]}, "image_size", "expected \\[width, height\\] as two positive integers"),
        ({"conversation": [{"role": "user", "text": "q"}, {"role": "assistant", "text": None}]}, "conversation[1].text", "expected a string"),
        ({"conversation": [{"role": "user"}]}, "conversation[0]", "expected an object with 'role' and 'text'"),
        ({"conversation": "hi"}, "conversation", "expected a list"),
        ({"meta": "m"}, "meta", "expected an object"),
        ({"boxes": [{"xyxy": [1, 2, 3]}]}, "boxes", "malformed box"),
    ],
)
def test_sample_from_dict_names_the_malformed_field(changes, field, message):
    with pytest.raises(DataError, match=message) as err:
        Sample.from_dict(sample_record(**changes), file="data.jsonl")
    assert (err.value.file, err.value.record, err.value.field) == ("data.jsonl", "r1", field)


def test_sample_checks_image_size_when_built_directly():
    with pytest.raises(DataError, match="two positive integers") as err:
        Sample("r2", "x.png", Task.VQA, Granularity.IMAGE, [], image_size=("big",))
    assert err.value.record == "r2" and err.value.field == "image_size"
    assert Sample("r3", "x.png", Task.VQA, Granularity.IMAGE, [], image_size=[128, 64]).image_size == (128, 64)
