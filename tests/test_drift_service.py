"""The loop that knows when to retrain and what to label, through a real server and a real Prometheus: a
Fashion-MNIST model serves normal test images (the drift score stays low), then the same images inverted (a
real shift: the score rises past its threshold, the drift series say so, the alert's expression turns true),
images served during the drift are captured and labelled, and the drift policy starts the retrain.

Nothing asserts what the small model learned: the reference is its own validation split, so "normal"
traffic is a draw from the distribution the threshold was calibrated on, and inverted garments are far
outside it whatever the weights are.
"""

from __future__ import annotations

import hashlib
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_server import prometheus_server

from harness.server import Server
from loadtests.dashboard import ALERTS, Prometheus, alert_expressions
from training import store
from training.data import FASHION_MNIST_CLASSES, find_fashion_mnist, in_evaluation_share
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


def test_drift_alarm_alert_capture_labels_and_the_triggered_retrain(fashion_model, tmp_path):
    """The whole loop: normal traffic is quiet; inverted traffic raises the score, the series and the alert;
    images served while drifting are captured; labels given through the labelling endpoints become feedback;
    the drift policy, once on, starts one retrain with the drift as its recorded reason; the job trains on
    those labels and goes through the gate."""
    images, labels = fashion_mnist_arrays(str(find_fashion_mnist(None)))["test"]
    normal_images = [png(x) for x in images[-IMAGES:]]  # the test file: never trained on
    inverted = [png(255 - x) for x in images[-IMAGES:]]
    later = [png(255 - x) for x in images[-IMAGES - 60 : -IMAGES]]
    truth = {hashlib.sha256(d).hexdigest(): FASHION_MNIST_CLASSES[y] for d, y in
             zip(later, labels[-IMAGES - 60 : -IMAGES], strict=True)}  # fmt: skip
    feedback = tmp_path / "feedback"
    env = dict(IMGCLF_MODEL_NAME="fashion-drift", IMGCLF_RUNTIME="torch", IMGCLF_DRIFT_SAMPLE="1",
               IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}",
               IMGCLF_ADMIN_TOKEN="drift", IMGCLF_CAPTURE='["drift"]', IMGCLF_CAPTURE_SAMPLE="1",
               IMGCLF_CAPTURE_DIR=str(tmp_path / "capture"), IMGCLF_FEEDBACK_DIR=str(feedback),
               IMGCLF_JOBS_DIR=str(tmp_path / "jobs"), IMGCLF_GATE_TOLERANCE="1")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    admin = httpx.Client(base_url=server.base, headers={"Authorization": "Bearer drift"}, timeout=60)
    try:
        with prometheus_server([f"127.0.0.1:{server.port}"], [ALERTS]) as url:
            prom = Prometheus(url)
            # present from start-up, before any traffic
            assert "imgclf_drift_detected 0.0" in httpx.get(server.base + "/metrics").text
            at_start = scraped(prom, "max(imgclf_drift_detected)")
            assert float(at_start[0]["value"][1]) == 0

            normal = drift_after(server, normal_images)
            assert normal["images"] == normal["window"] <= IMAGES
            # a window from the calibrated distribution: above the threshold with probability alpha (1%),
            # above twice the threshold practically never
            assert normal["score"] < 2, normal
            assert admin.get("/captures").json()["counts"] == {}  # nothing drifted: nothing captured

            shifted = drift_after(server, inverted)
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

        # served while the alarm is on: captured for labelling, the image only (inverted images served after
        # the alarm went up in the middle of the traffic above are captured too)
        send(server, later)
        deadline = time.monotonic() + 30
        while True:
            queue = admin.get("/captures?limit=500").json()
            if set(truth) <= {c["sha256"] for c in queue["items"]}:
                break
            assert time.monotonic() < deadline, queue["counts"]
            time.sleep(0.5)
        pending = queue["counts"]["pending"]
        assert {c["reason"] for c in queue["items"]} == {"drift"}
        kept = {p.read_bytes() for p in (tmp_path / "capture" / "fashion-drift").iterdir()}
        assert len(kept) == pending and set(later) <= kept <= set(later) | set(inverted)
        image = admin.get(f"/captures/{queue['items'][0]['sha256']}/image")
        assert image.status_code == 200 and image.content in kept

        ours = [c for c in queue["items"] if c["sha256"] in truth]  # in the queue's order
        for item in ours[:40]:
            r = admin.post(f"/captures/{item['sha256']}", json={"label": truth[item["sha256"]]})
            assert r.status_code == 200 and r.json()["status"] == "labelled", r.text
        skipped, rejected = ours[40:42]
        assert admin.post(f"/captures/{skipped['sha256']}", json={"action": "skip"}).json()["status"] == "skipped"
        assert admin.post(f"/captures/{rejected['sha256']}", json={"action": "none"}).json()["status"] == "none"
        bad = admin.post(f"/captures/{skipped['sha256']}", json={"label": "a unicorn"})
        assert bad.status_code == 400 and "not a class" in bad.json()["error"]
        counts = admin.get("/captures").json()["counts"]
        assert counts == {"labelled": 40, "skipped": 1, "none": 1, "pending": pending - 42}
        assert sum(admin.get("/models").json()["feedback"].values()) == 40
        held = [c for c in ours[:40] if in_evaluation_share(c["sha256"][:32], 0.2)]  # IMGCLF_EVALUATION_SHARE
        assert admin.get("/models").json()["evaluation_set"]["images"] == len(held)

        # the drift policy, turned on at run time: one job, with the drift as its reason
        assert admin.get("/jobs").json() == []
        r = admin.put("/policies", json={"drift_minutes": 0, "cooldown_minutes": 60})
        assert r.status_code == 200 and r.json()["source"] == "admin", r.text
        deadline = time.monotonic() + 600
        while not (jobs := admin.get("/jobs").json()) or jobs[0]["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, jobs
            time.sleep(1)
        assert len(jobs) == 1, jobs
        job = jobs[0]
        assert job["status"] == "succeeded", admin.get(f"/jobs/{job['id']}").json()["log_tail"]
        assert job["trigger"]["policy"] == "drift" and job["trigger"]["evidence"]["drift"]["detected"]
        assert job["trigger"]["evidence"]["drift"]["score"] > 1 and "drift detected" in job["trigger"]["reason"]
        assert job["decision"] is not None and job["decision"]["paired"] is not None  # judged by the gate
        given = [key for key, _ in store.read_split(job["result_tag"])["train"] if key.startswith(str(feedback))]
        assert len(given) == 40 - len(held), "the labels given in the queue train, but for the evaluation share"
        if held:  # the rest judged both sides
            assert job["decision"]["evaluation"]["images"] == len(held), job["decision"]
        print(f"triggered job {job['id']}: {job['trigger']['reason']}; decision: {job['decision']['reason']}")
    finally:
        admin.close()
        server.stop()
