"""BentoML's request timeout with the fix of service.edge.timeouts: same answers, no timer left behind."""

from __future__ import annotations

import asyncio
import gc
import time

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.edge import timeouts

timeouts.install()


async def _request(app, timeout: float) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await TimeoutMiddleware(app, timeout=timeout)({"type": "http", "path": "/classify"}, receive, send)
    return sent


async def _answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _armed_timers() -> int:
    # type(), not isinstance(): isinstance reads __class__, which some module-level proxies (torch's deprecated
    # aliases) answer with a warning
    return sum(1 for o in gc.get_objects() if type(o) is asyncio.TimerHandle and not o.cancelled())


def test_an_answered_request_leaves_no_timer_armed():
    async def main() -> tuple[list[dict], int]:
        before = _armed_timers()
        sent = [m for _ in range(50) for m in await _request(_answer, timeout=60)]
        return sent, _armed_timers() - before

    sent, armed = asyncio.run(main())
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50
    assert armed == 0  # BentoML's own middleware leaves one per request for the whole 60 s


def test_a_response_that_does_not_start_in_time_is_a_504():
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(5)

    start = time.monotonic()
    sent = asyncio.run(_request(slow, timeout=0.05))
    assert time.monotonic() - start < 2
    assert sent[0]["status"] == 504


def test_a_request_that_ends_unanswered_does_not_wait_out_the_timeout():
    async def gone(scope, receive, send) -> None:  # as the body guard does when the client went away
        return None

    start = time.monotonic()
    assert asyncio.run(_request(gone, timeout=30)) == []
    assert time.monotonic() - start < 2
