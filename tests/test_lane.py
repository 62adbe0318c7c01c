"""The classify lane (service.edge.lane) answers POST /classify exactly as the route does: the same body and
status for every kind of request, with the route itself answering whatever the lane does not take."""

from __future__ import annotations

import pytest
from conftest import COLOURS, colour_image, encode, loaded_worker
from fastapi.testclient import TestClient

from service.edge.app import create_app
from service.edge.classify import InFlight
from service.edge.lane import ClassifyLane, plain_query

RED = encode(colour_image(COLOURS["red"], 48, seed=77))
LANE = {"x-via": "lane"}


def test_plain_query_takes_in_range_integers_and_leaves_the_rest_to_the_route():
    assert plain_query(b"") == {}
    assert plain_query(b"top_k=3&level=2") == {"top_k": 3, "level": 2}
    assert plain_query(b"other=x&top_k=1000") == {"top_k": 1000}  # unknown names are ignored, as by the route
    for raw in (b"top_k=0", b"top_k=1001", b"level=101", b"top_k=-1", b"top_k=", b"top_k=3&top_k=4", b"top_k=1e3",
                b"top_k=%20" b"3", b"top_k=\xff", b"top_k=00007"):  # fmt: skip
        assert plain_query(raw) is None, raw


@pytest.fixture(scope="module")
def clients(trained_model):
    """The app, plain or behind the lane (the header ``x-via: lane``)."""
    settings, worker = loaded_worker(trained_model)
    in_flight = InFlight(settings.max_concurrency)
    app = create_app(settings, lambda: worker.path, in_flight=in_flight)
    passed: list[str] = []  # requests the lane handed to the app

    async def app_behind_lane(scope, receive, send):
        passed.append(scope.get("query_string", b"").decode())
        await app(scope, receive, send)

    upload = settings.max_upload_bytes
    lane = ClassifyLane(app_behind_lane, get_path=lambda: worker.path, in_flight=in_flight, upload=upload)

    async def either(scope, receive, send):  # one client, one event loop: the worker's batcher lives on it
        laned = (b"x-via", b"lane") in scope.get("headers", [])
        await (lane if laned else app)(scope, receive, send)

    with TestClient(either) as client:
        client.passed = passed
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


@pytest.mark.parametrize("case", list(REQUESTS))
def test_the_lane_answers_as_the_route(clients, case):
    kwargs = REQUESTS[case]
    a = clients.post("/classify", **kwargs)
    b = clients.post("/classify", **{**kwargs, "headers": {**kwargs.get("headers", {}), **LANE}})
    assert (b.status_code, b.json()) == (a.status_code, a.json())
    assert b.headers["content-type"] == a.headers["content-type"]
    assert b.headers.get("retry-after") == a.headers.get("retry-after")
    assert bool(clients.passed) == (case in PASSED_ON)  # the lane answered every other case itself
    clients.passed.clear()


def test_other_routes_pass_through(clients):
    clients.passed.clear()
    assert clients.get("/model", headers=LANE).json() == clients.get("/model").json()
    r = clients.post("/classify_batch", files=[("images", ("r.png", RED, "image/png"))], headers=LANE)
    assert r.status_code == 200
    assert len(clients.passed) == 2
