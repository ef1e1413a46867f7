"""FastAPI app: an OpenAI-compatible chat endpoint for a SkyMoE Pipeline, plus structured grounding.

Endpoints: ``POST /v1/chat/completions`` (text + ``image_url`` data URLs,
optional SSE streaming), ``GET /v1/models``, ``GET /health`` (no key needed)
and ``POST /v1/skymoe/ground`` (boxes as JSON).

Every error is a JSON body in OpenAI's shape ``{"error": {"message", "type",
"code"}}`` with the matching status: 400 bad request (malformed JSON, missing
image, empty prompt, unreadable image, too many tokens asked), 401 wrong or
missing API key, 404 unknown path, 405 wrong method, 413 body or image too
large, 429 queue full. A failing request never takes the server down.

Streaming sends the answer token by token as the batched generate call
produces it (the queue routes each row's pieces to its request). The response
starts with the first piece, so a request that fails before generating
(queue full, unreadable image) still gets its status code; a failure after it
is an ``error`` event in the stream, and a client that disconnects cancels its job.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from skymoe.data.schema import Task, Turn
from skymoe.errors import DataError
from skymoe.serve.images import ImageTooLarge, decode_data_url, decode_image
from skymoe.serve.queue import BatchQueue, Job, QueueFull


@dataclass
class ServerLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 256
    max_batch: int = 4
    max_queue: int = 16
    batch_wait_s: float = 0.01


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


# ---- request bodies (the subset of OpenAI's schema we serve) ----------------------------------------
class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    temperature: float | None = None  # accepted for compatibility; decoding is greedy
    task: str | None = None  # SkyMoE extension: caption/vqa/grounding/... (default vqa)
    routing: bool = False  # SkyMoE extension: include the router's decision


class GroundRequest(BaseModel):
    image: str  # data URL
    query: str
    max_tokens: int | None = Field(default=None, ge=1)


# ---- helpers ----------------------------------------------------------------------------------------
def _error_body(exc: APIError) -> dict:
    return {"error": {"message": exc.message, "type": exc.kind, "code": exc.code}}


async def _read_json(request, limits: ServerLimits) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise APIError(413, f"request body of {int(declared):,} bytes exceeds the limit of {limits.max_body_bytes:,}", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise APIError(413, f"request body exceeds the limit of {limits.max_body_bytes:,} bytes", "body_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON body ({exc})", "invalid_json") from None


def _validate(model_cls, raw):
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise APIError(400, f"invalid request: {details}", "invalid_request") from None


def _image(url: str, limits: ServerLimits, bands):
    try:
        return decode_image(decode_data_url(url), max_pixels=limits.max_image_pixels, name="image_url", bands=bands)
    except ImageTooLarge as exc:
        raise APIError(413, str(exc), "image_too_large") from None
    except DataError as exc:
        raise APIError(400, str(exc), "invalid_image") from None


def _max_tokens(requested: int | None, pipeline, limits: ServerLimits) -> int:
    value = requested or min(pipeline.max_new_tokens, limits.max_tokens)
    if value > limits.max_tokens:
        raise APIError(400, f"max_tokens={value} exceeds the server limit of {limits.max_tokens}", "max_tokens_too_large")
    return value


def _conversation(messages: list[Message]) -> tuple[str, list[Turn]]:
    """(the one image, the turns); system messages are dropped (the model was not trained with them)."""
    images, turns = [], []
    for message in messages:
        if message.role == "system":
            continue
        parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        text = " ".join(p.text or "" for p in parts if p.type == "text").strip()
        images += [p.image_url.url for p in parts if p.type == "image_url" and p.image_url is not None]
        if turns and turns[-1].role == message.role:  # merge consecutive messages of one role
            turns[-1] = Turn(message.role, f"{turns[-1].text} {text}".strip())
        else:
            turns.append(Turn(message.role, text))
    if len(images) != 1:
        raise APIError(400, f"expected exactly one image (an image_url content part with a data: URL), got {len(images)}", "image_required")
    if not turns or turns[0].role != "user" or turns[-1].role != "user":
        raise APIError(400, "messages must start and end with a user message", "invalid_messages")
    if not turns[-1].text:
        raise APIError(400, "empty prompt: the last user message has no text", "empty_prompt")
    return images[0], turns


def _routing_dict(answer) -> dict | None:
    return None if answer.routing is None else vars(answer.routing)


# ---- the app ----------------------------------------------------------------------------------------
def create_app(pipeline, *, api_key: str | None = None, limits: ServerLimits | None = None, model_name: str | None = None):
    """FastAPI app serving ``pipeline`` (a :class:`skymoe.infer.Pipeline`)."""
    limits = limits or ServerLimits()
    model_name = model_name or pipeline.model_name
    queue = BatchQueue(pipeline, max_batch=limits.max_batch, max_queue=limits.max_queue, max_wait_s=limits.batch_wait_s)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        await queue.stop()

    app = FastAPI(title="SkyMoE", lifespan=lifespan)
    app.state.queue, app.state.limits = queue, limits

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(_error_body(exc), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown path (404), wrong method (405)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_error_body(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse(_error_body(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error", "server_error")), 500)

    def completion_tokens(text: str) -> int:
        return len(pipeline.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)", "invalid_api_key", "authentication_error")

    async def answer(job: Job):
        try:
            return await queue.submit(job)
        except QueueFull as exc:
            raise APIError(429, str(exc), "queue_full", "rate_limit_error") from None
        except ValueError as exc:  # a SkyMoEError is one too
            raise APIError(400, str(exc), "invalid_request") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "pending": queue.pending}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started, "owned_by": "skymoe"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request)
        body = _validate(ChatRequest, await _read_json(request, limits))
        try:
            task = Task(body.task or Task.VQA)
        except ValueError:
            raise APIError(400, f"unknown task {body.task!r}; expected one of {[t.value for t in Task]}", "invalid_task") from None
        max_tokens = _max_tokens(body.max_completion_tokens or body.max_tokens, pipeline, limits)
        image_url, turns = _conversation(body.messages)
        job = Job(_image(image_url, limits, pipeline.bands), turns, task.value, max_tokens, body.routing)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"

        def finish_reason(text: str) -> str:
            return "length" if completion_tokens(text) >= max_tokens else "stop"

        if body.stream:
            return await _streaming_reply(job, answer, completion_id, model_name, finish_reason)
        result = await answer(job)
        tokens = completion_tokens(result.text)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": finish_reason(result.text)}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": tokens, "total_tokens": result.prompt_tokens + tokens},
            "skymoe": _extra(result),
        }

    @app.post("/v1/skymoe/ground")
    async def ground(request: Request):
        check_key(request)
        body = _validate(GroundRequest, await _read_json(request, limits))
        if not body.query.strip():
            raise APIError(400, "empty query: say what to locate", "empty_prompt")
        max_tokens = _max_tokens(body.max_tokens, pipeline, limits)
        image = _image(body.image, limits, pipeline.bands)
        from skymoe.infer.pipeline import PROMPTS

        result = await answer(Job(image, PROMPTS[Task.GROUNDING].format(query=body.query.strip()), Task.GROUNDING.value, max_tokens, True))
        return {"query": body.query, "text": result.text, "image_size": list(result.image_size),
                "boxes": [b.to_dict() for b in result.boxes], "routing": _routing_dict(result)}

    return app


def _extra(result) -> dict:
    return {"task": result.task, "boxes": [b.to_dict() for b in result.boxes], "routing": _routing_dict(result)}


async def _streaming_reply(job: Job, answer, completion_id: str, model_name: str, finish_reason) -> StreamingResponse:
    """SSE response fed by the job's streamed pieces; a job that fails before writing any piece keeps its status code."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    result_task = asyncio.ensure_future(answer(job))
    first_piece = asyncio.ensure_future(pieces.get())
    try:
        await asyncio.wait({result_task, first_piece}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the client went away before the first piece: drop its job
        _cancel(first_piece, result_task)
        raise
    # Both can be done when the handler wakes (a loaded server): a job that wrote a piece before
    # failing streams it, then the error.
    if result_task.done() and result_task.exception() is not None and not first_piece.done():
        first_piece.cancel()
        raise result_task.exception()
    events = _stream(completion_id, model_name, first_piece, pieces, result_task, finish_reason)
    return StreamingResponse(events, media_type="text/event-stream")


def _cancel(*tasks: asyncio.Future) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()


async def _stream(completion_id: str, model_name: str, first_piece: asyncio.Future, pieces: asyncio.Queue, result_task: asyncio.Future,
                  finish_reason):
    """OpenAI chat.completion.chunk events: role, the answer piece by piece, finish (with the SkyMoE extras), [DONE].

    A failure after the first piece (the 200 status is sent) becomes an ``error`` event before
    ``[DONE]``; a client that disconnects cancels its job (a queued job is then skipped).
    """
    created = int(time.time())

    def event(delta: dict, finish: str | None = None, **more) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(chunk)}\n\n"

    waiting = first_piece
    try:
        yield event({"role": "assistant", "content": ""})
        sent = ""
        while True:
            await asyncio.wait({waiting, result_task}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():  # generation finished: what is still queued was put before it
                break
            sent += waiting.result()
            yield event({"content": waiting.result()})
            waiting = asyncio.ensure_future(pieces.get())
        while not pieces.empty():
            piece = pieces.get_nowait()
            sent += piece
            yield event({"content": piece})
        result = result_task.result()
        if result.text.startswith(sent) and len(result.text) > len(sent):  # pieces are a prefix of the answer
            yield event({"content": result.text[len(sent) :]})
        yield event({}, finish_reason(result.text), skymoe=_extra(result))
    except Exception as exc:  # the status line is gone: report the error in the stream, as OpenAI does
        error = exc if isinstance(exc, APIError) else APIError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error", "server_error")
        yield f"data: {json.dumps(_error_body(error))}\n\n"
    finally:
        _cancel(waiting, result_task)
    yield "data: [DONE]\n\n"
