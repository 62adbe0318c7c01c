"""``POST /classify``, the service's hottest request, answered without the framework's machinery.

Every request went through uvicorn's proxy-headers wrapper, Starlette's error middleware, BentoML's request
metrics, tracing and timeout middlewares and the body guard, then Starlette's router and mount, FastAPI's own
middleware stack, its parameter solving and its response validation, before and after the few lines that
classify. Two ASGI layers cut that path short:

- :class:`ClassifyLane`, a middleware beneath the body guard, answers ``POST /classify`` itself with the route's
  own function (:func:`~service.edge.app.classify_request`: the same parsing, in-flight limit, classify call and
  response record), the same error responses (:func:`~service.edge.errors.error_response`) and the same JSON.
  A request it does not take exactly as the route would (a query parameter that is not a plain in-range
  integer, or given twice) goes on to the app, so FastAPI's validation messages and the OpenAPI contract stay
  the only ones.
- :class:`FrontLane`, in front of uvicorn's app (:mod:`service.edge.connections` installs it), takes the same
  requests before any middleware and does for them what those middlewares would: the body guard's limits, the
  request series BentoML's metrics middleware records (:mod:`service.edge.traffic`), its ``504`` after the
  request timeout, and Starlette's ``500`` for an unexpected error. The service installs it only when none of the
  skipped middlewares has more to do (no access log, no request tracing, no CORS); until BentoML has set up its
  metrics (the worker's first request) it takes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from service.edge.app import LEVEL_MAX, TOP_K_MAX, classify_request
from service.edge.classify import InFlight
from service.edge.errors import error_response
from service.edge.limits import BodyGuard
from service.edge.traffic import RequestSeries
from service.errors import ServiceError
from service.serving import ClassifyPath

ROUTE = "/classify"
_BOUNDS = {"top_k": TOP_K_MAX, "level": LEVEL_MAX}


def taken(scope: dict) -> dict[str, int] | None:
    """The query of a ``POST /classify`` the lanes answer themselves (see :func:`plain_query`), else None."""
    if scope["type"] == "http" and scope["path"] == ROUTE and scope["method"] == "POST":
        return plain_query(scope.get("query_string", b""))
    return None


def plain_query(raw: bytes) -> dict[str, int] | None:
    """``top_k`` and ``level`` when each is absent or a plain integer within the route's bounds (other names are
    ignored, as the route ignores them); None when the route's validation must speak."""
    out: dict[str, int] = {}
    if not raw:
        return out
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    for name, value in pairs:
        if name not in _BOUNDS:
            continue
        if name in out or not value.isdigit() or len(value) > 4 or not 1 <= int(value) <= _BOUNDS[name]:
            return None
        out[name] = int(value)
    return out


class ClassifyLane:
    """ASGI middleware: ``POST /classify`` answered here; everything else passed to ``app`` untouched."""

    def __init__(self, app: Callable, get_path: Callable[[], ClassifyPath], in_flight: InFlight, upload: int):
        self.app = app
        self.get_path = get_path
        self.in_flight = in_flight
        self.upload = upload

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        query = taken(scope)
        if query is None:
            await self.app(scope, receive, send)
            return
        try:
            answer = await classify_request(Request(scope, receive), self.get_path(), self.in_flight, self.upload,
                                            query.get("top_k"), query.get("level"))  # fmt: skip
        except ServiceError as exc:
            response: Response = error_response(exc, ROUTE)
        else:
            body = answer.model_dump_json(exclude_unset=True).encode()
            response = Response(body, media_type="application/json")
        await response(scope, receive, send)


class FrontLane:
    """ASGI app in front of uvicorn's: the requests :class:`ClassifyLane` takes, answered by ``guarded`` (a body
    guard around a :class:`ClassifyLane`) with BentoML's request series (``series()``; None: pass everything on),
    its timeout and Starlette's error answer; everything else goes to ``app`` untouched."""

    def __init__(self, app: Callable, guarded: BodyGuard, series: Callable[[], RequestSeries | None], timeout: float):
        self.app = app
        self.guarded = guarded
        self.series = series
        self.timeout = timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        series = self.series() if taken(scope) is not None else None
        if series is None:
            await self.app(scope, receive, send)
            return
        started = series.started()
        status: int | None = None
        expired = False
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:  # as BentoML's timeout middleware: no response started in time, the work stops
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout, expire)

        async def watched(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                timer.cancel()
            await send(message)

        try:
            await self.guarded(scope, receive, watched)
        except asyncio.CancelledError:
            if not expired or status is not None:
                raise
            task.uncancel()
            await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                               status_code=504)(scope, receive, watched)  # fmt: skip
        except Exception:
            if status is None:  # as Starlette's error middleware: a 500, and the error raised on for uvicorn to log
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, watched)
            raise
        finally:
            timer.cancel()
            series.finished(started, status)
