"""Bounded ``endpoint`` labels for BentoML's request metrics.

BentoML's traffic middleware labels ``bentoml_service_request_*`` with the raw request path, so
requests to random paths (``/x1``, ``/x2``, ...) or to parametrised routes (``/jobs/<id>``) each
create new series without bound. :func:`install` wraps that middleware so it labels a request with
the route template it matches (``/jobs/{job_id}``) or ``other`` for paths no route serves; the app
itself still sees the real path.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator

from starlette.routing import BaseRoute, Mount, compile_path

OTHER = "other"


def route_labeller(routes: list[BaseRoute], fixed: tuple[str, ...] = ()) -> Callable[[dict], str]:
    """``label(scope)``: the template of the first route matching the request's path, else ``"other"``.

    ``fixed``: paths served outside ``routes`` (BentoML's own probes and ``/metrics``), labelled as they are.
    """
    cache: dict[str, str] = {p: p for p in fixed}
    templates = list(_templates(routes))

    def label(scope: dict) -> str:
        path = scope["path"]
        if path in cache:
            return cache[path]
        found = next((template for template, regex in templates if regex.match(path)), OTHER)
        if found == path and len(cache) < 1024:  # only fixed paths are worth remembering; templates vary
            cache[path] = found
        return found

    return label


def _templates(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, re.Pattern]]:
    """(template, regex) of every route, included routers flattened (FastAPI includes them lazily)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _templates(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            yield prefix + route.path, re.compile("^" + re.escape(prefix + route.path) + "(/.*)?$")
        elif getattr(route, "path", None):
            yield prefix + route.path, compile_path(prefix + route.path)[0]


def install(label: Callable[[dict], str]) -> None:
    """Make BentoML's traffic-metrics middleware see ``label(scope)`` as the request path."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    if getattr(RunnerTrafficMetricsMiddleware, "_imgclf_bounded", False):
        return
    original = RunnerTrafficMetricsMiddleware.__call__

    async def __call__(self, scope, receive, send):  # noqa: N807 - the wrapped dunder
        if not scope["type"].startswith("http") or (bounded := label(scope)) == scope["path"]:
            return await original(self, scope, receive, send)
        real, inner = scope, self.app

        async def with_real_path(_scope, receive, send):
            await inner(real, receive, send)

        proxy = copy.copy(self)  # per request: the shared middleware's app is never swapped
        proxy.app = with_real_path
        return await original(proxy, {**scope, "path": bounded}, receive, send)

    RunnerTrafficMetricsMiddleware.__call__ = __call__
    RunnerTrafficMetricsMiddleware._imgclf_bounded = True
