"""Hostile clients at the connection and protocol level, against a real server on localhost.

Each attack runs while an honest client keeps classifying; every attack is bounded in count and time
and sends to 127.0.0.1 only. Asserted: no 5xx, the honest client is served within a stated latency
while the attack runs, every refusal is in the documented ``{"error", "reason"}`` shape, memory stays
bounded.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from conftest import colour_image, encode

from harness.server import Server, rss_bytes

pytestmark = pytest.mark.slow
HONEST_P_MAX_S = 2.0  # the slowest honest /classify answer allowed while an attack runs (a 32-px toy model)
TIMEOUT_S = 2  # the server's header and body timeouts in this module
UPLOAD = 256 * 1024  # the server's IMGCLF_MAX_UPLOAD_BYTES in this module


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    tag, _ = trained_model
    root = tmp_path_factory.mktemp("hostile-clients")
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME="torch",
               IMGCLF_HEADER_TIMEOUT_SECONDS=str(TIMEOUT_S), IMGCLF_BODY_TIMEOUT_SECONDS=str(TIMEOUT_S),
               IMGCLF_MAX_HEADER_BYTES=str(16 * 1024), IMGCLF_MAX_CONNECTIONS="48",
               IMGCLF_MAX_REQUEST_BYTES=str(2 * 1024 * 1024), IMGCLF_MAX_CONCURRENCY="4",
               IMGCLF_MAX_UPLOAD_BYTES=str(UPLOAD), IMGCLF_MAX_BATCH_IMAGES="8",
               IMGCLF_DATABASE_URL=f"sqlite:///{root / 'registry.db'}")  # fmt: skip
    srv = Server(env, root / "serve.log").start()
    yield srv
    srv.stop()


IMAGE = encode(colour_image((220, 40, 40), 32, seed=9))


class Honest(threading.Thread):
    """Classifies one image after another until stopped; records every status and the slowest answer."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.statuses, self.slowest, self._halt = base, [], 0.0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._halt.is_set():
                start = time.perf_counter()
                r = client.post(self.base + "/classify", files={"image": ("x.png", IMAGE, "image/png")})
                self.slowest = max(self.slowest, time.perf_counter() - start)
                self.statuses.append(r.status_code)
                time.sleep(0.02)

    def __enter__(self) -> Honest:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + 10
        while len(self.statuses) < 3 and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)  # at least a few answers, however short the attack was
        self._halt.set()
        self.join(timeout=30)
        assert self.statuses and set(self.statuses) == {200}, self.statuses[-20:]
        assert self.slowest < HONEST_P_MAX_S, f"an honest request took {self.slowest:.2f} s during the attack"


