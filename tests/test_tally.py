"""The metrics tally (service.tally) writes, once flushed, exactly what the metrics' own updates would have
written, loses nothing to threads adding at once, flushes on its own, and before BentoML renders /metrics."""

from __future__ import annotations

import math
import threading
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from service import tally
from service.tally import Tally


def _samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}  # fmt: skip


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Gauge, Gauge, Histogram, Histogram]:
    return (Counter("served", "", ["label"], registry=registry), Gauge("busy", "", registry=registry),
            Gauge("last", "", registry=registry), Histogram("seconds", "", ["model"], registry=registry),
            Histogram("size", "", buckets=(1, 2, 4, 8), registry=registry))  # fmt: skip


def test_a_flushed_tally_writes_what_the_metrics_own_updates_write():
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    served, busy, last, seconds, size = _metrics(direct)
    t_served, t_busy, t_last, t_seconds, t_size = _metrics(tallied)
    t = Tally()
    # on a bound, between bounds, past the last finite one, negative, zero
    observations = [0.005, 0.0051, 0.3, 7.5, 11.0, -1.0, 0.0, 2.5, 10.0, 1e9]
    for i, amount in enumerate(observations):
        label = "ab"[i % 2]
        served.labels(label).inc(i)
        t.add(t_served.labels(label), i)
        busy.inc()
        t.add(t_busy)
        if i % 3 == 0:
            busy.dec()
            t.add(t_busy, -1.0)
        last.set(i)
        t.set(t_last, i)
        seconds.labels(label).observe(amount)
        t.observe(t_seconds.labels(label), amount)
        size.observe(i)
        t.observe(t_size, i)
    assert _samples(tallied) != _samples(direct)  # nothing written until the flush
    t.flush()
    assert _samples(tallied) == _samples(direct)


def test_nan_adds_to_the_sum_and_to_no_bucket_as_observe_does():
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    h, th = Histogram("h", "", registry=direct), Histogram("h", "", registry=tallied)
    h.observe(math.nan)
    t = Tally()
    t.observe(th, math.nan)
    t.flush()
    a, b = _samples(direct), _samples(tallied)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_threads_adding_at_once_lose_nothing():
    registry = CollectorRegistry()
    counter, histogram = Counter("n", "", registry=registry), Histogram("h", "", registry=registry)
    t = Tally(interval=0.001)  # its flusher runs all along, beside the adding threads

    def work() -> None:
        for _ in range(5_000):
            t.add(counter)
            t.observe(histogram, 0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    t.flush()
    assert registry.get_sample_value("n_total") == 20_000
    assert registry.get_sample_value("h_count") == 20_000


def test_the_tally_flushes_on_its_own_every_interval():
    registry = CollectorRegistry()
    counter = Counter("n", "", registry=registry)
    t = Tally(interval=0.05)
    t.add(counter, 3)
    deadline = time.monotonic() + 5
    while registry.get_sample_value("n_total") != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.get_sample_value("n_total") == 3


def test_bentoml_renders_metrics_after_a_flush(monkeypatch):
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    tally.install()
    tally.install()  # once only: a second call does not wrap it again
    monkeypatch.setattr(tally, "TALLY", Tally(interval=3600))  # its flusher stays asleep: only the render writes
    counter = Counter("imgclf_test_tally_rendered", "")
    try:
        tally.TALLY.add(counter, 7)
        assert REGISTRY.get_sample_value("imgclf_test_tally_rendered_total") == 0
        text = PrometheusClient(multiproc=False).generate_latest().decode()
    finally:
        REGISTRY.unregister(counter)
    assert "imgclf_test_tally_rendered_total 7.0" in text
