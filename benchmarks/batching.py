"""One prefill per eval batch, and dynamic batching in the server: each measured against what it replaced, in one run.

    python benchmarks/batching.py [--rounds 5] [--samples 192] [--clients 16] [--requests 4] [--out benchmarks/results/batching.md]

* Eval: ``generate_predictions`` over RSVQA-LR test samples (the embedded suite's
  prompts and generation settings, tower features from a feature cache warmed
  first) with the router's decision read from the generate prefill (now) vs
  from a prefill of its own before generate (before issue 18: two prefills).
* Server: ``skymoe serve`` with ``--max-batch 16`` (dynamic batching) vs
  ``--max-batch 1`` (one request at a time), both running as subprocesses;
  ``--clients`` threads each send ``--requests`` chat completions back to back
  (a PNG image, a question, routing on).

The model is the demo's LLM (Llama 4 x 128, 4 rank-16 LoRA experts, top-2, in
layers 1 and 3; ``benchmarks/generate.py``) behind a 1-layer ViT at 64 px, with
a tokenizer built from RSVQA-LR text, randomly initialised (speed does not
depend on training). The variants take turns within each round, in a shuffled
order, so that the shared machine's load hits both alike; the table gives
medians over rounds and the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from _machine import machine

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, patch_size=8)
DEMO_LLM = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
MOE = dict(num_experts=4, top_k=2, lora_rank=16, moe_layers=[1, 3])
SERVER_TOKENS = 16


def save_model(directory: Path) -> Path:
    from transformers import AutoConfig

    from skymoe.data.datasets import load_dataset
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer, special_token_ids
    from skymoe.model.build import build_model, make_config, vision_config_for

    texts = [t.text for s in load_dataset("rsvqa_lr", "train") for t in s.conversation]
    tokenizer = build_tokenizer(texts, vocab_size=2000)
    text = AutoConfig.for_model("llama", **DEMO_LLM)
    config = make_config(vision_config_for("vit", 64, **VISION), text, image_size=64, vocab_size=len(tokenizer),
                         special_ids=special_token_ids(tokenizer), moe=MOE)
    torch.manual_seed(0)
    model = build_model(config, tokenizer=tokenizer)
    model.save_pretrained(directory)
    SkyMoEProcessor.from_model_config(model.config, tokenizer).save_pretrained(directory)
    return directory


# ---- eval: one prefill vs two --------------------------------------------------------------------
@contextlib.contextmanager
def two_prefills():
    """The eval path before issue 18: the router's decision from a prefill of its own, then generate."""
    from skymoe.model import generation

    one_pass = generation.generate_with_routing

    def routing_then_generate(model, processor, inputs, max_new_tokens, on_text=None, *, routing=True):
        rows = inputs["input_ids"].shape[0]
        decisions = generation.routing_decisions(model, inputs) if routing else [None] * rows
        return one_pass(model, processor, inputs, max_new_tokens, on_text, routing=False)[0], decisions

    generation.generate_with_routing = routing_then_generate
    try:
        yield
    finally:
        generation.generate_with_routing = one_pass


def eval_rounds(model_dir: Path, samples: int, rounds: int, cache_dir: Path) -> dict[str, list[float]]:
    from skymoe.data.datasets import load_dataset
    from skymoe.eval.predict import generate_predictions
    from skymoe.eval.suite import load_suite
    from skymoe.model.feature_source import feature_source
    from skymoe.model.generation import load_model

    model, processor = load_model(model_dir)
    suite = load_suite("embedded")
    chosen = list(load_dataset("rsvqa_lr", "test"))[:samples]
    source = feature_source(model, processor, root=cache_dir)
    variants = {"one prefill (generate returns the routing)": contextlib.nullcontext,
                "two prefills (routing pass, then generate)": two_prefills}
    generate_predictions(model, processor, chosen, suite, source=source)  # warm-up; fills the feature cache
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in random.sample(list(variants), len(variants)):
            with variants[name]():
                start = time.perf_counter()
                generate_predictions(model, processor, chosen, suite, source=source)
                rates[name].append(len(chosen) / (time.perf_counter() - start))
    return rates


