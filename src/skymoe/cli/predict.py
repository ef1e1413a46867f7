"""``skymoe predict`` (one image, or a folder/glob of images to resumable JSONL) and ``skymoe chat``."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from skymoe.data.schema import SkyMoEDataError, Task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --int8 / --batch-size / --max-new-tokens, shared by every inference command."""
    parser.add_argument("--model", required=True, help="model directory (save_pretrained layout: model + processor)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the LLM linears (CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)


def load_pipeline(args):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from skymoe.infer import Pipeline

    if not (Path(args.model) / "config.json").is_file():
        raise SkyMoEDataError("not a SkyMoE model directory (no config.json)", file=args.model)
    return Pipeline.from_pretrained(args.model, quantize="int8" if args.int8 else None, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens)


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
    predict.add_argument("--labels", help="comma-separated class names (classification: pick the most likely)")
    predict.add_argument("--box", type=_box, help="region x1,y1,x2,y2 in pixels (region_caption)")
    predict.add_argument("--routing", action="store_true", help="include the router's decision")
    predict.add_argument("--json", action="store_true", help="print the full answer as JSON")
    predict.add_argument("--out", help="JSONL output of batch mode; re-running skips the ids already in it")
    predict.set_defaults(func=run_predict)

    chat = subparsers.add_parser("chat", help="multi-turn chat about one image in the terminal")
    add_model_arguments(chat)
    chat.add_argument("--image", required=True)
    chat.set_defaults(func=run_chat)


def _labels(args) -> list[str] | None:
    return [label.strip() for label in args.labels.split(",") if label.strip()] if args.labels else None


def run_predict(args) -> int:
    if args.images:
        if not args.out:
            raise SkyMoEDataError("batch mode (--images) needs --out PREDS.jsonl", field="--out")
        return predict_many(args)
    pipeline = load_pipeline(args)
    try:
        answer = pipeline.run(args.image, args.task, args.prompt, labels=_labels(args), box=args.box, routing=args.routing)
    except ValueError as exc:
        raise SkyMoEDataError(str(exc), file=args.image) from None
    print(json.dumps(answer.to_dict(), ensure_ascii=False) if args.json else answer.text)
    return 0


def find_images(pattern: str) -> list[Path]:
    """Image files in a folder (recursively) or matching a glob, sorted."""
    root = Path(pattern)
    paths = root.rglob("*") if root.is_dir() else (Path(p) for p in glob.glob(pattern, recursive=True))
    images = sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SkyMoEDataError("no images found (png, jpg, tif, ...)", file=pattern)
    return images


def finished_ids(out: Path) -> set[str]:
    """Ids already written to ``out``; a last line cut off by a crash is dropped so the run can go on."""
    if not out.is_file():
        return set()
    lines = out.read_text(encoding="utf-8").splitlines()
    done = set()
    for number, line in enumerate(lines, 1):
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if number != len(lines):
                raise SkyMoEDataError("malformed line; expected a JSON record with an 'id'", file=str(out), record=f"line {number}") from None
            out.write_text("".join(l + "\n" for l in lines[:-1]), encoding="utf-8")
    return done


def predict_many(args) -> int:
    from tqdm.auto import tqdm

    from skymoe.data.imagery import load_image

    root = Path(args.images) if Path(args.images).is_dir() else None
    images = find_images(args.images)
    ids = [str(p.relative_to(root)) if root else str(p) for p in images]
    out = Path(args.out)
    done = finished_ids(out)
    todo = [(i, p) for i, p in zip(ids, images) if i not in done]
    print(f"{len(images)} images, {len(done & set(ids))} already in {out}, {len(todo)} to do", file=sys.stderr)
    pipeline = load_pipeline(args)
    failed = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink, tqdm(total=len(todo), desc=f"predict {args.task}", unit="image") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = []
            for image_id, path in todo[start : start + args.batch_size]:
                try:
                    batch.append((image_id, load_image(path)))
                except SkyMoEDataError as exc:  # counted and reported; a re-run retries it
                    failed[image_id] = str(exc)
            if batch:
                answers = pipeline.run([im for _, im in batch], args.task, args.prompt, labels=_labels(args), box=args.box, routing=args.routing)
                for (image_id, _), answer in zip(batch, answers):
                    sink.write(json.dumps({"id": image_id, **answer.to_dict()}, ensure_ascii=False) + "\n")
                sink.flush()
            bar.update(len(todo[start : start + args.batch_size]))
    for image_id, reason in failed.items():
        print(f"skipped {image_id}: {reason}", file=sys.stderr)
    print(f"wrote {len(todo) - len(failed)} predictions to {out}; {len(failed)} images skipped", file=sys.stderr)
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
