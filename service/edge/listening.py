"""One listening socket per worker, so the kernel spreads connections evenly between workers.

``bentoml serve`` binds one socket in its arbiter and hands it to every worker (``--fd``). Every worker's
event loop waits on that socket and, when woken, accepts every pending connection at once (uvloop). A
client that opens its connections in a burst (a load balancer's pool, ``wrk -c32``) often lands most of
them on whichever worker woke first: measured with ``ss`` on two workers under ``wrk -c32``, 26 against 6.
That worker queues while the other idles, and the tail latency doubles.

:func:`listen_on_own_socket` gives the worker its own socket with ``SO_REUSEPORT`` on the same address: the
kernel then assigns each new connection to one of the workers' sockets by a hash of its addresses, whoever
is awake (as nginx's ``reuseport`` and gunicorn's ``--reuse-port`` do; the gRPC server shares its port the
same way). The worker first stops the shared socket listening (``shutdown``: the arbiter's copy stops
with it, so no connection waits on a socket nobody accepts from), binds its own, and puts it in the place
of the shared descriptor, which uvicorn then serves. A worker that dies takes its socket with it; the
kernel sends new connections to the others until circus starts its replacement, which binds again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def worker_fd(argv: list[str]) -> int | None:
    """The descriptor BentoML's arbiter passed this worker (``--fd N``), or None outside a worker."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--fd":
            try:
                return int(argv[i + 1])
            except ValueError:
                return None
    return None


def listen_on_own_socket(fd: int, backlog: int = 2048) -> bool:
    """Replace the shared TCP listening socket at ``fd`` with one of this process's own (``SO_REUSEPORT``,
    same address). False, and nothing changed, where it does not apply (a Unix socket, no SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    shared = socket.socket(fileno=os.dup(fd))
    try:
        if shared.family not in (socket.AF_INET, socket.AF_INET6) or shared.type != socket.SOCK_STREAM:
            return False
        address = shared.getsockname()
        with contextlib.suppress(OSError):  # already done by an earlier worker
            shared.shutdown(socket.SHUT_RDWR)  # stops it listening in every process that holds it
        own = socket.socket(shared.family, socket.SOCK_STREAM)
    finally:
        shared.close()
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(address)
        own.listen(backlog)
        os.dup2(own.fileno(), fd)  # uvicorn serves the descriptor it was given: now this socket
    finally:
        own.close()
    log.debug("worker %d listens on its own socket at %s", os.getpid(), address[:2])
    return True


def install(argv: list[str] | None = None) -> bool:
    """In a BentoML worker, listen on its own socket (see the module's docstring); elsewhere nothing."""
    fd = worker_fd(sys.argv if argv is None else argv)
    if fd is None:
        return False
    try:
        return listen_on_own_socket(fd)
    except OSError as exc:  # the shared socket stays in use: correct, only less evenly spread
        log.warning("listening on the shared socket (no own socket: %s)", exc)
        return False
