"""skymoe data convert: COCO, VOC, YOLO, DOTA and CSV boxes -> MGRS-mini-style samples, and their bad inputs."""
from __future__ import annotations


import pytest

from _convert_fixtures import H, W, read_out, run_cli, write_coco, write_png
from skymoe.data.boxes import format_box, format_boxes
from skymoe.data.prompts import TEMPLATES, plural
from skymoe.data.schema import Box, read_jsonl


def test_coco_gives_grounding_counting_region_caption_and_classification_with_mgrs_templates(tmp_path, capsys):
    labels = write_coco(tmp_path / "coco")
    out = tmp_path / "out" / "coco.jsonl"
    assert run_cli("convert", "coco", labels, "--out", out, "--tasks", "grounding,counting,region_caption,classification") == 0
    assert capsys.readouterr().out.strip() == f"wrote 13 samples from 2 images (4 objects) to {out}; skipped 0"
    records = read_out(out)
    assert records[0]["image"] == "../coco/a.png"  # relative to the JSONL: the folder can move
    samples = list(read_jsonl(out))
    by = {(s.meta["label"], s.task.value, s.image.split("/")[-1]): s for s in samples if s.task.value != "region_caption"}
    ships = [Box(2, 4, 12, 10, "ship"), Box(30, 20, 38, 28, "ship")]
    grounding = by[("ship", "grounding", "a.png")]
    assert grounding.answer == format_boxes(ships, (W, H)) and grounding.boxes == ships
    assert grounding.question in {t.format(ref="all ships") for t in TEMPLATES["grounding"]}
    assert by[("car", "grounding", "b.png")].question in {t.format(ref="the car") for t in TEMPLATES["grounding"]}
    assert [by[(c, "counting", "a.png")].answer for c in ("ship", "car")] == ["2", "1"]
    absent = by[("ship", "counting", "b.png")]  # b.png has no ship: one absent class, answer 0
    assert absent.answer == "0" and absent.question in {t.format(plural="ships", where="in the image") for t in TEMPLATES["counting"]}
    captions = [s for s in samples if s.task.value == "region_caption"]
    assert [c.answer for c in captions] == ["a ship", "a ship", "a car", "a car"]
    assert captions[2].question in {t.format(box=format_box(Box(40, 30, 52, 40), (W, H))) for t in TEMPLATES["region_caption_object"]}
    assert by[("ship", "classification", "a.png")].answer == "ship" and by[("car", "classification", "b.png")].answer == "car"


@pytest.mark.parametrize("case, message", [
    ("duplicate", "field 'images': duplicate ids [1]"),
    ("missing image", "names image 'gone.png', which is not in"),
    ("outside", "lies outside the image of size 64x48"),
    ("negative", "is empty; expected x1<x2 and y1<y2"),
    ("unknown class", "unknown class id 9"),
    ("empty", "label file is empty (0 bytes)"),
])
def test_bad_coco_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, case, message):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 4, 10, 6]}]
    if case == "duplicate":
        images[1]["id"] = 1
    elif case == "missing image":
        images[1]["file_name"] = "gone.png"
    else:
        bbox, category = {"outside": ([60, 4, 10, 6], 1), "negative": ([20, 4, -5, 6], 1)}.get(case, ([2, 4, 10, 6], 9))
        annotations[0].update(bbox=bbox, category_id=category)
    labels = write_coco(tmp_path, images=images, annotations=annotations)
    if case == "empty":
        labels.write_text("")
    out = tmp_path / "out.jsonl"
    assert run_cli("convert", "coco", labels, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"skymoe: error: file {labels}") and message in err and "\n" not in err
    assert not out.exists() and not out.with_suffix(".jsonl.tmp").exists()


def test_skip_counts_bad_images_and_keeps_the_good_ones(tmp_path, capsys):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}]
    labels = write_coco(tmp_path, images=images, annotations=[{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]}])
    out = tmp_path / "out.jsonl"
    assert run_cli("convert", "coco", labels, "--out", out, "--on-error", "skip", "--tasks", "counting") == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote 2 samples from 1 images (1 objects) to {out}; skipped 1 (1 x names image 'gone.png'")
    assert [r["answer"] if "answer" in r else r["conversation"][1]["text"] for r in read_out(out)] == ["1", "0"]


def write_voc(root, objects, filename="a.png"):
    write_png(root / "JPEGImages" / filename)
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                   for n, (a, b, c, d) in objects)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    xml = root / "Annotations" / "a.xml"
    xml.write_text(f"<annotation><filename>{filename}</filename><size><width>{W}</width><height>{H}</height></size>{body}</annotation>")
    return root / "Annotations"


