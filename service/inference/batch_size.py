"""The largest inference batch worth forming on this machine, measured at load.

Batching amortises a runtime's per-call costs, and the server's too (a thread hand-off, the batch's Python);
beyond some size, though, a batch's activations no longer fit the core's caches and every image costs more.
Where that happens depends on the processor and the model: on 2 cores of an AMD EPYC (Zen 4, 2 MB of L2 a
core) EfficientNet-Lite0 at 224 px costs 5.4-5.7 ms an image at batches of 2-4 and 6.6-8.6 at 32 (OpenVINO,
ONNX Runtime), and serving it with batches of at most 4 answered 8-11% more requests at concurrency 32; on an
Intel Xeon with AMX the saving at 8 was ~6% in the runtime alone and the server did worse with the smaller
batches. So :func:`batch_limit` caps batches only when a smaller one saves at least ``SAVING`` an image over
the largest: then the largest size within ``WITHIN`` of the cheapest image.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

SAVING = 0.10  # a smaller batch must save this share of an image's time over the largest to cap batches
WITHIN = 0.05  # the cap: the largest size whose image time is this close to the cheapest


def batch_sizes(largest: int) -> list[int]:
    """Powers of two below ``largest``, and ``largest`` itself."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, largest]


def time_batches(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, rounds: int = 5,
                 least_seconds: float = 0.05) -> dict[int, float]:  # fmt: skip
    """Seconds an image at each of :func:`batch_sizes` up to ``len(batch)``: the best of ``rounds`` rounds (the
    sizes interleaved, so a drifting host weighs on all alike), each size run for at least ``least_seconds``."""
    best: dict[int, float] = {}
    for _ in range(rounds):
        for size in batch_sizes(len(batch)):
            calls, start = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < least_seconds:
                infer(batch[:size])
                calls += 1
            per_image = (time.perf_counter() - start) / (calls * size)
            best[size] = min(best.get(size, per_image), per_image)
    return best


def batch_limit(per_image: dict[int, float], largest: int) -> tuple[int, str]:
    """The most images a batch should hold given ``per_image`` (seconds an image by batch size), and why."""
    if not per_image or largest not in per_image:
        return largest, "not measured"
    cheapest = min(per_image.values())
    saving = 1 - cheapest / per_image[largest]
    if saving < SAVING:
        return largest, f"a smaller batch saves {saving:.0%} an image, under the {SAVING:.0%} that caps batches"
    limit = max(size for size, seconds in per_image.items() if seconds <= cheapest * (1 + WITHIN))
    return limit, f"batches over {limit} cost up to {saving:.0%} more an image on this machine"
