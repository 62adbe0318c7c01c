"""BentoML's request timeout (``traffic.timeout``), without the timer it leaves behind on every request.

BentoML 1.4's ``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for each request and never cancels
it: every answered request leaves a timer handle, a future, a context and a bound method alive for the full
timeout (60 s here). A worker answering 700 requests/s holds ~40,000 of them; they reach the oldest
generation, and each full garbage collection walks them all: measured on the 28-px model at concurrency 32,
~3,600 such timers after 6 s of load and full collections of 10-20 ms each second, growing with the load's
length (the requests in flight wait for each).

:func:`install` gives the middleware a ``__call__`` with the same behaviour (``504`` when the response has not
started within the timeout) that cancels its timer once the response starts or the request ends; and a request
that ends without a response (its client went away while the body arrived) no longer waits out the timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def _call(self: Any, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: dict) -> None:
        if not waiter.done():
            waiter.set_result(None)
            timer.cancel()
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, started))
    # an app that ends without answering (the client went away) ends the wait too, not the timeout
    fut.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            from starlette.responses import JSONResponse

            response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)  # fmt: skip
            await response(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def install() -> None:
    """Replace BentoML's ``TimeoutMiddleware.__call__`` (every worker's app builds it from that class)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _call
