"""Shadow scoring through a real two-worker server under concurrent load. The shadows are made from the
champion's own weights, so what they answer is known by construction: an exact copy agrees on every image,
and a copy whose classifier rows are rotated names another class on every image."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import colour_image, encode

from harness.server import Server
from harness.variants import discard, variant

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer shadow"}


def counts(server: Server) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        if line.startswith("imgclf_rollout_shadow_images_total{"):
            out[line.split('result="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def load(server: Server, seconds: float) -> list[tuple[int, str]]:
    """Four clients classifying for ``seconds``: (status, answering model) of every request."""
    answers: list[tuple[int, str]] = []
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as http:
            k = 0
            while time.monotonic() < stop:
                k += 1
                image = encode(colour_image((40 + 50 * (k % 4), 200 - 40 * (k % 3), 60), 32, seed=seed * 1000 + k))
                r = http.post("/classify", files={"image": ("x.png", image)})
                answers.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def wait_loaded(server: Server, tag: str | None, timeout: float = 60) -> None:
    """Until the worker answering says it has loaded ``tag``, then five poll intervals more: the other worker
    follows the registry within one or two (its own GET /models cannot be told apart; CI saw it lag 1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shadow = httpx.get(server.base + "/models", headers=AUTH).json()["shadow"]
        if (shadow is None and tag is None) or (shadow and shadow["tag"] == tag and shadow.get("loaded")):
            time.sleep(5)
            return
        time.sleep(0.5)
    raise AssertionError(f"shadow {tag} not loaded in {timeout} s: {shadow}")


def test_a_shadow_scores_live_images_beside_the_champion(trained_model, tmp_path):
    champion = trained_model[0]
    same, rotated = variant(champion), variant(champion, rotate=1)
    env = dict(IMGCLF_MODEL_NAME=champion.split(":")[0], IMGCLF_RUNTIME="torch", IMGCLF_WORKERS="2",
               IMGCLF_ADMIN_TOKEN="shadow", IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_CAPTURE='["disagreement"]',
               IMGCLF_CAPTURE_SAMPLE="1", IMGCLF_CAPTURE_DIR=str(tmp_path / "capture"),
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    try:
        promoted = httpx.post(server.base + "/models/promote", headers=AUTH, json={"tag": champion})
        assert promoted.status_code in (200, 409), promoted.text  # 409: already the champion
        refused = httpx.post(server.base + "/models/shadow", headers=AUTH, json={"tag": champion})
        assert refused.status_code == 400 and "is the champion" in refused.json()["error"]

        r = httpx.post(server.base + "/models/shadow", headers=AUTH, json={"tag": same, "fraction": 1.0})
        assert r.status_code == 200 and r.json()["tag"] == same, r.text
        wait_loaded(server, same)
        answers = load(server, 6)
        assert answers and all(status == 200 and model == champion for status, model in answers), answers[:5]
        time.sleep(1)
        seen = counts(server)
        assert seen.get("agreed", 0) > 0 and seen.get("disagreed", 0) == 0, seen

        httpx.post(server.base + "/models/shadow", headers=AUTH, json={"tag": rotated, "fraction": 1.0})
        wait_loaded(server, rotated)
        before = counts(server)
        answers = load(server, 6)
        assert all(status == 200 and model == champion for status, model in answers), answers[:5]
        time.sleep(1)
        after = counts(server)
        assert after["disagreed"] > 0 and after.get("agreed", 0) == before.get("agreed", 0), (before, after)
        shadow = httpx.get(server.base + "/models", headers=AUTH).json()["shadow"]
        assert shadow["tag"] == rotated and shadow["fraction"] == 1.0
        queue = httpx.get(server.base + "/captures", headers=AUTH).json()
        assert queue["counts"]["pending"] > 0 and {c["reason"] for c in queue["items"]} == {"disagreement"}
        assert {c["tag"] for c in queue["items"]} == {champion}  # what the champion answered is what is kept
        print(f"shadow counts: agreeing copy then rotated copy: {after} over {len(answers)} requests")

        assert httpx.delete(server.base + "/models/shadow", headers=AUTH).status_code == 204
        wait_loaded(server, None)
    finally:
        server.stop()
        discard(same, rotated)
