"""Integration: a real `bentoml serve` subprocess on a free port, with a tiny trained model."""

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import COLOURS, colour_image, encode

from harness.server import ROOT, Server
from training import load_model
from training.data import KeyLoader
from training.tasks import TaskSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    tag, _ = trained_model
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag,
               IMGCLF_RUNTIME="auto", IMGCLF_MAX_LATENCY_MS="50",
               IMGCLF_MAX_BATCH_SIZE="16", IMGCLF_AGREEMENT_SAMPLES="50",
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}")  # fmt: skip
    srv = Server(env, tmp_path_factory.mktemp("server") / "serve.log").start()
    yield srv.base
    srv.stop()


def test_health_model_and_docs(server):
    assert httpx.get(server + "/livez").status_code == 200
    info = httpx.get(server + "/model").json()
    assert info["classes"] == ["blue", "green", "red"]
    assert info["runtime"]["chosen"] in info["runtime"]["candidates"]
    assert httpx.get(server + "/docs").status_code == 200


def test_predictions_match_the_trained_model(server, trained_model):
    tag, _ = trained_model
    stored = load_model(tag)
    record = stored.split()
    keys = [k for k, _ in record["test"]]
    files = [("images", (Path(k).name, Path(k).read_bytes(), "image/png")) for k in keys]
    served = httpx.post(server + "/classify_batch", files=files, params={"top_k": 3}, timeout=60).json()
    from training.transforms import build_eval_transform

    tf = build_eval_transform(stored.preprocessing)
    load = KeyLoader(3)
    with torch.inference_mode():
        logits = stored.model(torch.stack([tf(load(k)) for k in keys])).numpy()
    probs = TaskSpec.from_metadata(stored.metadata).activate(logits)  # calibrated, as the model serves them
    for row, result in zip(probs, served["results"], strict=True):
        assert result["predictions"][0]["index"] == int(row.argmax())
        np.testing.assert_allclose(result["predictions"][0]["score"], row.max(), atol=0.02)


def test_concurrent_requests_share_batches(server):
    """16 clients whose requests are on the server at once: their images go in shared batches."""
    img = encode(colour_image(COLOURS["blue"], 32, seed=11))
    everyone_started = threading.Barrier(16)

    def held_body():
        yield img[:16]
        everyone_started.wait(30)  # every request is now on the server, its image still on the way
        time.sleep(0.05)
        yield img[16:]

    def one(_):
        return httpx.post(server + "/classify", content=held_body(), headers={"Content-Type": "image/png"},
                          timeout=60).status_code  # fmt: skip

    def batches() -> tuple[float, float]:
        text = httpx.get(server + "/metrics").text
        return _metric(text, "imgclf_inference_batch_size_count"), _metric(text, "imgclf_inference_batch_size_sum")

    count0, total0 = batches()
    with ThreadPoolExecutor(16) as pool:
        for _ in range(2):
            everyone_started.reset()
            assert set(pool.map(one, range(16))) == {200}
    count, total = batches()
    count, total = count - count0, total - total0
    assert total == 32 and total / count >= 4, (count, total)  # 2 batches of 16 here; 4 images a batch at least


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))  # fmt: skip


def test_custom_metrics_after_traffic(server):
    httpx.post(server + "/classify", files={"image": ("x.txt", b"nope", "image/png")})
    text = httpx.get(server + "/metrics").text
    for series in ("imgclf_predictions_total", "imgclf_prediction_confidence_bucket", "imgclf_inference_seconds",
                   "imgclf_preprocess_seconds", "imgclf_rejected_requests_total", "imgclf_model_info",
                   "imgclf_model_load_seconds", "imgclf_low_confidence_predictions_total"):  # fmt: skip
        assert series in text, series
    assert 'reason="not_an_image"' in text


