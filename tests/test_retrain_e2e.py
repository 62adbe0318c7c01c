"""The retraining loop end to end, against a real `bentoml serve` with two workers.

v1 is served; a retrain promotes v2 onto both workers; a permuted-label retrain is refused; a
rollback brings v1 back; a job killed mid-training fails with the champion unchanged; a restart
keeps the history. Classify traffic runs throughout and must see no failed request.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import LEARNED, TOY, TOY_GATE, make_folder_dataset, permuted_labels_csv, train_to_criterion
from mlflow_server import mlflow_server

from harness.server import Server, served_models
from training import load_config
from training.mlflow_models import TAG_KEY
from training.tracking import mlflow_client

pytestmark = pytest.mark.slow
TOKEN = "e2e-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def mlflow_url():
    with mlflow_server() as url:
        yield url


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_url):
    """A data root with a dataset and a permuted-label CSV of it, and v1 trained to its criterion into the store
    (logged to a real MLflow server, as the service's jobs and decisions are)."""
    root = tmp_path_factory.mktemp("loop")
    data = root / "data"
    make_folder_dataset(data / "colours", per_class=16)
    permuted_labels_csv(data, "colours", "permuted.csv")
    cfg = load_config(dotted=[f"data.source={data / 'colours'}", f"output_dir={root / 'runs'}", "name=loop",
                              f"tracking.mlflow_uri={mlflow_url}", *TOY, *LEARNED])  # fmt: skip
    v1 = train_to_criterion(cfg).tag
    env = dict(IMGCLF_MODEL_NAME="loop", IMGCLF_WORKERS="2", IMGCLF_ADMIN_TOKEN=TOKEN, IMGCLF_RUNTIME="torch",
               **TOY_GATE,
               IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_DATA_ROOTS=f'["{data}"]',
               IMGCLF_FEEDBACK_DIR=str(data / "feedback"), IMGCLF_JOBS_DIR=str(root / "jobs"),
               IMGCLF_DATABASE_URL=f"sqlite:///{root / 'registry.db'}", IMGCLF_MAX_LATENCY_MS="5",
               IMGCLF_MLFLOW_TRACKING_URI=mlflow_url)  # fmt: skip
    return {"root": root, "data": data, "v1": v1, "env": env, "mlflow": mlflow_client(mlflow_url)}


def mlflow_alias(world: dict, alias: str) -> str | None:
    """The BentoML tag behind an alias of the MLflow registered model (None while it is not set)."""
    try:
        return world["mlflow"].get_model_version_by_alias("loop", alias).tags[TAG_KEY]
    except Exception:  # noqa: BLE001 - not there yet
        return None


class Traffic(threading.Thread):
    """Classify requests in a loop until stopped; counts status codes and the versions that answered."""

    def __init__(self, base: str, image: bytes):
        super().__init__(daemon=True)
        self.base, self.image = base, image
        self.statuses: Counter[int] = Counter()
        self.tags: Counter[str] = Counter()
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._halt.is_set():
                try:
                    r = client.post(self.base + "/classify", files={"image": ("x.png", self.image, "image/png")})
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.tags[r.json()["model"]] += 1
                    else:
                        self.errors.append(r.text[:200])
                except httpx.HTTPError as exc:
                    self.statuses[0] += 1
                    self.errors.append(repr(exc))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def wait_for(what: str, check, timeout: float = 180, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def both_workers_serve(base: str, tag: str) -> bool:
    served = served_models(httpx.get(base + "/metrics").text)
    return len(served) == 2 and set(served.values()) == {tag}


def grpc_versions(server: Server, image: bytes, calls: int = 8) -> set[str]:
    """The model versions that answer gRPC ModelInfer calls (spread over the workers)."""
    import numpy as np
    import tritonclient.grpc as tgrpc

    versions = set()
    for _ in range(calls):
        with tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:  # new connection each time
            inp = tgrpc.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([image], dtype=object))
            versions.add(client.infer("loop", [inp]).get_response().model_version)
    return versions


def retrain(base: str, **body) -> str:
    r = httpx.post(base + "/retrain", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def job(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/jobs/{job_id}", headers=AUTH).json()


def finished(base: str, job_id: str) -> dict:
    return wait_for(f"job {job_id}", lambda: (j := job(base, job_id))["status"] in ("succeeded", "failed") and j)


def test_the_retraining_loop(world):
    server = Server(world["env"], world["root"] / "serve.log").start()
    base, v1 = server.base, world["v1"]
    try:
        wait_for("v1 on both workers", lambda: both_workers_serve(base, v1))
        image = (world["data"] / "colours" / "red" / "000.png").read_bytes()
        clients = [Traffic(base, image) for _ in range(4)]  # concurrent load through every swap
        for c in clients:
            c.start()

        # access control
        assert httpx.post(base + "/retrain", json={}).status_code == 401
        assert httpx.post(base + "/retrain", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert httpx.get(base + "/jobs", headers={"Authorization": "Basic " + TOKEN}).status_code == 401

        # v2: trained, judged on v1's holdout, promoted, served by both workers; one job at a time
        first = retrain(base, data="colours")  # the champion's config: trained to its criterion
        busy = httpx.post(base + "/retrain", json={"data": "colours"}, headers=AUTH)
        assert busy.status_code == 409 and busy.json()["job_id"] == first
        done = finished(base, first)
        assert done["status"] == "succeeded", done
        v2 = done["result_tag"]
        assert done["decision"]["promoted"] and done["decision"]["champion_tag"] == v1
        assert done["progress"]["epoch"] >= 1 and done["log_tail"]
        audit = done["progress"]["audit"]  # the labels were audited with v1's probabilities before training
        assert audit["audited"] > 0 and audit["excluded"] is False and audit["suspects"] >= 0
        wait_for("v2 on both workers", lambda: both_workers_serve(base, v2), timeout=60)
        wait_for("MLflow's champion alias on v2", lambda: mlflow_alias(world, "champion") == v2, timeout=60)
        assert grpc_versions(server, image) == {v2.split(":")[1]}  # gRPC follows the champion too

        # a model that learned permuted labels (every answer wrong by construction) is refused; v2 stays
        bad = finished(base, retrain(base, data="permuted.csv"))
        assert bad["status"] == "succeeded" and not bad["decision"]["promoted"], bad
        assert bad["decision"]["reason"].startswith("refused") and bad["decision"]["challenger"]["accuracy"] < 0.7
        models = httpx.get(base + "/models", headers=AUTH).json()
        assert models["champion"] == v2 and models["history"][0]["kind"] == "refused"
        wait_for("MLflow's challenger alias on the refused model",
                 lambda: mlflow_alias(world, "challenger") == bad["result_tag"], timeout=60)  # fmt: skip

        # rollback: v1 again on both workers
        r = httpx.post(base + "/models/rollback", json={"reason": "e2e"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["tag"] == v1, r.text
        wait_for("v1 back on both workers", lambda: both_workers_serve(base, v1), timeout=60)
        wait_for("MLflow's champion alias back on v1", lambda: mlflow_alias(world, "champion") == v1, timeout=60)
        client = world["mlflow"]
        runs = client.search_runs([client.get_experiment_by_name("loop").experiment_id])
        trained = {r.data.tags.get(TAG_KEY) for r in runs if r.info.status == "FINISHED"}
        assert {v1, v2, bad["result_tag"]} <= trained  # the first training and both jobs, with their metrics
        assert all(client.get_metric_history(r.info.run_id, "loss") for r in runs if r.data.tags.get(TAG_KEY) == v2)

        # a job killed mid-training fails; the champion and the store are untouched
        versions = len(httpx.get(base + "/models", headers=AUTH).json()["versions"])
        long = retrain(
            base, data="colours", epochs=400, overrides={"early_stop.patience": 400, "early_stop.target": None}
        )  # runs until killed
        running = wait_for("training to start", lambda: (j := job(base, long))["progress"] and j)
        os.kill(running["pid"], signal.SIGKILL)
        killed = finished(base, long)
        assert killed["status"] == "failed" and "SIGKILL" in killed["error"], killed
        models = httpx.get(base + "/models", headers=AUTH).json()
        assert models["champion"] == v1 and len(models["versions"]) == versions

        statuses, tags, errors = Counter(), Counter(), []
        for c in clients:
            c.stop()
            statuses.update(c.statuses)
            tags.update(c.tags)
            errors += c.errors
        assert statuses[200] > 200 and set(statuses) == {200}, (statuses, errors[:5])
        assert {v1, v2} <= set(tags)
        text = httpx.get(base + "/metrics").text
        for series in ("imgclf_retrain_jobs_total", "imgclf_promotions_total", "imgclf_champion_info",
                       "imgclf_retrain_job_duration_seconds_count", "imgclf_last_challenger_accuracy"):  # fmt: skip
            assert series in text, series
    finally:
        server.stop()

    # a restart keeps the history and serves the champion
    server = Server(world["env"], world["root"] / "serve.log").start()
    try:
        jobs = {j["id"]: j["status"] for j in httpx.get(server.base + "/jobs", headers=AUTH).json()}
        assert jobs == {first: "succeeded", bad["id"]: "succeeded", long: "failed"}
        assert httpx.get(server.base + "/model").json()["tag"] == v1
    finally:
        server.stop()


def test_admin_is_closed_without_a_configured_token(world, tmp_path):
    env = dict(world["env"], IMGCLF_ADMIN_TOKEN="", IMGCLF_WORKERS="1",
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    try:
        r = httpx.post(server.base + "/retrain", json={}, headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]
    finally:
        server.stop()


def test_feedback_is_kept_once_and_feeds_the_next_retrain(world, tmp_path):
    """Feedback through the API lands where the next job's config reads it (extra training folder)."""
    env = dict(world["env"], IMGCLF_WORKERS="1", IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}",
               IMGCLF_FEEDBACK_DIR=str(tmp_path / "feedback"))  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    image = (world["data"] / "colours" / "blue" / "001.png").read_bytes()
    try:

        def send(label: str, data: bytes = image) -> httpx.Response:
            files = {"image": ("f.png", data, "image/png")}
            return httpx.post(server.base + "/feedback", headers=AUTH, files=files, data={"label": label})

        first, again = send("blue"), send("blue")
        assert first.status_code == 200 and not first.json()["duplicate"] and again.json()["duplicate"]
        assert send("purple").status_code == 400
        assert send("blue", b"not an image").status_code == 415
        assert httpx.get(server.base + "/models", headers=AUTH).json()["feedback"] == {"blue": 1}
        assert len(list((tmp_path / "feedback" / "loop" / "blue").iterdir())) == 1
    finally:
        server.stop()
    from service.retraining.records import RetrainRequest
    from service.retraining.requests import job_config
    from service.settings import Settings

    settings = Settings(model_name="loop", feedback_dir=tmp_path / "feedback", data_roots=[world["data"]])
    cfg = job_config(RetrainRequest(data="colours"), settings, None)
    assert cfg.data.extra_train == [str(tmp_path / "feedback" / "loop")]
    assert Path(cfg.data.extra_train[0], "blue").is_dir()
