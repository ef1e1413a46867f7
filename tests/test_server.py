"""The OpenAI-compatible server, driven with the official ``openai`` client against a real uvicorn server."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from _infer_helpers import save_tiny_model, write_geotiff

API_KEY = "test-key"
pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, flat: bool = False) -> bytes:
    """A random PNG (``flat``: one colour, so a large image stays a small upload)."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 90, np.uint8) if flat else rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from skymoe.infer import Pipeline

    return Pipeline.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("model")), max_new_tokens=6)


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free 127.0.0.1 port in a background thread; yields the base URL."""
    import uvicorn

    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield base
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(pipeline):
    from skymoe.serve.api import ServerLimits, create_app

    limits = ServerLimits(max_body_bytes=200_000, max_image_pixels=128 * 128, max_tokens=16, max_batch=2, max_queue=2)
    with running(create_app(pipeline, api_key=API_KEY, limits=limits, model_name="tiny")) as base:
        yield base


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def user_message(text: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_chat_completion_matches_the_pipeline_answer(client, pipeline):
    reply = client.chat.completions.create(model="tiny", messages=user_message("Is there a ship?", data_url(png_bytes())), max_tokens=6)
    expected = pipeline.ask(Image.open(io.BytesIO(png_bytes())).convert("RGB"), "Is there a ship?", max_new_tokens=6)
    assert reply.choices[0].message.content == expected.text
    assert reply.model == "tiny" and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == expected.prompt_tokens > 0


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_streaming_reassembles_the_same_answer(client):
    messages = user_message("Describe this image.", data_url(png_bytes(seed=1)))
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6).choices[0]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.message.content
    assert len(pieces) > 1  # streamed as generated, not as one finished string
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "length"  # the untrained model runs to max_tokens
    assert "routing" in chunks[-1].model_extra["skymoe"]


def test_geotiff_upload_with_13_bands_and_routing(client, tmp_path):
    tif = write_geotiff(tmp_path / "s2.tif", 40, 30, bands=13, dtype="uint16")
    reply = client.chat.completions.create(
        model="tiny", messages=user_message("How many buildings?", data_url(tif.read_bytes(), "image/tiff")), max_tokens=4,
        extra_body={"routing": True},
    )
    routing = reply.model_extra["skymoe"]["routing"]
    weights = np.array(routing["expert_weights"])
    assert weights.shape == (2, 4) and np.allclose(weights.sum(1), 1.0, atol=1e-4)


def test_tiff_uploads_are_decoded_with_bands_and_pngs_as_they_are(tmp_path):
    from skymoe.data.imagery import load_image
    from skymoe.serve.images import decode_image

    tif = write_geotiff(tmp_path / "s2.tif", 40, 30, bands=13, dtype="uint16")
    decoded = decode_image(tif.read_bytes(), max_pixels=10_000, bands=[4, 3, 2])
    assert np.array_equal(np.asarray(decoded), np.asarray(load_image(tif, bands=[4, 3, 2])))
    assert np.array_equal(np.asarray(decode_image(png_bytes(), max_pixels=10_000, bands=[4, 3, 2])),
                          np.asarray(Image.open(io.BytesIO(png_bytes())).convert("RGB")))


def test_concurrent_requests_are_batched_and_all_answered(server, pipeline):
    import concurrent.futures

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    urls = [data_url(png_bytes(seed=s)) for s in range(4)]
    tasks = ["vqa", "counting", "vqa", "caption"]  # a batch may mix tasks: each answer is read as its own task
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda u, t: client.chat.completions.create(model="tiny", messages=user_message("What is this?", u),
                                                                            max_tokens=5, extra_body={"task": t}), urls, tasks))
    for url, task, reply in zip(urls, tasks, replies):
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",")[1]))).convert("RGB")
        assert reply.choices[0].message.content == pipeline.ask(image, "What is this?", max_new_tokens=5).text
        assert reply.model_extra["skymoe"]["task"] == task


def test_ground_endpoint_returns_structured_boxes(server):
    body = {"image": data_url(png_bytes()), "query": "the storage tank", "max_tokens": 8}
    reply = httpx.post(f"{server}/v1/skymoe/ground", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 200
    result = reply.json()
    assert result["image_size"] == [48, 40] and isinstance(result["boxes"], list)
    assert len(result["routing"]["expert_weights"]) == 2


BAD_REQUESTS = [
    ("wrong api key", dict(headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key", "API key"),
    ("malformed json", dict(content=b"{not json"), 400, "invalid_json", "malformed JSON"),
    ("empty prompt", dict(json={"messages": user_message("  ", data_url(png_bytes()))}), 400, "empty_prompt", "no text"),
    ("no image", dict(json={"messages": [{"role": "user", "content": "hi"}]}), 400, "image_required", "exactly one image"),
    ("remote url", dict(json={"messages": user_message("hi", "http://example.com/a.png")}), 400, "invalid_image", "not a data: URL"),
    ("server path", dict(json={"messages": user_message("hi", "/etc/passwd")}), 400, "invalid_image", "not a data: URL"),
    ("zero bytes", dict(json={"messages": user_message("hi", "data:image/png;base64,")}), 400, "invalid_image", "0 bytes"),
    ("not an image", dict(json={"messages": user_message("hi", data_url(b"hello world, not pixels"))}), 400, "invalid_image", "not PNG, JPEG, TIFF"),
    ("huge image", dict(json={"messages": user_message("hi", data_url(png_bytes(400, 400, flat=True)))}), 413, "image_too_large", "exceeds the server limit"),
    ("too many tokens", dict(json={"messages": user_message("hi", data_url(png_bytes())), "max_tokens": 1000}), 400, "max_tokens_too_large", "max_tokens=1000"),
    ("body too large", dict(content=b"x" * 300_000), 413, "body_too_large", "300,000 bytes"),
]


@pytest.mark.parametrize("name,kwargs,status,code,says", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_json_error_and_the_server_keeps_answering(server, client, name, kwargs, status, code, says):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **kwargs.pop("headers", {})}
    reply = httpx.post(f"{server}/v1/chat/completions", headers=headers, json=kwargs.pop("json", {"messages": []}) if "content" not in kwargs else None, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and says in error["message"]
    assert client.chat.completions.create(model="tiny", messages=user_message("Is it a port?", data_url(png_bytes())), max_tokens=3).choices


def test_unknown_paths_and_methods_get_json_errors_in_openai_shape(server):
    missing = httpx.get(f"{server}/v1/nothing")
    wrong_method = httpx.get(f"{server}/v1/chat/completions")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
    assert "POST" in wrong_method.headers["allow"]


def test_openai_client_raises_typed_errors(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_single_band_geotiff_is_accepted(client, tmp_path):
    tif = write_geotiff(tmp_path / "dem.tif", 32, 32, bands=1, dtype="float32")
    assert client.chat.completions.create(model="tiny", messages=user_message("What is this?", data_url(tif.read_bytes(), "image/tiff")), max_tokens=3).choices


def test_full_queue_answers_429_and_the_held_requests_still_finish(pipeline):
    import concurrent.futures

    from skymoe.serve.api import ServerLimits, create_app

    release = threading.Event()

    class HeldPipeline:
        """The real pipeline, held at generate until released, so the queue fills deterministically."""

        max_new_tokens, processor, model_name, bands = pipeline.max_new_tokens, pipeline.processor, "held", None

        def generate(self, *args, **kwargs):
            release.wait(60)
            return pipeline.generate(*args, **kwargs)

    app = create_app(HeldPipeline(), limits=ServerLimits(max_batch=1, max_queue=1, max_tokens=4))
    with running(app) as base, concurrent.futures.ThreadPoolExecutor(2) as pool:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        ask = lambda: client.chat.completions.create(model="held", messages=user_message("What is this?", data_url(png_bytes())), max_tokens=3)
        held = [pool.submit(ask)]
        while httpx.get(f"{base}/health").json()["pending"] < 1:
            time.sleep(0.02)
        held.append(pool.submit(ask))
        while httpx.get(f"{base}/health").json()["pending"] < 2:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError, match="server busy"):
            ask()
        with pytest.raises(openai.RateLimitError, match="server busy"):  # a stream fails before its first byte
            client.chat.completions.create(model="held", messages=user_message("What is this?", data_url(png_bytes())), max_tokens=3, stream=True)
        release.set()
        answers = [f.result(timeout=60).choices[0].message.content for f in held]
    expected = pipeline.ask(Image.open(io.BytesIO(png_bytes())).convert("RGB"), "What is this?", max_new_tokens=3).text
    assert answers == [expected, expected]


class PiecesPipeline:
    """Streams two pieces, then waits for ``release`` and fails (or answers) — the server's view of a generate call."""

    max_new_tokens, model_name, bands = 4, "pieces", None

    def __init__(self, pipeline, fail: bool):
        self.processor, self.fail, self.release = pipeline.processor, fail, threading.Event()

    def generate(self, images, prompts, *, on_text=None, **kwargs):
        from skymoe.infer.pipeline import Answer

        on_text(0, "two ")
        on_text(0, "pieces")
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("the accelerator fell over")
        return [Answer(text="two pieces", task="vqa", image_size=(48, 40))]


