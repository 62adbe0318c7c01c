"""BentoML's request series, for the requests the front lane answers before BentoML's middlewares see them.

BentoML's traffic middleware records every request in ``bentoml_service_request_total``,
``bentoml_service_request_duration_seconds``, ``bentoml_service_request_in_progress`` and
``bentoml_service_last_request_timestamp_seconds``; the dashboard, the alerts and the in-flight autoscaler read
them. :class:`~service.edge.lane.FrontLane` answers ``POST /classify`` ahead of that middleware, so it records
the same series itself: :func:`install` keeps the middleware's own metric objects once it has created them (on
the worker's first request of any kind), and :class:`RequestSeries` writes to them with the labels the
middleware would use, each label set's child looked up once rather than on every request, through the
worker's tally (:mod:`service.tally`: summed, and written a few times a second).
"""

from __future__ import annotations

import time
from typing import Any

from service.tally import TALLY

_middleware: Any = None  # the worker's BentoML traffic middleware, once set up


def install() -> None:
    """Keep each worker's traffic middleware when it sets up its metrics (once, on its first request)."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    if getattr(RunnerTrafficMetricsMiddleware, "_imgclf_kept", False):
        return
    original = RunnerTrafficMetricsMiddleware._setup

    def _setup(self: Any) -> None:
        global _middleware
        original(self)
        _middleware = self

    RunnerTrafficMetricsMiddleware._setup = _setup
    RunnerTrafficMetricsMiddleware._imgclf_kept = True


class RequestSeries:
    """One endpoint's request series, written as BentoML's traffic middleware writes them."""

    def __init__(self, middleware: Any, endpoint: str):
        from bentoml._internal.context import server_context

        service = dict(service_name=server_context.bento_name, service_version=server_context.bento_version,
                       runner_name=server_context.service_name)  # fmt: skip
        self._labels = dict(endpoint=endpoint, **service)
        self._total = middleware.metrics_request_total
        self._duration = middleware.metrics_request_duration
        self._in_progress = middleware.metrics_request_in_progress.labels(**self._labels)
        self._last_request = middleware.metrics_last_request_timestamp.labels(**service)
        self._by_status: dict[int, tuple[Any, Any]] = {}

    def started(self) -> float:
        """A request began: its start time, for :meth:`finished`."""
        TALLY.set(self._last_request, time.time())
        TALLY.add(self._in_progress)
        return time.perf_counter()

    def finished(self, started: float, status: int | None) -> None:
        """The request ended; ``status``: the response's, or None when none was sent (not counted, as BentoML)."""
        TALLY.add(self._in_progress, -1.0)
        if status is None:
            return
        children = self._by_status.get(status)
        if children is None:
            labels = dict(self._labels, http_response_code=status)
            children = self._by_status[status] = (self._total.labels(**labels), self._duration.labels(**labels))
        TALLY.add(children[0])
        TALLY.observe(children[1], max(time.perf_counter() - started, 0.0))


_series: dict[str, RequestSeries] = {}


def series(endpoint: str) -> RequestSeries | None:
    """``endpoint``'s series in this worker, or None while BentoML's middleware has not created its metrics."""
    found = _series.get(endpoint)
    if found is None and _middleware is not None:
        found = _series[endpoint] = RequestSeries(_middleware, endpoint)
    return found
