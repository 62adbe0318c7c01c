"""Connection-level limits uvicorn does not have: header read time, header size, open connections per worker.

uvicorn (which ``bentoml serve`` runs) waits forever for a request's headers, accepts headers of any
size (httptools appends each piece of a header to a bytes object: a 100 MB header costs seconds of one
worker's event loop) and keeps every connection it accepts. :class:`GuardedHttpToolsProtocol` is
uvicorn's own httptools protocol with those three gaps closed:

- **header time**: a request's headers must arrive within ``header_timeout`` seconds of its first byte
  (or of the connection opening); otherwise ``408`` and the connection is closed. A connection that
  sent nothing of a next request is closed silently, as uvicorn's keep-alive timeout would;
- **header size**: more than ``max_header_bytes`` before the headers end is ``431``, and the rest is
  never parsed;
- **open connections**: past ``max_connections`` on a worker, the connection that has waited longest
  for headers (idle, slow, half-open) is shed to make room for the new one, so probes and honest
  clients are still answered while slow connections pile up; when every connection is busy with a
  request, the new one gets ``503`` at once.

BentoML builds the uvicorn config itself, so :func:`install` points uvicorn's ``auto`` and
``httptools`` protocol names at this class before the worker's server starts (the service module
calls it on import). Bodies are bounded in time and size by :mod:`service.edge.limits`, in ASGI.
``install`` also takes the service's ``front``: an ASGI app put in front of uvicorn's own (once per
app), which answers what it can before uvicorn's and BentoML's middlewares (:mod:`service.edge.lane`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 512


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits = ConnectionLimits()
    front: Callable[[Any], Any] | None = None  # wraps uvicorn's app: what every connection's requests go to
    _fronted: tuple[Any, Any] | None = None  # (uvicorn's app, its front): built once

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.front is not None:
            cls = type(self)
            if cls._fronted is None or cls._fronted[0] is not self.app:
                cls._fronted = (self.app, self.front(self.app))
            self.app = cls._fronted[1]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = time.monotonic()  # waiting for a request's headers since then
        self._header_bytes = 0
        self._started = False  # a byte of the current request has arrived
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting_since is None:  # within a request's body, or a response is on its way
            super().data_received(data)
            return
        self._started = True
        self._header_bytes += len(data)
        super().data_received(data)
        if self._waiting_since is not None and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request headers exceed {self.limits.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._waiting_since = None
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.cycle is None or self.cycle.response_complete  # no pipelined request parsed and pending
        if idle and not self.transport.is_closing() and self._waiting_since is None:
            self._waiting_since, self._header_bytes, self._started = time.monotonic(), 0, False
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    # ------------------------------------------------------------ the guards
    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._waiting_since is None:
            return
        if self._started:
            self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the documented error body and close; nothing more of the request is read."""
        self._waiting_since = None
        self._cancel_header_timer()
        reason = {408: "header_timeout", 431: "headers_too_large", 503: "too_many_connections"}[status]
        body = json.dumps({"error": message, "reason": reason}).encode()
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
                % (status, phrase[status], len(body)))  # fmt: skip
        if status == 503:
            head += b"retry-after: 1\r\n"
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()
        log.info("refused a connection from %s: %s", self.client, message)

    def _make_room(self) -> None:
        """Shed the connection that has waited longest for headers; with none waiting, refuse this one."""
        waiting = [c for c in self.connections if isinstance(c, GuardedHttpToolsProtocol) and c is not self
                   and c._waiting_since is not None and not c.transport.is_closing()]  # fmt: skip
        if not waiting:
            self._refuse(503, f"more than {self.limits.max_connections} open connections on this worker; retry")
            return
        oldest = min(waiting, key=lambda c: c._waiting_since)
        if oldest._started:
            oldest._refuse(408, "the connection was closed to make room: its request headers were too slow")
        else:
            oldest.transport.close()


def install(limits: ConnectionLimits, front: Callable[[Any], Any] | None = None) -> None:
    """Make uvicorn build :class:`GuardedHttpToolsProtocol` (with ``limits``) for every HTTP connection; with
    ``front``, its requests go to ``front(app)`` instead of uvicorn's ``app``."""
    from uvicorn import config

    GuardedHttpToolsProtocol.limits = limits
    GuardedHttpToolsProtocol.front = None if front is None else staticmethod(front)  # type: ignore[assignment]
    GuardedHttpToolsProtocol._fronted = None
    name = f"{__name__}:{GuardedHttpToolsProtocol.__name__}"
    config.HTTP_PROTOCOLS["auto"] = name
    config.HTTP_PROTOCOLS["httptools"] = name
