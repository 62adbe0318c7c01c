"""``POST /classify``, the service's hottest request, answered without the framework's routing machinery.

Beneath BentoML's middlewares (request metrics, tracing, timeout) and the body guard, every request also went
through Starlette's router and mount, FastAPI's own middleware stack, its parameter solving and its response
validation before and after the few lines that classify. :class:`ClassifyLane` is an ASGI middleware that
answers ``POST /classify`` itself with the route's own function (:func:`~service.edge.app.classify_request`:
the same parsing, in-flight limit, classify call and response record), the same error responses
(:func:`~service.edge.errors.error_response`) and the same JSON. A request it does not take exactly as the
route would (a query parameter that is not a plain in-range integer, or given twice) goes on to the app, so
FastAPI's validation messages and the OpenAPI contract stay the only ones.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from service.edge.app import LEVEL_MAX, TOP_K_MAX, classify_request
from service.edge.classify import InFlight
from service.edge.errors import error_response
from service.errors import ServiceError
from service.serving import ClassifyPath

ROUTE = "/classify"
_BOUNDS = {"top_k": TOP_K_MAX, "level": LEVEL_MAX}


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
        query = None
        if scope["type"] == "http" and scope["path"] == ROUTE and scope["method"] == "POST":
            query = plain_query(scope.get("query_string", b""))
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
