"""Hot-path metric updates, summed in memory and written to prometheus_client a few times a second.

In a server with several workers every prometheus_client update takes the library's lock, checks the process id and
writes the worker's memory-mapped file (0.7-1.4 us), and one classified image makes a dozen of them:
BentoML's four request series, the prediction, its confidence, the image count, the decode time and a share of its
batch's three histograms. With every update a no-op, the 28-px model answered 7-10% more requests at concurrency 32.
:class:`Tally` adds each update to a dict under its own lock instead (0.3-0.4 us) and writes the
sums, one update a series (there: 3.8% less server CPU a request, docs/PERFORMANCE.md): every ``interval`` seconds
on a daemon thread, before this worker renders ``/metrics`` (:func:`install`), and when the process exits. A scrape
sees its own worker's series exactly and the other workers' at most ``interval`` late; the dashboards and alerts
work on rates over minutes.

Counters and gauges are written with their own ``inc`` and ``set``. A histogram's observations are summed into its
``_sum`` and one ``_buckets`` entry a bound: prometheus_client's own layout, which ``tests/test_tally.py`` holds to
what its ``observe`` would write.
"""

from __future__ import annotations

import atexit
import bisect
import os
import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram


class Tally:
    """Counter and gauge increments, gauge values and histogram observations, held until :meth:`flush`."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self._lock = threading.Lock()  # guards the pending sums (the loop, decode and inference threads add)
        self._flushing = threading.Lock()  # one flush at a time, so a gauge's older value never lands last
        self._added: dict[Any, float] = {}  # a counter, gauge or histogram part -> the amount to add to it
        self._latest: dict[Gauge, float] = {}  # a gauge -> what to set it to
        self._histograms: dict[Histogram, tuple[list[float], Any, list[Any]]] = {}
        self._flusher: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget)

    def add(self, metric: Counter | Gauge, amount: float = 1.0) -> None:
        """``metric.inc(amount)`` (a gauge's ``dec`` is a negative amount), at the next flush."""
        with self._lock:
            self._added[metric] = self._added.get(metric, 0.0) + amount
        if self._flusher is None:
            self._start()

    def set(self, gauge: Gauge, amount: float) -> None:
        """``gauge.set(amount)``, at the next flush (the last one set before it wins; a "most recent" gauge is
        stamped then)."""
        with self._lock:
            self._latest[gauge] = amount
        if self._flusher is None:
            self._start()

    def observe(self, histogram: Histogram, amount: float) -> None:
        """``histogram.observe(amount)``, at the next flush."""
        parts = self._histograms.get(histogram)
        if parts is None:
            histogram._raise_if_not_observable()  # a labelled histogram's parent: the same error observe gives
            parts = self._histograms[histogram] = (list(histogram._upper_bounds), histogram._sum, histogram._buckets)
        bounds, total, buckets = parts
        i = bisect.bisect_left(bounds, amount)  # the first bound >= amount, the bucket observe counts it in
        bucket = buckets[i] if i < len(bounds) and amount <= bounds[i] else None  # none for NaN, as observe
        with self._lock:
            added = self._added
            added[total] = added.get(total, 0.0) + amount
            if bucket is not None:
                added[bucket] = added.get(bucket, 0.0) + 1.0
        if self._flusher is None:
            self._start()

    def flush(self) -> None:
        """Write what was added and set since the last flush to the metrics, one update a series."""
        with self._flushing:
            with self._lock:
                added, self._added = self._added, {}
                latest, self._latest = self._latest, {}
            for metric, amount in added.items():
                metric.inc(amount)
            for gauge, amount in latest.items():
                gauge.set(amount)

    def _start(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._run, daemon=True, name="metrics-tally")
        self._flusher.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def _forget(self) -> None:
        """In a forked child: the parent's pending sums are the parent's to write, and its flusher did not fork."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._added, self._latest, self._flusher = {}, {}, None


TALLY = Tally()


def install() -> None:
    """Flush before BentoML renders ``/metrics`` in this worker, so its own series are never behind."""
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    if getattr(PrometheusClient, "_imgclf_flushes", False):
        return
    original = PrometheusClient.generate_latest

    def generate_latest(self: PrometheusClient) -> bytes:
        TALLY.flush()
        return original(self)

    PrometheusClient.generate_latest = generate_latest
    PrometheusClient._imgclf_flushes = True
