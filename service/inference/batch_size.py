"""The largest inference batch worth forming on this machine, measured at load.

Batching amortises a runtime's per-call costs, and the server's too (a thread hand-off, the batch's Python);
beyond some size, though, a batch's activations no longer fit the core's caches and every image costs more.
Where that happens depends on the processor and the model: on 2 cores of an AMD EPYC (Zen 4, 2 MB of L2 a
core) EfficientNet-Lite0 at 224 px costs 5.4-5.7 ms an image at batches of 2-4 and 6.6-8.6 at 32 (OpenVINO,
ONNX Runtime), and serving it with batches of at most 4 answered 8-11% more requests at concurrency 32; on an
Intel Xeon with AMX the saving at 8 was ~6% in the runtime alone and the server did worse with the smaller
batches. So :func:`batch_limit` caps batches only when a smaller one saves at least ``SAVING`` an image over
the largest: then the largest size within ``WITHIN`` of the cheapest image. On the AMD machine the saving
measured at start-up was 11-16% on OpenVINO (26-31% on ONNX Runtime), close enough to the line that another
worker's start-up beside the timing pushed it under in some starts (2-4%): :func:`measured_limit` takes a
second look at a saving just under the line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

SAVING = 0.10  # a smaller batch must save this share of an image's time over the largest to cap batches
WITHIN = 0.05  # the cap: the largest size whose image time is this close to the cheapest
CLOSE = 0.05  # a saving this close under SAVING is timed once more before batches stay whole


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
            per_image = seconds_a_call(infer, batch[:size], least_seconds) / size
            best[size] = min(best.get(size, per_image), per_image)
    return best


def seconds_a_call(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, least_seconds: float) -> float:
    """The mean seconds of ``infer(batch)``, called for at least ``least_seconds`` (and at least once)."""
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < least_seconds:
        infer(batch)
        calls += 1
    return (time.perf_counter() - start) / calls


def batch_limit(per_image: dict[int, float], largest: int) -> tuple[int, str]:
    """The most images a batch should hold given ``per_image`` (seconds an image by batch size), and why."""
    if not per_image or largest not in per_image:
        return largest, "not measured"
    cheapest, saved = min(per_image.values()), saving(per_image, largest)
    if saved < SAVING:
        return largest, f"a smaller batch saves {saved:.0%} an image, under the {SAVING:.0%} that caps batches"
    limit = max(size for size, seconds in per_image.items() if seconds <= cheapest * (1 + WITHIN))
    return limit, f"batches over {limit} cost up to {saved:.0%} more an image on this machine"


def saving(per_image: dict[int, float], largest: int) -> float:
    """The share of an image's time at ``largest`` that the cheapest batch size saves."""
    return 1 - min(per_image.values()) / per_image[largest]


def measured_limit(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray
                   ) -> tuple[dict[int, float], int, str]:  # fmt: skip
    """Time the batch sizes up to ``len(batch)`` and decide the limit (:func:`batch_limit`). A saving just under
    the line is timed once more, each size keeping its best: a start-up beside another worker's (both time at
    once, or one still compiles) can hide a real saving, and batches kept whole that should not be cost far more
    than a second look (on 2 AMD EPYC Zen 4 cores, one peer run whose two OpenVINO workers kept batches of 32
    answered 0.72 of the in-process ceiling against 0.81-0.88 with the cap)."""
    largest = len(batch)
    per_image = time_batches(infer, batch)
    if SAVING - CLOSE <= saving(per_image, largest) < SAVING:
        again = time_batches(infer, batch)
        per_image = {size: min(seconds, again[size]) for size, seconds in per_image.items()}
    return (per_image, *batch_limit(per_image, largest))
