"""Locust load test for the classify endpoints over HTTP and gRPC (Open Inference Protocol).

locust -f loadtests/locustfile.py --host http://localhost:3000 --headless -u 16 -r 4 -t 1m
locust -f loadtests/locustfile.py OipGrpcUser --host http://localhost:3000 --headless -u 8 -t 30s   # gRPC only

The gRPC target is the host's name on port 8001 unless GRPC_TARGET (host:port) says otherwise.
"""

from __future__ import annotations

import base64
import io
import os
import time
from urllib.parse import urlparse

import numpy as np
from locust import HttpUser, User, between, task
from PIL import Image


def _jpeg(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


IMAGES = [_jpeg(size, seed) for seed, size in enumerate((28, 96, 224, 480))]


class ClassifyUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(6)
    def classify(self) -> None:
        data = IMAGES[np.random.randint(len(IMAGES))]
        self.client.post("/classify", files={"image": ("img.jpg", data, "image/jpeg")}, name="/classify")

    @task(2)
    def classify_batch(self) -> None:
        self.client.post("/classify_batch", files=[("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in
                                                   enumerate(IMAGES)])  # fmt: skip

    @task(1)
    def classify_json(self) -> None:
        self.client.post("/classify_json", json={"images": [base64.b64encode(IMAGES[0]).decode()], "top_k": 3})

    @task(1)
    def model(self) -> None:
        self.client.get("/model")


class OipGrpcUser(User):
    """ModelInfer over gRPC with tritonclient, the protocol's reference client; results reported to Locust."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        import httpx
        import tritonclient.grpc as tgrpc

        self.tgrpc = tgrpc
        target = os.environ.get("GRPC_TARGET") or f"{urlparse(self.host).hostname}:8001"
        self.client = tgrpc.InferenceServerClient(target)
        self.model = httpx.get(self.host + "/model", timeout=30).json()["tag"].split(":")[0]

    def on_stop(self) -> None:
        self.client.close()

    def _infer(self, name: str, images: list[bytes], class_count: int = 0) -> None:
        inp = self.tgrpc.InferInput("image", [len(images)], "BYTES")
        inp.set_data_from_numpy(np.array(images, dtype=object))
        outputs = [self.tgrpc.InferRequestedOutput("probabilities", class_count=class_count)]
        start, exc, size = time.perf_counter(), None, 0
        try:
            size = self.client.infer(self.model, [inp], outputs=outputs).as_numpy("probabilities").nbytes
        except Exception as err:  # noqa: BLE001 - reported as a failure
            exc = err
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.environment.events.request.fire(request_type="grpc", name=name, response_time=elapsed_ms,
                                             response_length=size, exception=exc, context={})  # fmt: skip

    @task(6)
    def infer_one(self) -> None:
        self._infer("ModelInfer", [IMAGES[np.random.randint(len(IMAGES))]])

    @task(2)
    def infer_batch_top3(self) -> None:
        self._infer("ModelInfer batch top-3", IMAGES, class_count=3)
