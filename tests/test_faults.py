"""Faults and exposure, against real servers: a locked registry, a corrupted model, a killed worker, a failed
model write, requests over the concurrency limit, CORS, and no outbound connection ever."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import colour_image, encode

from harness.server import Server, free_port
from service.retraining.registry import Registry
from training import store

pytestmark = pytest.mark.slow
TOKEN = "faults"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = encode(colour_image((220, 40, 40), 32, seed=9))


def serve(trained_model, tmp_path: Path, **extra: str) -> Server:
    tag, _ = trained_model
    env = dict(
        IMGCLF_MODEL_NAME=tag.split(":")[0],
        IMGCLF_RUNTIME="torch",
        IMGCLF_ADMIN_TOKEN=TOKEN,
        IMGCLF_REGISTRY_POLL_SECONDS="1",
        IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}",
    )
    env.update(extra)  # fmt: skip
    return Server(env, tmp_path / "serve.log").start()


def classify(base: str) -> int:
    return httpx.post(base + "/classify", files={"image": ("x.png", IMAGE)}, timeout=60).status_code


def test_locked_registry_is_a_503_and_serving_goes_on(trained_model, tmp_path):
    server = serve(trained_model, tmp_path, IMGCLF_DATABASE_TIMEOUT_SECONDS="0.5")
    try:
        assert httpx.get(server.base + "/models", headers=AUTH).status_code == 200
        holder = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the database
        try:
            r = httpx.get(server.base + "/models", headers=AUTH, timeout=60)
            assert r.status_code == 503 and r.json()["reason"] == "registry_unavailable", r.text
            assert "database is locked" in r.json()["error"] and r.headers["Retry-After"]
            assert classify(server.base) == 200  # the watcher's polls fail too; the model keeps serving
            time.sleep(2)
            assert classify(server.base) == 200 and httpx.get(server.base + "/readyz").status_code == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert httpx.get(server.base + "/models", headers=AUTH).status_code == 200  # back by itself
    finally:
        server.stop()


def test_corrupted_model_is_refused_and_the_old_one_keeps_serving(trained_model, tmp_path):
    tag, result = trained_model
    bad = store.save_model(tag.split(":")[0], store.load_model(tag).model, architecture="scratch-cnn",
                           model_kwargs=store.get(tag).info.metadata["model_kwargs"], classes=result.report["classes"],
                           preprocessing=store.load_model(tag).preprocessing, metrics={}, config={},
                           fingerprint="x")  # fmt: skip
    weights = Path(bad.path) / store.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # damaged on disk
    server = serve(trained_model, tmp_path, IMGCLF_MODEL_TAG="")
    try:
        served = httpx.get(server.base + "/model").json()["tag"]
        r = httpx.post(server.base + "/models/promote", json={"tag": str(bad.tag)}, headers=AUTH)
        assert r.status_code == 404 and "damaged" in r.json()["error"], r.text
        # another replica (or a hand in the database) makes it champion anyway: workers refuse to swap
        Registry(f"sqlite:///{tmp_path / 'registry.db'}").promote(tag.split(":")[0], str(bad.tag), "forced")
        time.sleep(3)
        assert httpx.get(server.base + "/model").json()["tag"] == served and classify(server.base) == 200
        assert 'imgclf_model_reloads_total{result="failed"}' in httpx.get(server.base + "/metrics").text
    finally:
        server.stop()
        shutil.rmtree(bad.path, ignore_errors=True)


def test_killed_worker_is_respawned_under_load(trained_model, tmp_path):
    server = serve(trained_model, tmp_path, IMGCLF_WORKERS="2")
    statuses: Counter = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses[client.post("/classify", files={"image": ("x.png", IMAGE)}).status_code] += 1
                except httpx.HTTPError:
                    statuses["connection error"] += 1

    try:
        workers = server.worker_pids()
        assert len(workers) >= 2, workers
        pool = ThreadPoolExecutor(4)
        try:
            for _ in range(4):
                pool.submit(load)
            time.sleep(2)
            victim = workers[-1]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # a new worker process replaces it (BentoML's supervisor)
                now = server.worker_pids()
                if victim not in now and len(now) == len(workers):
                    break
                time.sleep(0.5)
            time.sleep(3)
        finally:
            stop.set()
            pool.shutdown(wait=True)
        assert victim not in now and len(now) == len(workers), (workers, now)
        lost = sum(n for k, n in statuses.items() if k != 200)
        assert statuses[200] > 50 and lost <= 4, statuses  # at most the requests in flight on the killed worker
        assert classify(server.base) == 200
    finally:
        stop.set()
        server.stop()


def test_a_failed_model_write_leaves_nothing_in_the_store(trained_model, monkeypatch):
    tag, result = trained_model
    name = "write-failure"
    stored = store.load_model(tag)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.save_model(name, stored.model, architecture="scratch-cnn", model_kwargs=stored.metadata["model_kwargs"],
                         classes=stored.classes, preprocessing=stored.preprocessing, metrics={}, config={},
                         fingerprint="x")  # fmt: skip
    assert store.list_versions(name) == [] and not store.exists(name)


def test_over_the_concurrency_limit_is_a_429_and_cors_is_off(trained_model, tmp_path):
    server = serve(trained_model, tmp_path, IMGCLF_MAX_CONCURRENCY="2")
    try:
        # A request holds a slot from the moment its whole body has arrived until it is answered (a slow upload
        # holds none: tests/test_hostile_clients.py). Batches of photo-sized images take tens of ms to decode,
        # and 12 clients send them at once: far more complete requests than the 2 slots at every moment.
        photo = encode(colour_image((40, 60, 220), 480, seed=3))
        files = [("images", (f"{i}.png", photo, "image/png")) for i in range(8)]

        def batch(_: int) -> httpx.Response:
            return httpx.post(server.base + "/classify_batch", files=files, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(batch, range(48)))
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) <= {200, 429} and statuses[200] and statuses[429], statuses
        limited = next(r for r in answers if r.status_code == 429)
        assert limited.headers["Retry-After"] and "in flight" in limited.json()["error"]
        assert classify(server.base) == 200  # a slot is free again
        asking = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        preflight = httpx.options(server.base + "/classify", headers=asking)
        assert "access-control-allow-origin" not in preflight.headers
        plain = httpx.post(server.base + "/classify", files={"image": ("x", IMAGE)}, headers={"Origin": "https://x"})
        assert "access-control-allow-origin" not in plain.headers
    finally:
        server.stop()


def test_no_outbound_connection_at_start_up_or_for_requests(trained_model, tmp_path):
    """strace every connect() of the server and its workers: loopback and local sockets only. And every file
    opened for writing: none under the home directory (ONNX Runtime, matplotlib and friends keep caches there
    unless told otherwise; a pod with a read-only root and no writable home must not depend on it)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (make setup installs it)")
    tag, _ = trained_model
    trace = tmp_path / "connect.trace"
    server = serve(trained_model, tmp_path, IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME="onnx")
    server.stop()  # restart the same set-up under strace
    home = tmp_path / "home"
    home.mkdir()
    env = dict(server.env, HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    env.pop("MPLCONFIGDIR", None)
    port = free_port()
    cmd = [strace, "-f", "-qq", "-e", "trace=connect,openat,mkdir,mkdirat", "-o", str(trace), sys.executable, "-m",
           "bentoml", "serve",
           "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert classify(base) == 200
        httpx.post(base + "/classify_json", json={"images": ["http://169.254.169.254/latest/meta-data/"]})
        httpx.get(base + "/model")
        httpx.get(base + "/metrics")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
    assert calls, "strace saw no connect() at all"
    outbound = [line for line in calls if not is_local(line)]
    assert not outbound, outbound[:5]
    writes = [line for line in trace.read_text().splitlines() if str(home) in line and
              ("mkdir" in line or re.search(r"O_(WRONLY|RDWR|CREAT)", line))]  # fmt: skip
    assert not writes, writes[:5]
    assert not any(home.iterdir()), sorted(home.rglob("*"))[:5]


def is_local(connect_line: str) -> bool:
    """A traced connect() to a Unix socket or a loopback address."""
    if "AF_INET6" in connect_line:
        return '"::1"' in connect_line or "::ffff:127." in connect_line
    if "AF_INET," in connect_line:
        return bool(re.search(r'inet_addr\("(127\.\d+\.\d+\.\d+|0\.0\.0\.0)"\)', connect_line))
    return True  # AF_UNIX, AF_NETLINK: local
