"""The Python inference API: every image kind, batching, routing, box parsing, labels, int8."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _infer_helpers import save_tiny_model, script_answers, write_geotiff
from skymoe.data.schema import TASKS, GRANULARITIES, Box
from skymoe.errors import DataError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def pipeline(model_dir):
    from skymoe.infer import Pipeline

    return Pipeline.from_pretrained(model_dir, max_new_tokens=6, batch_size=3)


@pytest.fixture
def pixels():
    return np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)


def test_every_image_kind_gives_the_same_answer(pipeline, pixels, tmp_path):
    import rasterio

    Image.fromarray(pixels).save(tmp_path / "a.png")
    tif = tmp_path / "a.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=56, height=40, count=3, dtype="uint8") as dst:
        dst.write(pixels.transpose(2, 0, 1))
    expected = pipeline.caption(Image.fromarray(pixels)).text
    assert pipeline.caption(pixels).text == expected
    assert pipeline.caption(str(tmp_path / "a.png")).text == expected
    assert pipeline.caption(tif).text == expected
    with rasterio.open(tif) as dataset:
        assert pipeline.caption(dataset).text == expected


def test_batched_answers_equal_one_by_one_answers(pipeline):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(5)]  # 2 batches of 3
    questions = ["Is there a ship?", "How many buildings are there in the image?", "What is it?", "Is it a port?", "Describe this image."]
    batched = pipeline.ask(images, questions)
    assert [a.text for a in batched] == [pipeline.ask(im, q).text for im, q in zip(images, questions)]


def test_streamed_pieces_rebuild_each_answer_of_a_batch_token_by_token(pipeline):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)]  # batches of 3 + 1
    pieces: dict[int, list[str]] = {}
    answers = pipeline.ask(images, "Describe this image.", on_text=lambda i, text: pieces.setdefault(i, []).append(text))
    for i, answer in enumerate(answers):
        assert "".join(pieces.get(i, [])) == answer.text
    assert max(len(p) for p in pieces.values()) > 1  # token by token, not one finished string


def test_routing_decision_is_a_distribution_per_moe_layer(pipeline, pixels):
    answer = pipeline.count(pixels, "buildings", routing=True)
    weights = np.array(answer.routing.expert_weights)
    assert weights.shape == (2, 4) and np.allclose(weights.sum(1), 1.0, atol=1e-4) and (weights >= 0).all()
    assert answer.routing.task in {t.value for t in TASKS} and answer.routing.granularity in {g.value for g in GRANULARITIES}
    assert pipeline.count(pixels, "buildings").routing is None


def test_grounding_answer_becomes_pixel_boxes(model_dir, pixels):
    from skymoe.infer import Pipeline

    pipe = Pipeline.from_pretrained(model_dir)
    script_answers(pipe, "[25, 50, 75, 100]; [0, 0, 10, 10]")
    (first, second) = pipe.ground([pixels, pixels[:20]], ["the tank", "the ship"])
    assert [b.as_tuple() for b in first.boxes] == [(14.0, 20.0, 42.0, 40.0), pytest.approx((0.0, 0.0, 5.6, 4.0))]
    assert second.image_size == (56, 20) and second.boxes[0] == Box(14.0, 10.0, 42.0, 20.0)
    script_answers(pipe, "there are 7 buildings")
    assert pipe.count(pixels, "buildings").count == 7
    script_answers(pipe, "no box here")
    assert pipe.ground(pixels, "the tank").boxes == []


def test_describe_region_puts_the_box_in_canonical_text(model_dir, pixels):
    from skymoe.infer import Pipeline

    pipe = Pipeline.from_pretrained(model_dir, max_new_tokens=2)  # only the prompts are checked
    seen = []
    original = pipe.processor.prepare_generation
    pipe.processor.prepare_generation = lambda images, prompts: seen.extend(prompts) or original(images, prompts)
    pipe.describe_region(pixels, (14, 10, 42, 40))
    assert seen == ["Describe the region [25, 25, 75, 100]."]
    with pytest.raises(DataError, match="outside the image"):
        pipe.describe_region(pixels, (0, 0, 100, 10))
    seen.clear()  # a list of images: one box for all, or one per image
    assert len(pipe.describe_region([pixels, pixels], (14, 10, 42, 40))) == 2 and seen == ["Describe the region [25, 25, 75, 100]."] * 2
    seen.clear()
    pipe.describe_region([pixels, pixels], [(14, 10, 42, 40), (0, 0, 28, 20)])
    assert seen == ["Describe the region [25, 25, 75, 100].", "Describe the region [0, 0, 50, 50]."]
    seen.clear()  # numpy boxes, as a detector hands them over
    pipe.describe_region(pixels, np.array([14, 10, 42, 40], np.float32))
    pipe.describe_region([pixels, pixels], np.array([14, 10, 42, 40]))
    assert seen == ["Describe the region [25, 25, 75, 100]."] * 3


def test_classify_with_labels_picks_the_most_likely_label(pipeline, pixels):
    labels = ["forest", "river", "harbour"]
    scores = pipeline.label_scores(pixels, labels)
    answer = pipeline.classify(pixels, labels, routing=True)
    assert answer.text == max(scores, key=scores.get) and answer.routing is not None
    assert all(s < 0 for s in scores.values()) and len(set(scores.values())) == 3


def test_bad_inputs_are_clear_errors(pipeline, pixels, tmp_path):
    with pytest.raises(ValueError, match="empty prompt"):
        pipeline.ask(pixels, "   ")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes"):
        pipeline.caption(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png"):
        pipeline.caption(tmp_path / "text.png")
    with pytest.raises(ValueError, match="2 images but 3"):
        pipeline.ask([pixels, pixels], ["a?", "b?", "c?"])


def test_multiband_geotiffs(pipeline, tmp_path):
    assert pipeline.caption(write_geotiff(tmp_path / "s2.tif", 30, 30, bands=13, dtype="uint16")).text is not None
    assert pipeline.caption(write_geotiff(tmp_path / "dem.tif", 30, 30, bands=1, dtype="float32")).image_size == (30, 30)


def test_bands_pick_the_rgb_of_rasters_and_leave_rgb_images_alone(model_dir, tmp_path):
    import rasterio

    from skymoe.data.imagery import load_image
    from skymoe.infer import Pipeline

    s2 = write_geotiff(tmp_path / "s2.tif", 30, 30, bands=13, dtype="uint16")
    pipe = Pipeline.from_pretrained(model_dir, bands=(4, 3, 2), max_new_tokens=2)
    chosen = np.asarray(pipe.load(s2))
    assert np.array_equal(chosen, np.asarray(load_image(s2, bands=[4, 3, 2])))
    assert not np.array_equal(chosen, np.asarray(load_image(s2)))  # not the default bands 1, 2, 3
    with rasterio.open(s2) as dataset:
        assert np.array_equal(np.asarray(pipe.load(dataset)), chosen)
    rgb = load_image(s2)
    rgb.save(tmp_path / "rgb.png")
    assert np.array_equal(np.asarray(pipe.load(tmp_path / "rgb.png")), np.asarray(rgb))  # PNG and PIL are RGB already
    assert np.array_equal(np.asarray(pipe.load(rgb)), np.asarray(rgb))
    assert pipe.caption(s2).text == pipe.caption(Image.fromarray(chosen)).text
    with pytest.raises(DataError, match=r"rgb3\.tif.*bands \[4, 3, 2\] invalid"):
        pipe.caption(write_geotiff(tmp_path / "rgb3.tif", 30, 30, bands=3))


@pytest.mark.parametrize("text", ["0", "4,3", "a,b,c", "4,3,-2"])
def test_cli_bands_must_be_one_or_three_band_numbers(text, capsys):
    from skymoe.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", "m", "--image", "i.tif", "--bands", text])
    assert exit_.value.code == 2 and "expected one or three 1-based band numbers" in capsys.readouterr().err


def test_int8_quantises_llm_linears_keeps_gates_float_and_stays_close(model_dir, pixels):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from skymoe.infer import Pipeline

    float_pipe = Pipeline.from_pretrained(model_dir)
    int8_pipe = Pipeline.from_pretrained(model_dir, quantize="int8")
    modules = dict(int8_pipe.model.language_model.named_modules())
    assert isinstance(modules["lm_head"], DynamicLinear)
    assert all(isinstance(m, torch.nn.Linear) and not isinstance(m, DynamicLinear) for n, m in modules.items() if n.endswith("gate.routing_proj"))
    inputs = float_pipe.processor.prepare_generation([Image.fromarray(pixels)], ["Describe this image."])
    with torch.inference_mode():
        a, b = float_pipe.model(**inputs).logits[0, -1], int8_pipe.model(**inputs).logits[0, -1]
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98 and not torch.equal(a, b)


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_predict_single_json(model_dir, pixels, tmp_path, capsys):
    import json

    from skymoe.cli import main

    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "a.png"), "--task", "counting", "--prompt", "cars",
                 "--json", "--routing", "--max-new-tokens", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "counting" and record["image_size"] == [56, 40] and len(record["routing"]["expert_weights"]) == 2
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "a.png"), "--task", "counting", "--prompt", "cars",
                 "--routing", "--max-new-tokens", "4"]) == 0
    text, routing = capsys.readouterr().out.splitlines()  # plain text: the answer, then the routing
    assert text == record["text"] and routing.startswith(f"routing: task {record['routing']['task']}, granularity ")
    assert routing.count("layer ") == 2


def test_cli_predict_routing_names_the_chosen_expert_llms(tmp_path, pixels, capsys):
    """RS-MoE's expert LLMs: the JSON and the text name the 2 experts the router chose, with their weights."""
    import json

    from skymoe.cli import main

    model_dir = save_tiny_model(tmp_path / "rsmoe", num_experts=3, expert_type="llm", routing="sequence")
    Image.fromarray(pixels).save(tmp_path / "a.png")
    args = ["predict", "--model", str(model_dir), "--image", str(tmp_path / "a.png"), "--prompt", "How many buildings?",
            "--routing", "--max-new-tokens", "3"]
    assert main([*args, "--json"]) == 0
    routing = json.loads(capsys.readouterr().out)["routing"]
    assert routing["level"] == "llm" and len(routing["expert_weights"]) == 1 and len(routing["expert_weights"][0]) == 3
    chosen = routing["chosen"][0]
    assert len(chosen) == 2 and chosen[0]["weight"] >= chosen[1]["weight"] > 0
    assert abs(sum(c["weight"] for c in chosen) - 1.0) < 1e-5
    assert {c["expert"] for c in chosen} == {e for e, w in enumerate(routing["expert_weights"][0]) if w > 0}
    assert main(args) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith(", ".join(f"E{c['expert']} {c['weight']:.2f}" for c in chosen)) and "expert LLMs chosen: " in line


