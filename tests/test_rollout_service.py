"""Rollouts through a real two-worker server under concurrent load, with challengers whose behaviour is known by
construction (harness.variants): an exact copy of the champion goes shadow -> canary -> champion with no failed
request; a copy that names another class on every image is aborted in shadow by the disagreement guard; a much
wider (slower) network is aborted in canary by the latency guard. The champion answers throughout, and the
registry records each decision."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import colour_image, encode

from harness.server import Server
from harness.variants import discard, variant

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer rollout"}
QUICK = {"shadow": {"fraction": 1.0, "min_requests": 150, "min_minutes": 0.1},
         "canary": {"fraction": 0.3, "min_requests": 200, "min_minutes": 0.3},
         "guards": {"min_requests": 100}}  # fmt: skip


class Load:
    """Four clients classifying until stopped: (status, answering model) of every request."""

    def __init__(self, server: Server):
        self.server = server
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(s,)) for s in range(4)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _client(self, seed: int) -> None:
        with httpx.Client(base_url=self.server.base, timeout=60) as http:
            k = 0
            while not self._stop.is_set():
                k += 1
                image = encode(colour_image((40 + 50 * (k % 4), 200 - 40 * (k % 3), 60), 32, seed=seed * 10**5 + k))
                r = http.post("/classify", files={"image": ("x.png", image)})
                self.answers.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))


def wait_ended(server: Server, rollout_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    stages = set()
    while time.monotonic() < deadline:
        body = httpx.get(server.base + "/rollout", headers=AUTH).json()
        if body["active"]:
            stages.add(body["active"]["stage"])
        ended = next((r for r in body["recent"] if r["id"] == rollout_id and r["status"] != "active"), None)
        if ended is not None:
            ended["stages_seen"] = stages
            return ended
        time.sleep(0.5)
    raise AssertionError(f"rollout {rollout_id} still active after {timeout} s: {body['active']}")


def metric(server: Server, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            out[line.split('="')[1].split('"')[0]] = out.get(line.split('="')[1].split('"')[0], 0) + float(
                line.rsplit(" ", 1)[1]
            )
    return out


def roll_out(server: Server, tag: str, plan: dict) -> dict:
    r = httpx.post(server.base + "/rollout", headers=AUTH, json={"tag": tag, "reason": "test", "plan": plan})
    assert r.status_code == 201, r.text
    return r.json()


def test_rollouts_promote_a_good_challenger_and_abort_bad_ones_under_load(trained_model, tmp_path):
    champion = trained_model[0]
    good, disagreeing, slow = variant(champion), variant(champion, rotate=1), variant(champion, width=192)
    env = dict(IMGCLF_MODEL_NAME=champion.split(":")[0], IMGCLF_RUNTIME="torch", IMGCLF_WORKERS="2",
               IMGCLF_ADMIN_TOKEN="rollout", IMGCLF_REGISTRY_POLL_SECONDS="1",
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    try:
        promoted = httpx.post(server.base + "/models/promote", headers=AUTH, json={"tag": champion})
        assert promoted.status_code in (200, 409), promoted.text
        series = httpx.get(server.base + "/metrics").text  # present from start-up
        assert (
            "imgclf_rollout_stage 0.0" in series and 'imgclf_rollout_aborts_total{reason="disagreement"} 0.0' in series
        )

        with Load(server) as load:
            # A challenger that names another class on every image: aborted in shadow.
            first = roll_out(server, disagreeing, QUICK)
            assert first["stage"] == "shadow"
            ended = wait_ended(server, first["id"])
            assert ended["status"] == "aborted" and "disagreement guard failed" in ended["history"][-1]["reason"]
            print("disagreeing:", ended["history"][-1]["reason"])

            # A much slower network (untrained, so the answer-based guards are opened for it): aborted in canary.
            opened = {"min_requests": 100, "max_disagreement": 1.0, "max_low_confidence_increase": 1.0}
            loose = {**QUICK, "stages": ["canary"], "canary": {**QUICK["canary"], "fraction": 0.1}, "guards": opened}
            second = roll_out(server, slow, loose)
            ended = wait_ended(server, second["id"])
            assert ended["status"] == "aborted" and "latency ratio guard failed" in ended["history"][-1]["reason"]
            print("slow:", ended["history"][-1]["reason"])
            slow_answers = [m for _, m in load.answers if m == slow]
            assert slow_answers  # the canary answered its share before the guard stopped it

            # An exact copy: shadow -> canary -> champion. Its latency guard allows 10 x: the same network on two
            # shared cores under load once had a canary p99 3 x the champion's (52.9 against 17.3 ms; the wider
            # network above was 9.3 x in that run, against the default guard of 2 x).
            guards = {**QUICK["guards"], "max_latency_ratio": 10.0}
            copy_plan = {**QUICK, "stages": ["shadow", "canary"], "guards": guards}
            third = roll_out(server, good, copy_plan)
            ended = wait_ended(server, third["id"])
            assert ended["status"] == "promoted", ended["history"][-1]
            assert [s["action"] for s in ended["history"]] == ["started", "advanced", "promoted"]
            assert ended["stages_seen"] >= {"shadow", "canary"} or len(ended["history"]) == 3
            print("good:", " | ".join(s["reason"] for s in ended["history"]))
            deadline = time.monotonic() + 30  # every worker follows the new champion within a poll or two
            while time.monotonic() < deadline and {m for _, m in load.answers[-20:]} != {good}:
                time.sleep(0.5)
        statuses = [s for s, _ in load.answers]
        assert statuses and set(statuses) == {200}, [a for a in load.answers if a[0] != 200][:5]
        assert {m for _, m in load.answers} <= {champion, slow, good}
        assert {m for _, m in load.answers[-20:]} == {good}
        print(f"{len(statuses)} requests during three rollouts, none failed")

        models = httpx.get(server.base + "/models", headers=AUTH).json()
        assert models["champion"] == good and models["rollout"] is None
        events = [e for e in models["history"] if e["tag"] == good and e["kind"] == "promoted"]
        assert events and events[0]["challenger"]["stage"] == "canary"  # the live evidence recorded with it
        aborts = metric(server, "imgclf_rollout_aborts_total")
        assert aborts["disagreement"] >= 1 and aborts["latency_ratio"] >= 1, aborts
        versions = metric(server, "imgclf_rollout_requests_total")
        assert versions.get(good, 0) > 0 and versions.get(slow, 0) > 0, versions
    finally:
        server.stop()
        discard(good, disagreeing, slow)