# ---- server: dynamic batching vs one at a time ---------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "skymoe", "serve", "--model", str(model_dir), "--port", str(port),
               "--max-batch", str(max_batch), "--max-queue", "64", "--max-new-tokens", str(SERVER_TOKENS)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"skymoe serve --max-batch {max_batch} did not start")


def png_url(seed: int) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def load_clients(base: str, clients: int, requests: int) -> float:
    """Requests/s with ``clients`` threads, each sending ``requests`` chat completions back to back."""
    import httpx

    bodies = [{"model": "m", "max_tokens": SERVER_TOKENS, "routing": True, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "How many buildings are there in the image?"},
        {"type": "image_url", "image_url": {"url": png_url(i)}}]}]} for i in range(clients)]
    start_line, failures = threading.Barrier(clients + 1), []

    def client(body: dict) -> None:
        with httpx.Client(timeout=300) as http:
            start_line.wait()
            for _ in range(requests):
                if http.post(f"{base}/v1/chat/completions", json=body).status_code != 200:
                    failures.append(1)

    threads = [threading.Thread(target=client, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed")
    return clients * requests / (time.perf_counter() - start)


def server_rounds(model_dir: Path, clients: int, requests: int, rounds: int) -> dict[str, list[float]]:
    variants = {f"dynamic batching (--max-batch {clients})": clients, "one request at a time (--max-batch 1)": 1}
    servers = {name: start_server(model_dir, max_batch) for name, max_batch in variants.items()}
    try:
        for _, base in servers.values():  # warm-up
            load_clients(base, clients, 1)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name in random.sample(list(variants), len(variants)):
                rates[name].append(load_clients(servers[name][1], clients, requests))
        return rates
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(30)


# ---- report --------------------------------------------------------------------------------------
def table(rates: dict[str, list[float]], unit: str) -> list[str]:
    new, old = rates
    ratios = [a / b for a, b in zip(rates[new], rates[old])]
    rows = [f"| variant | {unit} (median) | vs the old way (median of per-round ratios) |", "|---|---|---|"]
    rows.append(f"| {new} | {statistics.median(rates[new]):.1f} | {statistics.median(ratios):.2f}x |")
    rows.append(f"| {old} | {statistics.median(rates[old]):.1f} | 1.00x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=192, help="eval samples per round (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent server clients (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batching.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from skymoe.eval.suite import load_suite

    generation = load_suite("embedded").generation
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model")
        evals = eval_rounds(model_dir, args.samples, args.rounds, Path(tmp) / "features")
        serving = server_rounds(model_dir, args.clients, args.requests, args.rounds)
    lines = [
        "# One prefill per eval batch; dynamic batching in the server (`benchmarks/batching.py`)\n",
        f"Machine: {machine()}; {torch.get_num_threads()} torch thread(s).",
        f"Model: the demo LLM (Llama 4 x 128, {MOE['num_experts']} rank-{MOE['lora_rank']} LoRA experts, top-{MOE['top_k']}, "
        "in layers 1 and 3) behind a 1-layer ViT at 64 px, random weights. "
        f"{args.rounds} rounds after a warm-up; the variants take turns in each round, in a shuffled order.\n",
        f"Eval: `generate_predictions` on {args.samples} RSVQA-LR test samples (embedded suite: batches of "
        f"{generation.batch_size}, {generation.max_new_tokens} new tokens at most, tower features from a warm feature cache; "
        "the random model's answers end where it emits EOS, alike in both variants).\n",
        *table(evals, "samples/s"),
        "",
        f"Server: `skymoe serve` subprocesses; {args.clients} client threads, each sending {args.requests} chat completions "
        f"back to back per round (64 px PNG, a question, routing on, max_tokens {SERVER_TOKENS}).\n",
        *table(serving, "requests/s"),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