def test_failure_after_the_first_piece_is_an_error_event_in_the_stream(pipeline):
    from skymoe.serve.api import create_app

    fake = PiecesPipeline(pipeline, fail=True)
    fake.release.set()
    with running(create_app(fake)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="pieces", messages=user_message("What is this?", data_url(png_bytes())), stream=True)
        received = []
        with pytest.raises(openai.APIError, match="the accelerator fell over"):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "two pieces"  # what was generated before the failure arrived
        assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_pieces_written_before_a_failure_are_streamed_before_its_error():
    """The request handler can wake up after the job has both written pieces and failed (a loaded
    server): the answer is then already under way, so it streams the pieces and the error event."""
    import asyncio

    from skymoe.serve.api import _streaming_reply
    from skymoe.serve.queue import Job

    async def answer(job):
        job.on_text("two ")
        job.on_text("pieces")
        await asyncio.sleep(0)  # the pieces land in the queue; then the job fails
        raise RuntimeError("the accelerator fell over")

    async def reply_events() -> list[str]:
        response = await _streaming_reply(Job(None, "q", "vqa", 4, False), answer, "id", "m", lambda text: "stop")
        return [chunk async for chunk in response.body_iterator]

    *chunks, error, done = asyncio.run(reply_events())
    assert [json.loads(c[len("data: "):])["choices"][0]["delta"]["content"] for c in chunks] == ["", "two ", "pieces"]
    assert "the accelerator fell over" in json.loads(error[len("data: "):])["error"]["message"]
    assert done == "data: [DONE]\n\n"


