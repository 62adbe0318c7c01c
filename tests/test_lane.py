"""The classify lanes (service.edge.lane) answer POST /classify exactly as the route does: the same body and
status for every kind of request, with the route itself answering whatever a lane does not take; the front lane
also records BentoML's request series and keeps its timeout and error answers."""

from __future__ import annotations

import asyncio

import pytest
from conftest import COLOURS, colour_image, encode, loaded_worker
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.edge.app import create_app
from service.edge.classify import InFlight
from service.edge.lane import ClassifyLane, FrontLane, plain_query
from service.edge.limits import BodyGuard, BodyLimits
from service.edge.traffic import RequestSeries
from service.tally import TALLY

RED = encode(colour_image(COLOURS["red"], 48, seed=77))
LANE = {"x-via": "lane"}
FRONT = {"x-via": "front"}


class TrafficMetrics:
    """The metric objects BentoML's traffic middleware creates, in a registry of the test's own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"]
        service = ["service_name", "service_version", "runner_name"]
        self.metrics_request_total = Counter("request_total", "", labels, registry=self.registry)
        self.metrics_request_duration = Histogram("request_duration_seconds", "", labels, registry=self.registry)
        self.metrics_request_in_progress = Gauge("request_in_progress", "", ["endpoint", *service],
                                                 registry=self.registry)  # fmt: skip
        self.metrics_last_request_timestamp = Gauge("last_request_timestamp_seconds", "", service,
                                                    registry=self.registry)  # fmt: skip

    def value(self, name: str, **labels) -> float:
        TALLY.flush()  # the front lane's updates are summed until the next flush (service.tally)
        samples = [s for m in self.registry.collect() for s in m.samples if s.name == name
                   and all(s.labels.get(k) == str(v) for k, v in labels.items())]  # fmt: skip
        return sum(s.value for s in samples)


def test_plain_query_takes_in_range_integers_and_leaves_the_rest_to_the_route():
    assert plain_query(b"") == {}
    assert plain_query(b"top_k=3&level=2") == {"top_k": 3, "level": 2}
    assert plain_query(b"other=x&top_k=1000") == {"top_k": 1000}  # unknown names are ignored, as by the route
    for raw in (b"top_k=0", b"top_k=1001", b"level=101", b"top_k=-1", b"top_k=", b"top_k=3&top_k=4", b"top_k=1e3",
                b"top_k=%20" b"3", b"top_k=\xff", b"top_k=00007"):  # fmt: skip
        assert plain_query(raw) is None, raw


@pytest.fixture(scope="module")
def clients(trained_model):
    """The app, plain, behind the lane (the header ``x-via: lane``) or behind the front lane (``x-via: front``)."""
    settings, worker = loaded_worker(trained_model)
    in_flight = InFlight(settings.max_concurrency)
    app = create_app(settings, lambda: worker.path, in_flight=in_flight)
    passed: list[str] = []  # requests the lane handed to the app

    async def app_behind_lane(scope, receive, send):
        passed.append(scope.get("query_string", b"").decode())
        await app(scope, receive, send)

    upload = settings.max_upload_bytes
    lane = ClassifyLane(app_behind_lane, get_path=lambda: worker.path, in_flight=in_flight, upload=upload)
    limits = BodyLimits(upload, settings.max_request_bytes, settings.body_timeout_seconds)
    metrics = TrafficMetrics()
    series = RequestSeries(metrics, "/classify")
    front = FrontLane(app_behind_lane, BodyGuard(lane, limits), series=lambda: series, timeout=60)

    async def either(scope, receive, send):  # one client, one event loop: the worker's batcher lives on it
        via = dict(scope.get("headers", [])).get(b"x-via")
        await {b"lane": lane, b"front": front}.get(via, app)(scope, receive, send)

    with TestClient(either) as client:
        client.passed = passed
        client.metrics = metrics
        yield client


REQUESTS = {
    "raw image": dict(content=RED, headers={"Content-Type": "image/png"}),
    "raw image, top_k": dict(content=RED, headers={"Content-Type": "image/png"}, params={"top_k": 2}),
    "top_k above the class count": dict(content=RED, headers={"Content-Type": "image/png"}, params={"top_k": 50}),
    "multipart with top_k field": dict(files={"image": ("r.png", RED, "image/png")}, data={"top_k": "1"}),
    "not an image": dict(content=b"hello", headers={"Content-Type": "image/png"}),
    "unsupported type": dict(content=b"{}", headers={"Content-Type": "application/json"}),
    "over the upload limit": dict(content=b"\0" * 200_001, headers={"Content-Type": "image/png"}),
    "top_k out of range": dict(content=RED, headers={"Content-Type": "image/png"}, params={"top_k": 0}),
    "level on a flat model": dict(content=RED, headers={"Content-Type": "image/png"}, params={"level": 1}),
    "empty body": dict(content=b"", headers={"Content-Type": "image/png"}),
}


PASSED_ON = {"top_k out of range"}  # the route's validation speaks


@pytest.mark.parametrize("via", [LANE, FRONT], ids=["lane", "front"])
@pytest.mark.parametrize("case", list(REQUESTS))
def test_the_lane_answers_as_the_route(clients, case, via):
    kwargs = REQUESTS[case]
    counted = clients.metrics.value("request_total", endpoint="/classify")
    a = clients.post("/classify", **kwargs)
    b = clients.post("/classify", **{**kwargs, "headers": {**kwargs.get("headers", {}), **via}})
    assert (b.status_code, b.json()) == (a.status_code, a.json())
    assert b.headers["content-type"] == a.headers["content-type"]
    assert b.headers.get("retry-after") == a.headers.get("retry-after")
    assert bool(clients.passed) == (case in PASSED_ON)  # the lane answered every other case itself
    clients.passed.clear()
    taken = via is FRONT and case not in PASSED_ON  # what the front lane answers, it counts as BentoML would
    assert clients.metrics.value("request_total", endpoint="/classify") == counted + taken
    if taken:
        status = b.status_code
        assert clients.metrics.value("request_total", endpoint="/classify", http_response_code=status) >= 1
        assert clients.metrics.value("request_duration_seconds_count", http_response_code=status) >= 1
    assert clients.metrics.value("request_in_progress") == 0


@pytest.mark.parametrize("via", [LANE, FRONT], ids=["lane", "front"])
def test_other_routes_pass_through(clients, via):
    clients.passed.clear()
    assert clients.get("/model", headers=via).json() == clients.get("/model").json()
    r = clients.post("/classify_batch", files=[("images", ("r.png", RED, "image/png"))], headers=via)
    assert r.status_code == 200
    assert len(clients.passed) == 2


def _front(guarded, series=None, timeout=60.0):
    """A front lane around ``guarded`` (any ASGI app), with its own metrics; everything else is a 404."""

    async def elsewhere(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"elsewhere"})

    metrics = TrafficMetrics()
    front = FrontLane(elsewhere, guarded, series=lambda: series or RequestSeries(metrics, "/classify"), timeout=timeout)
    return front, metrics


def test_the_front_lane_answers_504_when_no_response_starts_in_time():
    cancelled = []

    async def stuck(scope, receive, send):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    front, metrics = _front(stuck, timeout=0.05)
    r = TestClient(front).post("/classify", content=RED)  # (no lifespan: these apps only speak HTTP)
    assert r.status_code == 504 and "0.05 seconds" in r.json()["error"]
    assert cancelled == [True]  # the work stopped, as with BentoML's timeout middleware
    assert metrics.value("request_total", http_response_code=504) == 1
    assert metrics.value("request_in_progress") == 0


def test_the_front_lane_answers_500_for_an_unexpected_error_and_raises_it_on():
    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    front, metrics = _front(broken)
    r = TestClient(front, raise_server_exceptions=False).post("/classify", content=RED)
    assert (r.status_code, r.text) == (500, "Internal Server Error")
    assert metrics.value("request_total", http_response_code=500) == 1
    with pytest.raises(RuntimeError, match="a bug"):
        TestClient(front).post("/classify", content=RED)  # raised on for uvicorn to log, as Starlette does


def test_the_front_lane_takes_nothing_before_the_request_series_exist():
    async def never(scope, receive, send):
        raise AssertionError("the front lane took a request")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app"})

    front = FrontLane(app, never, series=lambda: None, timeout=60)
    assert TestClient(front).post("/classify", content=RED).text == "the app"
