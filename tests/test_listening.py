"""Each worker's own listening socket (service.edge.listening): real sockets on 127.0.0.1, no server."""

from __future__ import annotations

import os
import socket

import pytest

from service.edge.listening import listen_on_own_socket, worker_fd

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def test_worker_fd_reads_the_arbiter_argument():
    assert worker_fd(["service.py", "svc:Svc", "--fd", "7", "--worker-id", "1"]) == 7
    assert worker_fd(["bentoml", "serve", "--port", "3000"]) is None
    assert worker_fd(["service.py", "--fd"]) is None
    assert worker_fd(["service.py", "--fd", "$(circus.sockets.x)"]) is None


def _shared_listener() -> socket.socket:
    """A listening socket as circus makes it: SO_REUSEADDR, bound once, handed to every worker."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_each_worker_gets_its_own_socket_and_the_kernel_spreads_connections():
    shared = _shared_listener()
    address = shared.getsockname()
    # what two workers inherit, and a third that circus starts in place of a dead one
    workers = [os.dup(shared.fileno()) for _ in range(3)]
    try:
        assert all(listen_on_own_socket(fd) for fd in workers)
        os.close(workers.pop())  # the dead worker's socket goes with it

        own = [socket.socket(fileno=fd) for fd in workers]
        assert [s.getsockname() for s in own] == [address, address]
        for s in own:
            s.setblocking(False)
        clients = [socket.create_connection(address, timeout=5) for _ in range(64)]
        accepted = [0, 0]
        for i, s in enumerate(own):
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[i] += 1
        # every connection reached a worker's own socket (none waits on the shared one), spread by the kernel
        assert sum(accepted) == 64
        assert min(accepted) > 0
        for c in clients:
            c.close()
        for s in own:
            s.close()
        workers = []
    finally:
        for fd in workers:
            os.close(fd)
        shared.close()


def test_a_unix_socket_is_left_as_it_is(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "sock"))
    s.listen(1)
    fd = os.dup(s.fileno())
    try:
        assert listen_on_own_socket(fd) is False
        with socket.socket(fileno=os.dup(fd)) as check:
            assert check.family == socket.AF_UNIX
    finally:
        os.close(fd)
        s.close()
