"""``skymoe predict`` (one image, or a folder/glob of images to resumable JSONL) and ``skymoe chat``."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from skymoe.cli.options import band_list, positive_int
from skymoe.data.schema import Box, Task
from skymoe.errors import ConfigError, DataError, SkyMoEError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --int8 / --batch-size / --max-new-tokens / --bands, shared by every inference command."""
    parser.add_argument("--model", required=True, help="model directory (save_pretrained layout: model + processor)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the LLM linears (CPU)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per generate call (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48, help="longest answer in tokens (default: %(default)s)")
    parser.add_argument("--bands", type=band_list, help="1-based bands of TIFF/GeoTIFF rasters shown to the model as RGB, "
                        "e.g. 4,3,2 for Sentinel-2 (default: 1,2,3, or band 1 as grey)")


def load_pipeline(args):
    """The Pipeline of ``--model``; a broken model folder is a one-line ModelFolderError (see load_model)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from skymoe.infer import Pipeline

    return Pipeline.from_pretrained(args.model, quantize="int8" if args.int8 else None, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, bands=args.bands)


def _box(text: str | None):
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x1,y1,x2,y2 in pixels")
    return values


def register(subparsers) -> None:
    tasks = [t.value for t in Task]
    predict = subparsers.add_parser("predict", help="answer a prompt about one image, or run a task over many images")
    add_model_arguments(predict)
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="one image (PNG/JPEG/TIFF/GeoTIFF)")
    source.add_argument("--images", help="folder or glob of images (batch mode; needs --out)")
    predict.add_argument("--prompt", help="question (vqa), what to locate (grounding) or what to count (counting)")
    predict.add_argument("--task", choices=tasks, default=Task.VQA.value)
    predict.add_argument("--labels", help="comma-separated class names (classification: pick the most likely; multilabel: keep only these)")
    predict.add_argument("--box", type=_box, help="region x1,y1,x2,y2 in pixels (region_caption)")
    predict.add_argument("--routing", action="store_true", help="include the router's decision (a second line, or the JSON's routing)")
    predict.add_argument("--json", action="store_true", help="print the full answer as JSON")
    predict.add_argument("--out", help="JSONL output of batch mode; re-running the same task skips the ids already in it")
    predict.set_defaults(func=run_predict)

    chat = subparsers.add_parser("chat", help="multi-turn chat about one image in the terminal")
    add_model_arguments(chat)
    chat.add_argument("--image", required=True)
    chat.set_defaults(func=run_chat)


def _labels(args) -> list[str] | None:
    return [label.strip() for label in args.labels.split(",") if label.strip()] if args.labels else None


def check_task_arguments(args) -> None:
    """The task's --prompt or --box is there: checked before the model loads and before --out is touched."""
    from skymoe.infer.pipeline import check_request

    try:
        check_request(args.task, args.prompt, args.box)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--box" if args.task == Task.REGION_CAPTION.value else "--prompt") from None


def run_predict(args) -> int:
    check_task_arguments(args)
    if args.images:
        if not args.out:
            raise ConfigError("batch mode (--images) needs --out PREDS.jsonl", field="--out")
        return predict_many(args)
    if args.out:
        raise ConfigError("--out is for batch mode (--images); for one --image use --json > FILE", field="--out")
    pipeline = load_pipeline(args)
    try:
        answer = pipeline.run(args.image, args.task, args.prompt, labels=_labels(args), box=args.box, routing=args.routing)
    except ValueError as exc:
        if isinstance(exc, SkyMoEError) and exc.file:  # already names the image
            raise
        raise DataError(str(exc), file=args.image) from None
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        print(answer.text)
        if args.routing:
            print(routing_text(answer.routing))
    return 0


def routing_text(routing) -> str:
    """One line for a terminal: the router's decision (see :meth:`skymoe.data.schema.Routing.describe`)."""
    return "routing: none (a dense model has no router)" if routing is None else f"routing: {routing.describe()}"


def find_images(pattern: str) -> list[Path]:
    """Image files in a folder (recursively) or matching a glob, sorted."""
    root = Path(pattern)
    paths = root.rglob("*") if root.is_dir() else (Path(p) for p in glob.glob(pattern, recursive=True))
    images = sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError("no images found (png, jpg, tif, ...)", file=pattern)
    return images


def run_settings(args) -> dict:
    """What besides the image decides an answer (None where the task ignores it); stored in every record."""
    task = Task(args.task)
    return {
        "task": task.value,
        "prompt": args.prompt if task in (Task.VQA, Task.GROUNDING, Task.COUNTING) else None,
        "labels": _labels(args) if task in (Task.CLASSIFICATION, Task.MULTILABEL) else None,
        "box": args.box if task == Task.REGION_CAPTION else None,
        "max_new_tokens": args.max_new_tokens,  # these change the answers too
        "int8": args.int8,
        "bands": args.bands,
    }


def check_same_run(out: Path, record: dict, settings: dict) -> None:
    """Refuse to resume into ``out`` with other settings: its answers would silently mix two runs."""
    held = record.get("settings")
    if not isinstance(held, dict):  # a record written before the settings were stored: only its task is known
        held = {"task": record.get("task")}
    for key, value in held.items():
        if key in settings and value != settings[key]:
            raise DataError(f"holds predictions made with {key} {value!r}; this run asks for {settings[key]!r}: "
                                  "use another --out", file=str(out), field=key)


def finished_ids(out: Path, settings: dict) -> set[str]:
    """Ids already written to ``out`` by a run with ``settings``; a last line cut off by a crash is dropped so the run can go on."""
    if out.is_dir():
        raise DataError("is a directory; expected a JSONL file to write", file=str(out), field="--out")
    if not out.is_file():
        return set()
    lines = out.read_text(encoding="utf-8").splitlines()
    done = set()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            done.add(record["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if number != len(lines):
                raise DataError("malformed line; expected a JSON record with an 'id'", file=str(out), record=f"line {number}") from None
            out.write_text("".join(l + "\n" for l in lines[:-1]), encoding="utf-8")
            continue
        check_same_run(out, record, settings)
    return done


def load_batch(chunk: list[tuple[str, Path]], box, failed: dict[str, str]) -> list:
    """(id, image) of the loadable images of ``chunk``; the others go to ``failed`` (reported; a re-run retries them)."""
    from skymoe.data.imagery import load_image

    batch = []
    for image_id, path in chunk:
        try:
            image = load_image(path)
            if box is not None:  # region_caption: a box outside one image skips that image, not the whole run
                Box(*box).validate(image.size, file=str(path))
            batch.append((image_id, image))
        except DataError as exc:
            failed[image_id] = str(exc)
    return batch


def predict_many(args) -> int:
    from tqdm.auto import tqdm

    root = Path(args.images) if Path(args.images).is_dir() else None
    images = find_images(args.images)
    ids = [str(p.relative_to(root)) if root else str(p) for p in images]
    out = Path(args.out)
    settings = run_settings(args)
    done = finished_ids(out, settings)
    todo = [(i, p) for i, p in zip(ids, images) if i not in done]
    print(f"{len(images)} images, {len(done & set(ids))} already in {out}, {len(todo)} to do", file=sys.stderr)
    failed: dict[str, str] = {}
    written = 0
    try:
        pipeline = load_pipeline(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as sink, tqdm(total=len(todo), desc=f"predict {args.task}", unit="image") as bar:
            for start in range(0, len(todo), args.batch_size):
                chunk = todo[start : start + args.batch_size]
                batch = load_batch(chunk, settings["box"], failed)
                if batch:
                    answers = pipeline.run([im for _, im in batch], args.task, args.prompt, labels=_labels(args), box=args.box, routing=args.routing)
                    for (image_id, _), answer in zip(batch, answers):
                        sink.write(json.dumps({"id": image_id, **answer.to_dict(), "settings": settings}, ensure_ascii=False) + "\n")
                    sink.flush()
                    written += len(batch)
                bar.update(len(chunk))
    except KeyboardInterrupt:  # every flushed line is a whole record; a line cut mid-write is dropped on resume
        print(f"interrupted: wrote {written} predictions to {out}; re-running the same command resumes", file=sys.stderr)
        return 130
    for image_id, reason in failed.items():
        print(f"skipped {image_id}: {reason}", file=sys.stderr)
    print(f"wrote {written} predictions to {out}; {len(failed)} images skipped", file=sys.stderr)
    return 1 if failed else 0


def run_chat(args) -> int:
    from skymoe.data.imagery import load_image
    from skymoe.data.schema import Turn

    image = load_image(args.image)
    pipeline = load_pipeline(args)
    turns: list[Turn] = []
    print(f"chatting about {args.image} ({image.width}x{image.height}); /reset starts over, /quit or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if text == "/quit":
            return 0
        if text == "/reset":
            turns = []
            continue
        if not text:
            continue
        turns.append(Turn("user", text))
        print("skymoe> ", end="", flush=True)
        answer = pipeline.generate(image, turns, on_text=lambda _, piece: print(piece, end="", flush=True))
        turns.append(Turn("assistant", answer.text))
        print()