def test_voc_reads_boxes_and_finds_jpegimages(tmp_path):
    xml_dir = write_voc(tmp_path, [("tree", (1, 2, 11, 12)), ("tree", (20, 20, 30, 40))])
    out = tmp_path / "voc.jsonl"
    assert run_cli("convert", "voc", xml_dir, "--out", out, "--tasks", "counting,grounding") == 0
    counting, grounding = list(read_jsonl(out))
    assert counting.answer == "2" and grounding.boxes == [Box(1, 2, 11, 12, "tree"), Box(20, 20, 30, 40, "tree")]


def test_voc_box_with_x2_before_x1_names_the_xml(tmp_path, capsys):
    xml_dir = write_voc(tmp_path, [("tree", (30, 2, 11, 12))])
    assert run_cli("convert", "voc", xml_dir, "--out", tmp_path / "o.jsonl") == 2
    assert f"file {xml_dir / 'a.xml'}, record object 0, field 'boxes': box (30.0, 2.0, 11.0, 12.0) is empty" in capsys.readouterr().err


def write_yolo(root, lines: dict[str, str], classes="ship\ncar\n"):
    for stem in lines:
        write_png(root / "images" / f"{stem}.png")
    (root / "labels").mkdir(parents=True)
    for stem, text in lines.items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    (root / "classes.txt").write_text(classes)
    return root / "labels", root / "classes.txt"


def test_yolo_denormalises_boxes_and_an_empty_file_is_a_background_image(tmp_path):
    labels, classes = write_yolo(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n", "b": ""})
    out = tmp_path / "y.jsonl"
    assert run_cli("convert", "yolo", labels, "--classes", classes, "--out", out, "--tasks", "grounding,counting") == 0
    samples = list(read_jsonl(out))
    ground = {s.meta["label"]: s.boxes for s in samples if s.task.value == "grounding"}
    assert ground == {"car": [Box(24, 12, 40, 36, "car")], "ship": [Box(0, 0, 16, 24, "ship")]}
    assert [(s.image.split("/")[-1], s.answer) for s in samples if s.task.value == "counting"] == [("a.png", "1"), ("a.png", "1"), ("b.png", "0")]


def test_yolo_class_id_beyond_the_class_file_names_both_files(tmp_path, capsys):
    labels, classes = write_yolo(tmp_path, {"a": "2 0.5 0.5 0.2 0.2\n"})
    assert run_cli("convert", "yolo", labels, "--classes", classes, "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert f"file {labels / 'a.txt'}, record line 1, field 'class': unknown class id '2' (the class file {classes} names 2 classes, ids 0..1)" in err


def test_dota_keeps_the_oriented_polygon_and_derives_the_horizontal_box(tmp_path):
    write_png(tmp_path / "images" / "P0001.png")
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "labelTxt" / "P0001.txt").write_text("imagesource:GoogleEarth\ngsd:0.5\n10 5 30 15 25 25 5 15 plane 0\n")
    out = tmp_path / "d.jsonl"
    assert run_cli("convert", "dota", tmp_path / "labelTxt", "--out", out, "--tasks", "grounding") == 0
    (sample,) = read_jsonl(out)
    assert sample.boxes == [Box(5, 5, 30, 25, "plane")]
    assert sample.meta["polygons"] == [[[10, 5], [30, 15], [25, 25], [5, 15]]]


def test_csv_boxes_deepforest_convention(tmp_path, capsys):
    write_png(tmp_path / "t.png")
    write_png(tmp_path / "empty.png")
    csv = tmp_path / "trees.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\nt.png,1,1,9,9,Tree\nt.png,20,5,30,15,Tree\nempty.png,0,0,0,0,Tree\n")
    out = tmp_path / "c.jsonl"
    assert run_cli("convert", "csv", csv, "--out", out, "--tasks", "counting") == 0
    assert [(s.image.split("/")[-1], s.answer) for s in read_jsonl(out)] == [("t.png", "2"), ("empty.png", "0")]
    assert "from 2 images (2 objects)" in capsys.readouterr().out


def test_csv_without_the_columns_is_an_error(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,x\na.png,1\n")
    assert run_cli("convert", "csv", csv, "--out", tmp_path / "o.jsonl") == 2
    assert "missing columns ['image_path', 'xmin', 'ymin', 'xmax', 'ymax', 'label']" in capsys.readouterr().err


def test_one_set_of_templates_feeds_mgrs_mini_and_inference():
    from skymoe.data.mgrs_mini import questions
    from skymoe.infer.pipeline import PROMPTS
    from skymoe.data.schema import Task

    assert questions.TEMPLATES is TEMPLATES
    assert PROMPTS[Task.GROUNDING].format(query="the ship") == TEMPLATES["grounding"][0].format(ref="the ship")
    assert PROMPTS[Task.COUNTING] == "How many {object} are there in the image?"
    assert [plural(n) for n in ("ship", "bus", "storage tank", "ferry", "boy")] == ["ships", "buses", "storage tanks", "ferries", "boys"]

