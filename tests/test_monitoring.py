"""A real Prometheus scrapes a running service through a full day in miniature (classify, gRPC, bad input,
feedback, a retrain, a rollback); every dashboard query and alert expression is then evaluated through
Prometheus' HTTP API, and the dashboard is drawn from that data."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from conftest import colour_image, encode
from prometheus_server import prometheus_server

from harness.server import Server
from loadtests.dashboard import (
    ALERTS,
    Prometheus,
    alert_expressions,
    load_dashboard,
    metric_names,
    panel_queries,
    render,
)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer monitoring"}


def traffic(server: Server, stop: threading.Event) -> None:
    good = encode(colour_image((200, 40, 40), 32, seed=5))
    odd = encode(colour_image((128, 128, 128), 32, seed=6))  # grey: low confidence
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with httpx.Client(base_url=server.base, timeout=30) as client:
        while not stop.is_set():
            for data in (good, odd):
                client.post("/classify", files={"image": ("x.png", data)})
            client.post("/classify", content=b"not an image", headers={"Content-Type": "image/png"})
            inp = tgrpc.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([good], dtype=object))
            grpc_client.infer(server.env["IMGCLF_MODEL_NAME"], [inp])
            time.sleep(0.05)


def test_dashboard_and_alerts_on_real_prometheus(trained_model, shared_folder_dataset, tmp_path):
    tag, _ = trained_model
    name = tag.split(":")[0]
    env = dict(IMGCLF_MODEL_NAME=name, IMGCLF_RUNTIME="torch", IMGCLF_WORKERS="2", IMGCLF_ADMIN_TOKEN="monitoring",
               IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_DATA_ROOTS=f'["{shared_folder_dataset.parent}"]',
               IMGCLF_FEEDBACK_DIR=str(tmp_path / "feedback"), IMGCLF_JOBS_DIR=str(tmp_path / "jobs"),
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    stop = threading.Event()
    try:
        with prometheus_server([f"127.0.0.1:{server.port}"], [ALERTS]) as url:
            start = time.time()
            worker = threading.Thread(target=traffic, args=(server, stop), daemon=True)
            worker.start()
            image = encode(colour_image((40, 60, 220), 32, seed=11))
            assert httpx.post(server.base + "/feedback", headers=AUTH, files={"image": ("f.png", image)},
                              data={"label": "blue"}).status_code == 200  # fmt: skip
            job = httpx.post(server.base + "/retrain", headers=AUTH,
                             json={"data": shared_folder_dataset.name, "epochs": 2}).json()["job_id"]  # fmt: skip
            for _ in range(240):
                status = httpx.get(f"{server.base}/jobs/{job}", headers=AUTH).json()
                if status["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.5)
            assert status["status"] == "succeeded", status
            if status["decision"]["promoted"]:
                time.sleep(3)
                assert httpx.post(server.base + "/models/rollback", headers=AUTH).status_code == 200
            else:  # refused: make a reload happen anyway
                r = httpx.post(server.base + "/models/promote", headers=AUTH, json={"tag": status["result_tag"]})
                assert r.status_code == 200, r.text
            # several scrapes of everything, rates over 30 s windows (longer for the README's picture)
            time.sleep(float(os.environ.get("IMGCLF_MONITORING_SECONDS", 12)))
            stop.set()
            worker.join(timeout=30)
            prom = Prometheus(url)

            missing = [(p["title"], expr) for p, _, expr in panel_queries(load_dashboard())
                       if not prom.query(expr)["data"]["result"]]  # fmt: skip
            assert not missing, f"dashboard queries without data: {missing}"
            for alert, expr in alert_expressions().items():
                answer = prom.query(expr)
                assert answer["status"] == "success", (alert, answer)
            rules = httpx.get(url + "/api/v1/rules").json()["data"]["groups"][0]["rules"]
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

            lines = httpx.get(server.base + "/metrics").text.splitlines()
            exposed = {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}
            exposed = {n.removesuffix(s) for n in exposed for s in ("_bucket", "_sum", "_count", "")}
            used = set().union(*(metric_names(e) for _, _, e in panel_queries(load_dashboard())),
                               *(metric_names(e) for e in alert_expressions().values()))  # fmt: skip
            assert used <= exposed, f"not in /metrics: {used - exposed}"

            out = Path(os.environ.get("IMGCLF_DOCS_DIR", tmp_path)) / "dashboard.png"  # docs/: the README's picture
            png = render(prom, load_dashboard(), out, start, time.time())
            assert png.stat().st_size > 50_000
    finally:
        stop.set()
        server.stop()