def test_cli_batch_predict_is_resumable_and_reports_bad_files(model_dir, tmp_path, capsys):
    import json

    from skymoe.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.jsonl"
    args = ["predict", "--model", str(model_dir), "--images", str(folder), "--task", "caption", "--out", str(out), "--batch-size", "2", "--max-new-tokens", "3"]
    assert main(args) == 1  # the empty file is skipped and reported
    assert "skipped empty.png" in capsys.readouterr().err
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in first) == ["0.png", "1.png", "2.png"]
    # simulate a crash mid-write: one record lost, the last line cut in half
    out.write_text(json.dumps(first[0]) + "\n" + json.dumps(first[1])[:10])
    (folder / "empty.png").unlink()
    assert main(args) == 0
    assert "3 images, 1 already in" in capsys.readouterr().err
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in again) == ["0.png", "1.png", "2.png"]
    assert {r["id"]: r["text"] for r in again} == {r["id"]: r["text"] for r in first}


def test_cli_chat_keeps_the_conversation(model_dir, pixels, tmp_path, monkeypatch, capsys):
    from skymoe.cli import main

    Image.fromarray(pixels).save(tmp_path / "a.png")
    lines = iter(["Is there a ship?", "", "And a port?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(model_dir), "--image", str(tmp_path / "a.png"), "--max-new-tokens", "3"]) == 0
    replies = [line[len("skymoe> "):] for line in capsys.readouterr().out.splitlines() if line.startswith("skymoe> ")]
    assert len(replies) == 2
    from skymoe.data.schema import Turn
    from skymoe.infer import Pipeline

    first = Pipeline.from_pretrained(model_dir, max_new_tokens=3).generate(str(tmp_path / "a.png"), [Turn("user", "Is there a ship?")])
    assert replies[0] == first.text  # streamed to the terminal piece by piece, the same answer


def test_cli_scene_writes_geojson(model_dir, tmp_path, capsys):
    import json

    from skymoe.cli import main

    scene = write_geotiff(tmp_path / "s.tif", 150, 100)
    out = tmp_path / "s.geojson"
    assert main(["scene", "--model", str(model_dir), str(scene), "--task", "caption", "--out", str(out), "--tile-size", "64",
                 "--overlap", "8", "--max-new-tokens", "3"]) == 0
    collection = json.loads(out.read_text())
    assert collection["skymoe"]["complete"] and len(collection["features"]) == collection["skymoe"]["tiles"] == 6


def test_cli_bad_model_dir_is_one_clear_line(tmp_path, capsys):
    from skymoe.cli import main

    assert main(["predict", "--model", str(tmp_path), "--image", "x.png", "--prompt", "hi"]) == 2
    assert "not a SkyMoE model directory" in capsys.readouterr().err


def _image_folder(folder, n: int):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("task, flag, expected", [("vqa", "--prompt", "needs a question"), ("region_caption", "--box", "needs a box")])
def test_cli_task_without_its_prompt_or_box_fails_before_loading_the_model(task, flag, expected, tmp_path, capsys):
    from skymoe.cli import main

    out = tmp_path / "e.jsonl"
    missing_model = str(tmp_path / "no-model")  # never loaded: the arguments are checked first
    for source in (["--images", str(_image_folder(tmp_path / "images", 1)), "--out", str(out)], ["--image", "x.png"]):
        assert main(["predict", "--model", missing_model, *source, "--task", task]) == 2
        err = capsys.readouterr().err
        assert f"field '{flag}'" in err and expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_single_image_with_out_is_refused_before_loading_the_model(tmp_path, capsys):
    from skymoe.cli import main

    assert main(["predict", "--model", str(tmp_path / "no-model"), "--image", "x.png", "--task", "caption", "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--out is for batch mode (--images)" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


def test_cli_resume_refuses_records_of_another_task_or_prompt(model_dir, tmp_path, capsys):
    import json

    from skymoe.cli import main

    folder, out = _image_folder(tmp_path / "images", 2), tmp_path / "preds.jsonl"
    run = ["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(out), "--max-new-tokens", "2"]
    assert main([*run, "--task", "caption"]) == 0
    written = out.read_text()
    assert main([*run, "--task", "counting", "--prompt", "cars"]) == 2
    assert "field 'task': holds predictions made with task 'caption'; this run asks for 'counting'" in capsys.readouterr().err
    assert main([*run, "--task", "caption", "--prompt", "ignored by caption"]) == 0
    assert "2 already in" in capsys.readouterr().err and out.read_text() == written
    assert main([*run, "--task", "caption", "--int8"]) == 2
    assert "field 'int8'" in capsys.readouterr().err
    assert main([*run, "--task", "caption", "--bands", "3,2,1"]) == 2
    assert "field 'bands': holds predictions made with bands None" in capsys.readouterr().err
    record = {"id": "0.png", "text": "yes", "task": "vqa", "settings": {"task": "vqa", "prompt": "Is it a port?", "labels": None, "box": None}}
    out.write_text(json.dumps(record) + "\n")
    assert main([*run, "--prompt", "Is there a ship?"]) == 2
    assert "field 'prompt'" in capsys.readouterr().err
    out.write_text(json.dumps({"id": "0.png", "text": "forest", "task": "classification"}) + "\n")  # before settings were stored
    assert main([*run, "--task", "multilabel"]) == 2
    assert "task 'classification'" in capsys.readouterr().err


def _drop_weights(folder):
    (folder / "model.safetensors").unlink()


def _truncate(name: str):
    def truncate(folder):
        (folder / name).write_bytes((folder / name).read_bytes()[:40])
    return truncate


@pytest.mark.parametrize("breakage, expected", [
    (_drop_weights, "no model weights"),
    (_truncate("config.json"), "config.json is not valid JSON"),
    (_truncate("model.safetensors"), "cannot load the model"),
])
def test_cli_broken_model_folder_is_one_line_naming_it(breakage, expected, model_dir, pixels, tmp_path, capsys):
    import shutil

    from skymoe.cli import main

    broken = shutil.copytree(model_dir, tmp_path / "broken")
    breakage(broken)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert main(["predict", "--model", str(broken), "--image", str(tmp_path / "a.png"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"skymoe: error: file {broken}: ") and expected in err and len(err.splitlines()) == 1


def test_cli_batch_ctrl_c_says_what_was_written_and_resumes(model_dir, tmp_path, monkeypatch, capsys):
    import json

    from skymoe.cli import main
    from skymoe.infer.pipeline import Pipeline

    folder, out = _image_folder(tmp_path / "images", 3), tmp_path / "preds.jsonl"
    run = ["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(out), "--task", "caption",
           "--batch-size", "1", "--max-new-tokens", "2"]
    original, calls = Pipeline.run, []

    def interrupted_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "run", interrupted_on_the_second_batch)
    try:
        assert main(run) == 130
    except KeyboardInterrupt:  # would otherwise stop the whole test session
        pytest.fail("Ctrl-C escaped predict as a traceback")
    assert "interrupted: wrote 1 predictions" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["0.png"]
    monkeypatch.setattr(Pipeline, "run", original)
    assert main(run) == 0
    assert "1 already in" in capsys.readouterr().err and len(out.read_text().splitlines()) == 3


def test_cli_out_that_is_a_directory_is_one_line(model_dir, tmp_path, capsys):
    from skymoe.cli import main

    folder = _image_folder(tmp_path / "images", 1)
    assert main(["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(tmp_path), "--task", "caption"]) == 2
    assert f"file {tmp_path}, field '--out': is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--batch-size"])
def test_cli_counts_must_be_positive(flag, capsys):
    from skymoe.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", "m", "--image", "a.png", "--prompt", "hi", flag, "0"])
    assert exit_.value.code == 2 and f"argument {flag}: '0': expected a positive integer" in capsys.readouterr().err


def test_cli_bad_image_is_named_once(model_dir, tmp_path, capsys):
    from skymoe.cli import main

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("not an image")
    assert main(["predict", "--model", str(model_dir), "--image", str(corrupt), "--task", "caption"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading progress bar
    assert error.startswith(f"skymoe: error: file {corrupt}: cannot decode") and error.count(str(corrupt)) == 1


def test_multilabel_asks_the_training_question_and_lists_labels(model_dir, pixels, tmp_path, capsys):
    import json

    from skymoe.cli import main
    from skymoe.data.readers.bigearthnet import QUESTION
    from skymoe.infer import Pipeline

    pipe = Pipeline.from_pretrained(model_dir)
    seen = []
    original = pipe.processor.prepare_generation
    pipe.processor.prepare_generation = lambda images, prompts: seen.extend(prompts) or original(images, prompts)
    script_answers(pipe, "forest; river; forest")
    answer = pipe.run(pixels, "multilabel")
    assert seen == [QUESTION] and answer.task == "multilabel" and answer.labels == ["forest", "river"]
    assert [a.labels for a in pipe.run([pixels, pixels], "multilabel", labels=["River", "urban"])] == [["River"], ["River"]]
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "a.png"), "--task", "multilabel", "--json",
                 "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "multilabel"
