"""A bounded request queue that batches concurrent requests dynamically into one generate call.

The worker takes the first waiting request, then every request that arrives
within ``max_wait_s`` (and whatever queued while the previous batch ran), up
to ``max_batch``, and runs them as one batch: a decode step costs about the
same for 1 row as for 16 on a model this size, so throughput grows with the
batch. Requests share a batch when they ask for the same ``max_tokens`` (a
batch runs until its longest answer ends); task and routing are per row. One
batch runs at a time: the model is re-entrant, but concurrent batches would
only split the same cores or accelerator between them. Up to ``max_queue``
further requests wait; beyond that ``submit`` raises :class:`QueueFull`
(HTTP 429) instead of letting latency grow without bound.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(RuntimeError):
    pass


@dataclass
class Job:
    image: object  # PIL image
    prompt: object  # question or list of Turns
    task: str
    max_tokens: int
    routing: bool
    on_text: Callable[[str], None] | None = None  # streamed answer pieces (called from the worker thread)
    future: asyncio.Future = field(default=None, repr=False)

    @property
    def key(self) -> int:
        """Jobs with the same key can share one generate call."""
        return self.max_tokens


class BatchQueue:
    def __init__(self, pipeline, *, max_batch: int = 4, max_queue: int = 16, max_wait_s: float = 0.01):
        self.pipeline = pipeline
        self.max_batch, self.max_queue, self.max_wait_s = max_batch, max_queue, max_wait_s
        self.pending = 0  # submitted and not yet answered
        self._queue: asyncio.Queue | None = None
        self._held: collections.deque[Job] = collections.deque()  # taken while batching, incompatible with that batch
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, job: Job):
        if self.pending >= self.max_batch + self.max_queue:
            raise QueueFull(f"server busy: {self.pending} requests in progress or queued; retry later")
        self.pending += 1
        job.future = asyncio.get_running_loop().create_future()
        await self._queue.put(job)
        try:
            return await job.future
        finally:
            self.pending -= 1

    async def _next_batch(self) -> list[Job]:
        first = self._held.popleft() if self._held else await self._queue.get()
        batch = [first] + self._take_held(first.key, self.max_batch - 1)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                break
            (batch if job.key == first.key else self._held).append(job)
        return batch

    def _take_held(self, key, limit: int) -> list[Job]:
        """Up to ``limit`` held jobs with ``key``, oldest first; the others stay held in order."""
        taken = [job for job in self._held if job.key == key][:limit]
        self._held = collections.deque(job for job in self._held if not any(job is t for t in taken))
        return taken

    def _generate(self, batch: list[Job]):
        first = batch[0]

        def on_text(index: int, text: str) -> None:
            if batch[index].on_text is not None:
                batch[index].on_text(text)

        streaming = any(job.on_text is not None for job in batch)  # re-decoding every step costs: only when asked
        answers = self.pipeline.generate([j.image for j in batch], [j.prompt for j in batch], task=[j.task for j in batch],
                                         routing=any(j.routing for j in batch), max_new_tokens=first.max_tokens,
                                         on_text=on_text if streaming else None)
        for job, answer in zip(batch, answers):
            if not job.routing:  # read from the batch's one prefill for the rows that asked
                answer.routing = None
        return answers

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            batch = [job for job in batch if not job.future.done()]  # the client went away
            if not batch:
                continue
            try:
                answers = await asyncio.to_thread(self._generate, batch)
            except Exception as exc:  # one bad batch must not stop the server: its requests get the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, answer in zip(batch, answers):
                if not job.future.done():
                    job.future.set_result(answer)