def _classify_series(base: str) -> dict[str, float]:
    """BentoML's ``/classify`` request series now: requests by status, plus ``in_progress`` and ``seconds_count``."""
    import re

    out: dict[str, float] = {}
    text = httpx.get(base + "/metrics").text
    for name, labels, value in re.findall(r"^bentoml_service_(request_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("endpoint") != "/classify":
            continue
        key = {"request_total": found.get("http_response_code"), "request_in_progress": "in_progress",
               "request_duration_seconds_count": "seconds_count"}.get(name)  # fmt: skip
        if key is not None:
            out[key] = out.get(key, 0.0) + float(value)
    return out


def test_request_series_count_every_classify_answer(server):
    """The dashboards' series count POST /classify by status, whichever lane answered it (the front lane, ahead of
    BentoML's metrics middleware, answers most), and nothing is left in progress."""
    before = _classify_series(server)
    image = encode(colour_image(COLOURS["red"], 32, seed=5))
    sent = [(image, {})] * 4 + [(b"nope", {}), (image, {"top_k": 0})]  # the last: only the route validates it
    answered = Counter(str(httpx.post(server + "/classify", content=body, params=params,
                                      headers={"Content-Type": "image/png"}).status_code)
                       for body, params in sent)  # fmt: skip
    assert (answered["200"], answered["422"]) == (4, 1)
    after = _classify_series(server)
    grew = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert {k: v for k, v in grew.items() if k.isdigit() and v} == answered
    assert grew["seconds_count"] == len(sent) and after["in_progress"] == 0


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"files": {"image": ("x.png", b"", "image/png")}}, 400),
        ({"files": {"image": ("x.jpg", b"\xff\xd8\xff\xe0garbage", "image/jpeg")}}, 400),
        ({"content": b"GIF89a", "headers": {"Content-Type": "image/gif"}}, 415),
        ({"content": b"plain", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"files": {"wrong": ("x.png", b"x", "image/png")}}, 400),
    ],
)
def test_bad_input_then_still_ready(server, kwargs, status):
    r = httpx.post(server + "/classify", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]
    assert httpx.get(server + "/readyz").status_code == 200


def test_bentoml_build_works_offline(tmp_path):
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imgclf:" in proc.stdout


def _same_answer(got: dict, http: dict) -> None:
    """The same model, task and predictions (scores to float noise: batches may differ in size)."""
    assert (got["model"], got["task"]) == (http["model"], http["task"])
    pairs = [[(p["label"], p["index"]) for p in r["predictions"]] for r in got.get("results", [got])]
    assert pairs == [[(p["label"], p["index"]) for p in r["predictions"]] for r in http.get("results", [http])]
    for a, b in zip(got.get("results", [got]), http.get("results", [http]), strict=True):
        np.testing.assert_allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]],
                                   atol=1e-4)  # fmt: skip


def test_bentoml_clients_call_the_api_methods_with_the_routes_answers_and_errors(server, tmp_path):
    import asyncio

    import bentoml

    red, blue, bad = tmp_path / "red.png", tmp_path / "blue.png", tmp_path / "bad.png"
    red.write_bytes(encode(colour_image(COLOURS["red"], 40, seed=3)))
    blue.write_bytes(encode(colour_image(COLOURS["blue"], 40, seed=4)))
    bad.write_bytes(b"this is not an image")
    http_one = httpx.post(server + "/classify", files={"image": ("red.png", red.read_bytes(), "image/png")},
                          params={"top_k": 2}).json()  # fmt: skip
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in (red, blue)]
    http_batch = httpx.post(server + "/classify_batch", files=files).json()
    http_bad = httpx.post(server + "/classify", files={"image": ("bad.png", bad.read_bytes(), "image/png")})
    with bentoml.SyncHTTPClient(server) as client:
        assert {"classify", "classify_batch", "model_info"} <= set(client.endpoints)
        _same_answer(client.classify(image=red, top_k=2), http_one)
        _same_answer(client.classify_batch(images=[red, blue]), http_batch)
        info = client.model_info()
        assert (info["tag"], info["classes"]) == (http_one["model"], ["blue", "green", "red"])
        with pytest.raises(bentoml.exceptions.BentoMLException) as err:
            client.classify(image=bad)
    assert int(err.value.error_code) == http_bad.status_code == 415
    assert http_bad.json()["error"] in str(err.value)

    async def with_the_async_client() -> dict:
        async with bentoml.AsyncHTTPClient(server) as client:
            return await client.classify(image=red, top_k=2)

    _same_answer(asyncio.run(with_the_async_client()), http_one)
