"""Drift through a real server and a real Prometheus: a Fashion-MNIST model serves normal test images (the
score stays low), then the same images inverted (a real shift: the score rises past its threshold, the
drift series say so from the first scrape, and the alert's expression turns true in Prometheus).

Nothing asserts what the small model learned: the reference is its own validation split, so "normal"
traffic is a draw from the distribution the threshold was calibrated on, and inverted garments are far
outside it whatever the weights are.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_server import prometheus_server

from harness.server import Server
from loadtests.dashboard import ALERTS, Prometheus, alert_expressions
from training.data import find_fashion_mnist
from training.data.fashion_mnist import fashion_mnist_arrays

pytestmark = pytest.mark.slow
IMAGES = 200


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    from training import load_config, train

    cfg = load_config(dotted=["data.source=fashion-mnist", "data.limit_per_class=240", "name=fashion-drift",
                              f"output_dir={tmp_path_factory.mktemp('runs')}", "epochs=3", "model.width=8",
                              "model.depth=2", "data.workers=0", "precision=fp32"])  # fmt: skip
    result = train(cfg)
    return result.tag


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def send(server: Server, images: list[bytes]) -> None:
    with httpx.Client(base_url=server.base, timeout=60) as client:
        for i in range(0, len(images), 50):
            files = [("images", (f"{k}.png", data)) for k, data in enumerate(images[i : i + 50])]
            assert client.post("/classify_batch", files=files).status_code == 200


def drift_after(server: Server, images: list[bytes]) -> dict:
    send(server, images)
    time.sleep(2.5)  # the periodic check (every IMGCLF_REGISTRY_POLL_SECONDS=1) and a scrape
    return httpx.get(server.base + "/model").json()["drift"]


def scraped(prom: Prometheus, expr: str, timeout: float = 20) -> list:
    """The query's result once Prometheus has scraped it (the first scrape comes a moment after start)."""
    deadline = time.monotonic() + timeout
    while not (result := prom.query(expr)["data"]["result"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert result, f"{expr}: no data in Prometheus after {timeout} s"
    return result


def test_inverted_images_raise_the_drift_alarm_and_the_alert(fashion_model, tmp_path):
    test_images = fashion_mnist_arrays(str(find_fashion_mnist(None)))["test"][0][-IMAGES:]  # never trained on
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    env = dict(IMGCLF_MODEL_NAME="fashion-drift", IMGCLF_RUNTIME="torch", IMGCLF_DRIFT_SAMPLE="1",
               IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_DATABASE_URL=registry)  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    try:
        with prometheus_server([f"127.0.0.1:{server.port}"], [ALERTS]) as url:
            prom = Prometheus(url)
            # present from start-up, before any traffic
            assert "imgclf_drift_detected 0.0" in httpx.get(server.base + "/metrics").text
            at_start = scraped(prom, "max(imgclf_drift_detected)")
            assert float(at_start[0]["value"][1]) == 0

            normal = drift_after(server, [png(x) for x in test_images])
            assert normal["images"] == normal["window"] <= IMAGES
            # a window from the calibrated distribution: above the threshold with probability alpha (1%),
            # above twice the threshold practically never
            assert normal["score"] < 2, normal

            shifted = drift_after(server, [png(255 - x) for x in test_images])
            assert shifted["detected"] and shifted["score"] > 3 * max(normal["score"], 1), (normal, shifted)
            assert shifted["p_value"] < shifted["alpha"]
            print(
                f"drift score: normal {normal['score']:.2f} (p {normal['p_value']:.3f}), inverted "
                f"{shifted['score']:.2f} (p {shifted['p_value']:.3f}); window {shifted['window']}"
            )
            expr = alert_expressions()["ImgclfInputDrift"]
            assert prom.query(expr)["data"]["result"], f"{expr} is not true in Prometheus"
            score = prom.query("max(imgclf_drift_score)")["data"]["result"]
            assert float(score[0]["value"][1]) == pytest.approx(shifted["score"], rel=1e-6)
            time.sleep(1.5)  # one rule evaluation: the alert is pending (it fires after its 10 minutes)
            alerts = httpx.get(url + "/api/v1/alerts").json()["data"]["alerts"]
            assert any(a["labels"]["alertname"] == "ImgclfInputDrift" for a in alerts), alerts
    finally:
        server.stop()
