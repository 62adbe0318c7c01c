"""Request bodies bounded in size and time on every route, before the application sees them (ASGI).

:class:`BodyGuard` reads a request's whole body before calling the app, with two limits:

- **size**: the route's limit (:func:`body_limit`) is checked against ``Content-Length`` before a byte is
  read, and again while reading (chunked bodies, lying headers): ``413`` with nothing more read;
- **time**: the body must arrive within ``timeout`` seconds of the headers: ``408`` for a client that
  stalls or trickles (the client's fault, never a ``5xx``).

Because the app only starts once the body is in, a slow upload holds no in-flight slot, no batcher
place and no decode thread: only its connection (bounded by :mod:`service.edge.connections`) and at most
its route's limit of memory. Refusals carry ``Connection: close`` (the rest of the body is never read)
and the documented ``{"error", "reason"}`` body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from service import telemetry

IMAGE_ROUTES = ("/classify", "/classify_batch", "/classify_json", "/v2/infer", "/api/classify", "/api/classify_batch")
SMALL_BODY = 64 * 1024  # admin and metadata routes: JSON of a few fields
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around one image


@dataclass(frozen=True)
class BodyLimits:
    """The byte limits that decide each route's body limit (from the service settings)."""

    upload: int  # one image
    request: int  # a whole request carrying several images (batch, JSON, /v2)
    timeout: float  # seconds for the whole body to arrive


def body_limit(path: str, limits: BodyLimits) -> tuple[int, str]:
    """The most bytes a request to ``path`` may carry, and the bounded route label for metrics."""
    if path in ("/classify", "/feedback", "/api/classify"):
        return limits.upload + FORM_OVERHEAD, path
    if path in ("/classify_batch", "/classify_json", "/api/classify_batch"):
        return limits.request, path
    if path.startswith("/v2/"):
        return limits.request, "/v2/infer" if path.endswith("/infer") else "/v2"
    return SMALL_BODY, "other"


class BodyRefused(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class BodyGuard:
    """ASGI middleware: read each request's body under its size and time limits, then run the app on it."""

    def __init__(self, app: Callable, limits: BodyLimits,
                 arriving: Callable[[], contextlib.AbstractContextManager] | None = None):  # fmt: skip
        self.app = app
        self.limits = limits
        # The batcher's hint that images are on their way (ClassifyPath.arriving) while an image route's body
        # arrives: an idle batcher may wait up to max_latency_ms for it. It is no in-flight slot.
        self.arriving = arriving or contextlib.nullcontext

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        limit, route = body_limit(scope["path"], limits)
        try:
            with self.arriving() if route in IMAGE_ROUTES else contextlib.nullcontext():
                body = await self._read(scope, receive, limit, limits.timeout)
        except BodyRefused as refused:
            telemetry.REJECTED.labels(route, refused.reason).inc()
            await _refuse(send, refused)
            return
        if body is None:  # the client went away
            return
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # only http.disconnect comes after the body

        await self.app(scope, replay, send)

    @staticmethod
    async def _read(scope: dict, receive: Callable, limit: int, timeout: float) -> bytes | None:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BodyRefused(400, "bad_content_length", "Content-Length must be a non-negative integer")
            if int(declared) > limit:
                raise BodyRefused(413, "too_large", f"request body is {int(declared)} bytes; the maximum for this "
                                                    f"route is {limit} bytes")  # fmt: skip
            if int(declared) == 0:
                return b""
        elif b"transfer-encoding" not in headers:
            return b""  # no body (GET and friends)
        chunks, size = [], 0
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise BodyRefused(408, "body_timeout", f"the request body did not arrive within {timeout:g} s "
                                                       f"({size} bytes received)") from None  # fmt: skip
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyRefused(413, "too_large", f"request body exceeds the maximum of {limit} bytes for "
                                                    "this route")  # fmt: skip
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _refuse(send: Callable, refused: BodyRefused) -> None:
    body = json.dumps({"error": refused.message, "reason": refused.reason}).encode()
    await send({"type": "http.response.start", "status": refused.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
