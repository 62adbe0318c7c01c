import asyncio
import time

import numpy as np
import pytest

from service.inference.batching import MicroBatcher


def recording(scale: float = 1.0, seconds: float = 0.0):
    """An ``infer`` that records each batch's size (and takes ``seconds``), with the list it records into."""
    sizes: list[int] = []

    def infer(batch):
        sizes.append(len(batch))
        time.sleep(seconds)
        return batch * scale

    return sizes, infer


def test_concurrent_submissions_share_a_batch():
    sizes, infer = recording(scale=2)

    async def main():
        b = MicroBatcher(infer, max_batch_size=8, max_latency_ms=50)
        out = await asyncio.gather(*(b.submit(np.full(3, i, np.float32)) for i in range(5)))
        await b.close()
        return out

    out = asyncio.run(main())
    assert sizes == [5]
    assert [float(o[0]) for o in out] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_batches_never_exceed_the_maximum():
    sizes, infer = recording()

    async def main():
        b = MicroBatcher(infer, max_batch_size=4, max_latency_ms=20)
        await b.submit_many([np.zeros(2, np.float32)] * 10)
        await b.close()

    asyncio.run(main())
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_a_lone_request_waits_at_most_the_latency_window():
    async def main():
        b = MicroBatcher(lambda x: x, max_batch_size=64, max_latency_ms=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit(np.zeros(1, np.float32))
        elapsed = loop.time() - start
        await b.close()
        return elapsed

    assert asyncio.run(main()) < 1.0  # generous: only shows it does not wait for a full batch


def test_inference_failure_reaches_every_waiter_and_the_batcher_survives():
    calls = {"n": 0}

    def infer(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return batch

    async def main():
        b = MicroBatcher(infer, max_batch_size=4, max_latency_ms=20)
        results = await asyncio.gather(*(b.submit(np.zeros(1, np.float32)) for _ in range(3)),
                                       return_exceptions=True)  # fmt: skip
        again = await b.submit(np.ones(1, np.float32))
        await b.close()
        return results, again

    results, again = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert float(again[0]) == 1.0


@pytest.mark.parametrize("n", [1, 33])
def test_order_is_preserved(n):
    async def main():
        b = MicroBatcher(lambda x: x, max_batch_size=16, max_latency_ms=1)
        out = await b.submit_many([np.array([i], np.float32) for i in range(n)])
        await b.close()
        return [int(o[0]) for o in out]

    assert asyncio.run(main()) == list(range(n))


def test_images_arriving_while_the_runtime_is_busy_go_together():
    sizes, slow = recording(seconds=0.2)

    async def main():
        b = MicroBatcher(slow, max_batch_size=64, max_latency_ms=0)
        first = asyncio.ensure_future(b.submit(np.zeros(1, np.float32)))
        await asyncio.sleep(0.05)  # the first batch (of one, at once: idle window 0) is running now
        rest = await b.submit_many([np.ones(1, np.float32)] * 10)
        await first
        await b.close()
        return rest

    assert len(asyncio.run(main())) == 10
    assert sizes == [1, 10]


def test_an_idle_batcher_waits_only_for_images_on_their_way():
    sizes, infer = recording()

    async def main():
        b = MicroBatcher(infer, max_batch_size=8, max_latency_ms=2000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit(np.zeros(2, np.float32))  # nobody else is coming: no 2 s wait
        alone = loop.time() - start

        async def late(delay: float):
            b.coming += 1  # decoding, say
            await asyncio.sleep(delay)
            b.coming -= 1
            return await b.submit(np.ones(2, np.float32))

        await asyncio.gather(b.submit(np.zeros(2, np.float32)), late(0.05))  # the first waits for the second
        await b.close()
        return alone

    alone = asyncio.run(main())
    assert alone < 0.5
    assert sizes == [1, 2]


def test_an_image_the_worker_has_nothing_else_beside_runs_on_infer_alone():
    calls: list[tuple[str, int]] = []

    def infer(batch):
        calls.append(("shared", len(batch)))
        time.sleep(0.05)
        return batch

    def infer_alone(batch):
        calls.append(("alone", len(batch)))
        return batch

    async def main():
        b = MicroBatcher(infer, max_batch_size=8, max_latency_ms=0, infer_alone=infer_alone)
        await b.submit(np.zeros(1, np.float32))  # nothing else pending or coming
        b.coming += 1  # another image is being decoded
        await b.submit(np.zeros(1, np.float32))
        b.coming -= 1
        first = asyncio.ensure_future(b.submit(np.zeros(1, np.float32)))
        await asyncio.sleep(0.01)  # running alone; two more arrive and queue behind it
        await asyncio.gather(first, b.submit(np.ones(1, np.float32)), b.submit(np.ones(1, np.float32)))
        await b.close()

    asyncio.run(main())
    assert calls == [("alone", 1), ("shared", 1), ("alone", 1), ("shared", 2)]