def connect(srv: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s: socket.socket, timeout: float = 10) -> tuple[int, dict]:
    """Status and JSON body of the one response on ``s`` (the server closes after refusing)."""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = [int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")]
        if sep and length and len(body) >= length[0]:
            break
    if not data:
        return 0, {}
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


def documented(status: int, body: dict, expected: int, reason: str) -> None:
    assert status == expected, (status, body)
    assert body.get("reason") == reason and body.get("error"), body


def test_a_trickled_body_gets_408_and_holds_no_slot(server):
    """Slow bodies on more connections than the in-flight limit: honest calls still get 200, never 429."""
    with Honest(server.base):
        socks = []
        for _ in range(8):  # twice IMGCLF_MAX_CONCURRENCY
            s = connect(server)
            s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
            s.sendall(b"\x89P")
            socks.append(s)
        deadline = time.monotonic() + TIMEOUT_S - 0.6
        while time.monotonic() < deadline:  # a byte now and then until just before the timeout, never the body
            for s in socks:
                s.sendall(b"\x00")
            time.sleep(0.25)
        for s in socks:
            documented(*read_response(s), 408, "body_timeout")
            s.close()


def test_half_sent_headers_are_timed_out(server):
    with Honest(server.base):
        socks = [connect(server) for _ in range(16)]
        for s in socks:
            s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        start = time.monotonic()
        for s in socks:
            documented(*read_response(s, timeout=TIMEOUT_S + 5), 408, "header_timeout")
            s.close()
        assert time.monotonic() - start < TIMEOUT_S + 3


def test_idle_connections_are_closed_and_a_flood_leaves_room_for_probes(server):
    """More open connections than the worker's cap: the ones waiting longest are shed, probes still answer."""
    with Honest(server.base):
        socks = [connect(server) for _ in range(120)]  # 2.5 x IMGCLF_MAX_CONNECTIONS, never sending a byte
        for _ in range(5):
            assert httpx.get(server.base + "/readyz", timeout=5).status_code == 200
        time.sleep(TIMEOUT_S + 1)
        closed = 0
        for s in socks:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
            s.close()
        assert closed == len(socks), f"{len(socks) - closed} idle connections still open after the header timeout"


def test_oversized_headers_get_431_without_parsing_them(server):
    with Honest(server.base):
        s = connect(server)
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        start = time.perf_counter()
        try:
            for _ in range(2000):  # up to 100 MB, stopped by the refusal
                s.sendall(b"a" * 50_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        documented(*read_response(s), 431, "headers_too_large")
        assert time.perf_counter() - start < 5
        s.close()


@pytest.mark.parametrize("path, content_type", [("/classify_json", "application/json"),
                                                 ("/v2/models/x/infer", "application/json"),
                                                 ("/classify_batch", "multipart/form-data; boundary=b"),
                                                 ("/retrain", "application/json")])  # fmt: skip
def test_a_body_over_the_limit_is_refused_before_it_is_read(server, path, content_type):
    pids = server.worker_pids()
    before = rss_bytes(pids)
    s = connect(server)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {1024 ** 3}\r\n\r\n".encode())  # fmt: skip
    documented(*read_response(s), 413, "too_large")
    s.close()
    # a chunked body that lies about nothing and simply goes on: refused once past the limit
    s = connect(server)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
              "Transfer-Encoding: chunked\r\n\r\n".encode())  # fmt: skip
    try:
        for _ in range(400):  # up to 400 MB
            s.sendall(b"100000\r\n" + b"[" * 0x100000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    documented(*read_response(s), 413, "too_large")
    s.close()
    after = rss_bytes(pids)
    assert after - before < 64 * 1024**2, f"workers grew by {(after - before) / 1024**2:.0f} MiB"
    assert httpx.get(server.base + "/readyz").status_code == 200


def test_random_paths_do_not_grow_the_metrics(server):
    """Request metrics label a route by its template and every unknown path as 'other'."""
    import re

    with httpx.Client(base_url=server.base, timeout=10) as client:
        for i in range(150):
            assert client.get(f"/no-such-path-{i}").status_code == 404
            assert client.get(f"/jobs/job-{i}").status_code in (401, 403)
        text = client.get("/metrics").text
    endpoints = set(re.findall(r'bentoml_service_request_total\{[^}]*endpoint="([^"]*)"', text))
    assert "other" in endpoints and "/jobs/{job_id}" in endpoints, endpoints
    assert not any(e.startswith(("/no-such-path", "/jobs/job-")) for e in endpoints), endpoints
    assert len(endpoints) < 30 and len(text) < 200_000


# ---------------------------------------------------------------- one admission rule, HTTP and gRPC alike
def _big_bmp() -> bytes:
    """A valid BMP just over the upload limit (BMP is uncompressed: bytes grow with pixels)."""
    from PIL import Image

    side = int((UPLOAD / 3) ** 0.5) + 8
    return encode(Image.new("RGB", (side, side), (200, 30, 30)), "BMP")


CASES = {  # name -> (images, expected HTTP status, expected gRPC code)
    "image over the upload limit": (lambda: [_big_bmp()], 413, "StatusCode.RESOURCE_EXHAUSTED"),
    "more images than a request may hold": (lambda: [IMAGE] * 9, 413, "StatusCode.RESOURCE_EXHAUSTED"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_http_and_grpc_admit_images_by_the_same_rule(server, case):
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    make, status, code = CASES[case]
    images = make()
    files = [("images", (f"{i}.img", d, "application/octet-stream")) for i, d in enumerate(images)]
    r = httpx.post(server.base + "/classify_batch", files=files, timeout=30)
    assert r.status_code == status and r.json()["reason"] in ("too_large", "too_many_images"), r.text
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = tgrpc.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=object))
    with pytest.raises(InferenceServerException) as err:
        client.infer("colours-served", [inp])
    assert err.value.status() == code, err.value.message()


def test_grpc_tensors_of_absurd_size_or_shape_are_refused_before_any_work(server):
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.utils import InferenceServerException

    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    many = tgrpc.InferInput("input", [9, 3, 32, 32], "FP32")  # one over IMGCLF_MAX_BATCH_IMAGES
    many.set_data_from_numpy(np.zeros((9, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("colours-served", [many])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", err.value.message()
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    for shape in ([-4, 3, 32, 32], [2**40, 3, 32, 32], [1] * 12):
        request = pb.ModelInferRequest(model_name="colours-served", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=shape)],
            raw_input_contents=[b"\x00" * 16])  # fmt: skip
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(request, timeout=10)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "non-negative integers" in rpc.value.details()