def test_a_client_that_leaves_mid_stream_frees_its_slot(pipeline):
    from skymoe.serve.api import create_app

    fake = PiecesPipeline(pipeline, fail=False)
    with running(create_app(fake)) as base:
        body = {"messages": user_message("What is this?", data_url(png_bytes())), "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as reply:
            assert reply.status_code == 200
            assert any('"two "' in line for line in reply.iter_lines())  # streaming has begun; generation is still running
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/health").json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["pending"] == 0  # released while generate still runs
        fake.release.set()


def test_queue_runs_requests_of_any_task_and_routing_flag_as_one_batch():
    """Dynamic batching: what arrives together runs as one generate call when max_tokens agrees; task and
    routing are per row (routing is dropped for the rows that did not ask), and held requests batch together."""
    import asyncio

    from skymoe.data.schema import Routing
    from skymoe.infer.pipeline import Answer
    from skymoe.serve.queue import BatchQueue, Job

    calls = []

    class RecordingPipeline:
        def generate(self, images, prompts, *, task, routing, max_new_tokens, on_text):
            calls.append((list(prompts), max_new_tokens, routing))
            return [Answer(text=p, task=str(t), image_size=(1, 1), routing=Routing("vqa", "image", [[1.0]])) for p, t in zip(prompts, task)]

    async def serve(jobs):
        queue = BatchQueue(RecordingPipeline(), max_batch=3, max_wait_s=0.2)
        queue.start()
        try:
            return await asyncio.gather(*(queue.submit(job) for job in jobs))
        finally:
            await queue.stop()

    requests = [("q0", "vqa", 4, True), ("q1", "caption", 4, False), ("q2", "grounding", 8, True),
                ("q3", "counting", 4, False), ("q4", "vqa", 8, False), ("q5", "vqa", 4, False)]
    answers = asyncio.run(serve([Job(None, prompt, task, tokens, routing) for prompt, task, tokens, routing in requests]))
    assert calls == [(["q0", "q1", "q3"], 4, True), (["q2", "q4"], 8, True), (["q5"], 4, False)]
    assert [a.text for a in answers] == ["q0", "q1", "q2", "q3", "q4", "q5"]
    assert [a.task for a in answers] == [task for _, task, _, _ in requests]
    assert [a.routing is not None for a in answers] == [routing for *_, routing in requests]
