"""Locust load test: every way clients reach the service, in a configurable mix.

    locust -f loadtests/locustfile.py --host http://localhost:3000 --headless -u 16 -r 4 -t 1m
    LOAD_MIX="classify=6,grpc=3,ops=0" locust -f loadtests/locustfile.py ...   # weights per user class
    make loadtest                                                                # starts a service, runs, stops

Users: ``classify`` (one image per request: Fashion-MNIST test images as PNG, and generated photos of
several sizes as JPEG and PNG), ``batch`` (several images per request), ``json`` (base64 in JSON),
``grpc`` (Open Inference Protocol ModelInfer with tritonclient; target GRPC_TARGET or the host on 8001) and
``ops`` (reads /model and /metrics; with ADMIN_TOKEN and RETRAIN_DATA set, rarely starts a retrain).
"""

from __future__ import annotations

import atexit
import base64
import io
import os
import random
import sys
import time
from functools import cache
from urllib.parse import urlparse

import numpy as np
from locust import HttpUser, User, between, constant_throughput, events, task
from PIL import Image

DEFAULT_MIX = {"classify": 6, "batch": 2, "json": 1, "grpc": 3, "ops": 1}
GRPC_TIMEOUT_S = float(os.environ.get("GRPC_TIMEOUT_S", "30"))  # a call that hangs is a failure, not a stuck user
FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def mix() -> dict[str, int]:
    """LOAD_MIX="classify=6,batch=2,json=1,grpc=3,ops=1" (missing names keep their default; 0 turns one off)."""
    weights = dict(DEFAULT_MIX)
    for item in filter(None, os.environ.get("LOAD_MIX", "").split(",")):
        name, _, value = item.partition("=")
        if name.strip() not in weights:
            raise ValueError(f"LOAD_MIX: unknown user {name!r}; known: {', '.join(weights)}")
        weights[name.strip()] = int(value)
    return weights


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random field: JPEG and PNG have real work to do, as with photos."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


@cache
def images() -> list[tuple[str, bytes, str]]:
    """(name, bytes, content type): Fashion-MNIST test images when installed, and generated photos."""
    out: list[tuple[str, bytes, str]] = []
    try:
        import gzip

        with gzip.open(FMNIST) as fh:
            raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        out += [(f"fmnist-{i}.png", _encode(Image.fromarray(raw[i]), "PNG"), "image/png") for i in range(0, 2000, 50)]
    except OSError:
        pass
    for seed, (w, h) in enumerate(((96, 96), (224, 224), (640, 480))):
        for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            out.append((f"photo-{w}x{h}.{fmt.lower()}", _encode(_photo(w, h, seed), fmt), mime))
    return out


def pick() -> tuple[str, bytes, str]:
    return random.choice(images())


class ClassifyUser(HttpUser):
    weight = mix()["classify"]
    abstract = weight == 0  # off in this mix
    # LOAD_RATE: requests per second per user (the soak's fixed load); else as fast as answers come
    wait_time = constant_throughput(float(os.environ["LOAD_RATE"])) if os.environ.get("LOAD_RATE") else between(0, 0.02)

    @task
    def classify(self) -> None:
        name, data, mime = pick()
        self.client.post("/classify", files={"image": (name, data, mime)}, name="/classify")


class BatchUser(HttpUser):
    weight = mix()["batch"]
    abstract = weight == 0  # off in this mix
    wait_time = between(0.0, 0.05)

    @task
    def classify_batch(self) -> None:
        files = [("images", (n, d, m)) for n, d, m in random.sample(images(), 4)]
        self.client.post("/classify_batch", files=files, name="/classify_batch")


class JsonUser(HttpUser):
    weight = mix()["json"]
    abstract = weight == 0  # off in this mix
    wait_time = between(0.0, 0.05)

    @task
    def classify_json(self) -> None:
        data = [base64.b64encode(d).decode() for _, d, _ in random.sample(images(), 2)]
        self.client.post("/classify_json", json={"images": data, "top_k": 3}, name="/classify_json")


