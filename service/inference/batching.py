"""An asyncio micro-batcher: every classify path (HTTP and gRPC) submits here, so concurrent
requests share inference batches.

Batches form adaptively. While the runtime is busy with one batch, arriving images queue and all
go together (up to ``max_batch_size``) the moment it is free: under load batches grow by themselves
at no latency cost. When the runtime is idle, the first image waits at most ``max_latency_ms`` for
company (0: go at once), and only while company is on its way: callers count the images they are
still decoding in ``coming`` and the requests not yet parsed in ``also_coming()``, so a lone request
never waits for nobody. Nothing is dropped for being late: the HTTP edge bounds the queue with 429s
(``max_concurrency``) instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def _lower_priority(nice: int) -> None:
    """Linux schedules threads one by one: raise this thread's niceness (always allowed)."""
    if nice > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


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
        max_latency_ms: float = 1.0,
        on_batch: Callable[[int, float, float], None] | None = None,
        nice: int = 0,
        infer_alone: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        """``infer`` maps (N, ...) to (N, ...); ``on_batch(size, queue_seconds, infer_seconds)`` observes;
        ``nice`` > 0 lowers the scheduling priority of the inference thread (a shadow's, say);
        ``infer_alone``, when given, runs a batch of one image while nothing else is pending or on its way
        (the server is lightly loaded: it may use the cores that other workers' batches would)."""
        self.infer = infer
        self.infer_alone = infer_alone
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference",
                                            initializer=_lower_priority, initargs=(nice,))  # fmt: skip
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending = 0  # images submitted and not yet answered (0: the runtime is idle)
        self.coming = 0  # images being decoded that will be submitted soon
        self.also_coming: Callable[[], int] = lambda: 0  # e.g. requests still being received

    def warm_up(self, x: np.ndarray) -> None:
        """Run ``x`` (a batch) once on the inference thread itself, before any request: a runtime's per-thread
        set-up is then not paid by the first answers. Blocks; call it before serving."""
        self._executor.submit(self.infer, x).result()
        if self.infer_alone is not None:
            self._executor.submit(self.infer_alone, x[:1]).result()

    def _ensure_started(self) -> asyncio.Queue[_Item]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="micro-batcher")
        return self._queue

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue one preprocessed input; return its row of the batched output."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Item(x, future, time.perf_counter()))
        self.pending += 1
        try:
            return await future
        finally:
            self.pending -= 1

    async def submit_one(self, x: np.ndarray) -> list[np.ndarray]:
        """:meth:`submit` as a one-row list, the shape of :meth:`submit_many`'s answer."""
        return [await self.submit(x)]

    async def submit_many(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(self.submit(x) for x in xs)))

    async def _collect(
        self, queue: asyncio.Queue[_Item], carry: collections.deque[_Item], running: asyncio.Future | None
    ) -> list[_Item]:
        """One batch: whatever queues while ``running`` lasts, or up to ``max_latency`` when idle."""
        items = [carry.popleft() if carry else await queue.get()]
        deadline = items[0].enqueued + self.max_latency
        getter: asyncio.Task | None = None
        try:
            while len(items) < self.max_batch_size:
                while carry and len(items) < self.max_batch_size:
                    items.append(carry.popleft())
                while not queue.empty() and len(items) < self.max_batch_size:
                    items.append(queue.get_nowait())
                if len(items) >= self.max_batch_size:
                    break
                busy = running is not None and not running.done()
                timeout = None if busy else deadline - time.perf_counter()
                if timeout is not None and (timeout <= 0 or not (self.coming or self.also_coming())):
                    break  # idle, and the wait is over or nobody else is on the way
                getter = getter or asyncio.ensure_future(queue.get())
                waiting = {getter, running} if busy else {getter}
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    items.append(getter.result())
                    getter = None
                elif not done:
                    break  # the idle window is over
        finally:
            if getter is not None and not getter.cancel() and not getter.cancelled():
                carry.append(getter.result())  # it completed while we were leaving: keep it for later
        return items

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: collections.deque[_Item] = collections.deque()
        running: asyncio.Future | None = None
        while True:
            items = await self._collect(self._queue, carry, running)
            if running is not None:
                with contextlib.suppress(Exception):
                    await running  # one runtime: the next batch starts when the last one ends
            items = [i for i in items if not i.future.done()]  # cancelled by a disconnected client
            if items:
                infer = self.infer_alone if self.infer_alone is not None and self._alone(items) else self.infer
                running = loop.run_in_executor(self._executor, self._infer_batch, items, infer)
                running.add_done_callback(lambda fut, batch=items: self._deliver(batch, fut))

    def _alone(self, items: list[_Item]) -> bool:
        """One image, and nothing else pending, decoding or being received."""
        return len(items) == 1 and self.pending <= 1 and not (self.coming or self.also_coming())

    def _infer_batch(self, items: list[_Item], infer: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[np.ndarray, float, float]:  # fmt: skip
        started = time.perf_counter()
        out = infer(np.stack([i.x for i in items]))
        return out, started, time.perf_counter()

    def _deliver(self, items: list[_Item], fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("inference failed for a batch of %d: %s", len(items), exc)
        for k, item in enumerate(items):
            if item.future.done():
                continue
            if exc is not None:
                item.future.set_exception(exc)
            else:
                item.future.set_result(fut.result()[0][k])
        if exc is None and self.on_batch is not None:
            out, started, finished = fut.result()
            self.on_batch(len(items), started - min(i.enqueued for i in items), finished - started)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close_threadsafe(self, timeout: float = 10.0) -> None:
        """Close from another thread (e.g. after a model swap): on the batcher's own loop if it has one."""
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.close(), self._loop).result(timeout)
        else:
            self._executor.shutdown(wait=False, cancel_futures=True)
