"""Whether a lone image is worth every core, measured at load.

A worker with nothing else to do runs a lone image on a second instance of its runtime with every core's threads
(:class:`~service.inference.capacity.Capacity`'s ``lone_threads``). On 2 cores of an Intel Xeon with AMX that
answers one EfficientNet-Lite0 image in 3.7 instead of 6.4 ms on OpenVINO (4.6 on ONNX Runtime), and the server
answered 113-117 requests/s at concurrency 1 against 95-97 without it. The 28-px model's image takes 0.218 instead
of 0.233 ms on OpenVINO bf16 (timed alone: 1.4% of a 1.1-ms request), the server was no faster at concurrency 1
(836-875 against 817-864 requests/s), and the runtime's threads, waiting busily between requests, spent 2.07-2.20 ms
of the server's CPU a request against 1.19-1.26. So the second runtime is kept only where it saves at least
:data:`SAVING` of a lone request's time: the image's inference plus :data:`REQUEST_SECONDS` for the rest (HTTP,
decoding, the hand-offs; the 28-px model's requests took 1.1 ms at concurrency 1, 0.3 of it inference). Timed at
load in the server, the 28-px model's image took 0.300 against 0.339 ms on two threads (12% of the image, 3% of a
request).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.inference.batch_size import seconds_a_call

SAVING = 0.10  # the share of a lone request's time the lone runtime must save to be kept
REQUEST_SECONDS = 1e-3  # a request's time besides inference at concurrency 1, roughly, on these machines


def time_lone(shared: Callable[[np.ndarray], np.ndarray], lone: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
              rounds: int = 5, least_seconds: float = 0.05) -> tuple[float, float]:  # fmt: skip
    """Seconds of one image (a batch of one) on ``shared`` and on ``lone``: the best of ``rounds`` interleaved
    rounds, each run for at least ``least_seconds``."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for k, infer in enumerate((shared, lone)):
            best[k] = min(best[k], seconds_a_call(infer, image, least_seconds))
    return best[0], best[1]


def lone_verdict(shared_seconds: float, lone_seconds: float, threads: int) -> tuple[bool, str]:
    """Whether a lone image should run on the ``threads``-thread runtime, given the two timings, and why."""
    saved = (shared_seconds - lone_seconds) / (shared_seconds + REQUEST_SECONDS)
    timing = f"{threads} threads take {lone_seconds * 1e3:.2f} against {shared_seconds * 1e3:.2f} ms a lone image"
    if saved >= SAVING:
        return True, f"{timing}: {saved:.0%} of a request's time saved on this machine"
    return False, f"{timing}: {saved:.0%} of a request's time, under the {SAVING:.0%} worth their busy-waiting CPU"