class OipGrpcUser(User):
    """ModelInfer over gRPC with tritonclient, the protocol's reference client; results reported to Locust."""

    weight = mix()["grpc"]
    abstract = weight == 0  # off in this mix
    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        import grpc.experimental.gevent as grpc_gevent
        import httpx
        import tritonclient.grpc as tgrpc

        grpc_gevent.init_gevent()  # grpc's blocking calls must yield to Locust's gevent loop (idempotent)

        self.tgrpc = tgrpc
        target = os.environ.get("GRPC_TARGET") or f"{urlparse(self.host).hostname}:8001"
        self.client = tgrpc.InferenceServerClient(target)
        _GRPC_CLIENTS.add(self.client)
        global _grpc_used
        _grpc_used = True
        self.model = httpx.get(self.host + "/model", timeout=30).json()["tag"].split(":")[0]

    def on_stop(self) -> None:
        _GRPC_CLIENTS.discard(self.client)
        self.client.close()

    def _infer(self, name: str, data: list[bytes], class_count: int = 0) -> None:
        inp = self.tgrpc.InferInput("image", [len(data)], "BYTES")
        inp.set_data_from_numpy(np.array(data, dtype=object))
        outputs = [self.tgrpc.InferRequestedOutput("probabilities", class_count=class_count)]
        start, exc, size = time.perf_counter(), None, 0
        try:
            result = self.client.infer(self.model, [inp], outputs=outputs, client_timeout=GRPC_TIMEOUT_S)
            size = result.as_numpy("probabilities").nbytes
        except Exception as err:  # noqa: BLE001 - reported as a failure
            exc = err
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.environment.events.request.fire(request_type="grpc", name=name, response_time=elapsed_ms,
                                             response_length=size, exception=exc, context={})  # fmt: skip

    @task(6)
    def infer_one(self) -> None:
        self._infer("ModelInfer", [pick()[1]])

    @task(2)
    def infer_batch_top3(self) -> None:
        self._infer("ModelInfer batch top-3", [d for _, d, _ in random.sample(images(), 4)], class_count=3)


class OpsUser(HttpUser):
    """What ops tooling does: read the model card and the metrics; once in a while, retrain."""

    weight = mix()["ops"]
    abstract = weight == 0  # off in this mix
    wait_time = between(0.5, 1.5)

    @task(10)
    def model(self) -> None:
        self.client.get("/model", name="/model")

    @task(10)
    def metrics(self) -> None:
        self.client.get("/metrics", name="/metrics")

    @task(1)
    def retrain(self) -> None:
        token, data = os.environ.get("ADMIN_TOKEN"), os.environ.get("RETRAIN_DATA")
        if not token or not data or random.random() > float(os.environ.get("RETRAIN_PROBABILITY", "0.05")):
            return
        auth = {"Authorization": f"Bearer {token}"}
        with self.client.post("/retrain", json={"data": data, "epochs": 2}, headers=auth, name="/retrain",
                              catch_response=True) as r:  # fmt: skip
            if r.status_code == 409:  # one job at a time: an expected answer, not a failure
                r.success()


_GRPC_CLIENTS: set = set()
_grpc_used = False


@events.quit.add_listener
def _skip_grpc_finalizers_at_exit(exit_code: int, **_kw) -> None:
    """Under gevent, a tritonclient left to the interpreter's final garbage collection can deadlock in its
    ``__del__`` (``Channel.close`` waiting on a mutex; seen in CI and reproduced 1 run in 8 here: "Shutting down
    (exit code 0)", then no exit). Once Locust has printed and written its stats (its CSV files close right
    after this event), exit with Locust's code without running those finalizers."""
    if not _grpc_used:
        return
    for client in list(_GRPC_CLIENTS):
        client.close()

    def hard_exit() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)

    atexit.register(hard_exit)  # registered last, so it runs first, before the final collection


@events.init_command_line_parser.add_listener
def _describe(parser) -> None:  # noqa: ANN001 - locust's parser
    parser.epilog = f"LOAD_MIX weights (default): {DEFAULT_MIX}"
