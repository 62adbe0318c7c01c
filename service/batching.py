"""An asyncio micro-batcher: every classify path (HTTP and gRPC) submits here, so concurrent
requests share inference batches.

A batch closes when it holds ``max_batch_size`` images or when its first image has waited
``max_latency_ms``. While one batch runs (in a single inference thread), the next one fills; if
images are already waiting when inference ends, they go at once rather than waiting out the window.
Nothing is dropped for being late: under overload requests queue, and the HTTP edge bounds that
queue with 429s (see ``max_concurrency``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_latency_ms: float = 10.0,
        on_batch: Callable[[int, float, float], None] | None = None,
    ):
        """``infer`` maps (N, ...) to (N, ...); ``on_batch(size, queue_seconds, infer_seconds)`` observes."""
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    def _ensure_started(self) -> asyncio.Queue[_Item]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")
        return self._queue

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue one preprocessed input; return its row of the batched output."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Item(x, future, time.perf_counter()))
        return await future

    async def submit_many(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(self.submit(x) for x in xs)))

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        items = [await queue.get()]
        deadline = items[0].enqueued + self.max_latency
        while len(items) < self.max_batch_size:
            if not queue.empty():
                items.append(queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect(self._queue)
            items = [i for i in items if not i.future.done()]  # cancelled by a disconnected client
            if not items:
                continue
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self.infer, np.stack([i.x for i in items]))
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiting request
                log.exception("inference failed for a batch of %d", len(items))
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finished = time.perf_counter()
            for row, item in zip(out, items, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
            if self.on_batch is not None:
                self.on_batch(len(items), started - min(i.enqueued for i in items), finished - started)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)
