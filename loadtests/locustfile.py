"""Locust load test for the classify endpoints (a first cut; the performance issue extends it).

locust -f loadtests/locustfile.py --host http://localhost:3000 --headless -u 16 -r 4 -t 1m
"""

from __future__ import annotations

import base64
import io

import numpy as np
from locust import HttpUser, between, task
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
