"""Job backends: the Kubernetes Job manifest, the local process lifecycle and the dead-job sweep."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import queued_job

from service.retraining.backends import KubernetesBackend, LocalBackend, describe_exit, proc_state, sweep
from service.retraining.registry import Registry
from service.settings import Settings


def test_kubernetes_manifest_is_the_template_with_the_job_filled_in(tmp_path):
    settings = Settings(model_name="m")
    backend = KubernetesBackend(settings, registry=None, api=object())
    body = backend.manifest(queued_job("abc123"))
    assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
    assert body["metadata"]["name"] == "imgclf-retrain-abc123"
    assert body["metadata"]["labels"]["imgclf/job-id"] == "abc123"
    pod = body["spec"]["template"]
    assert pod["metadata"]["labels"]["imgclf/job-id"] == "abc123"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "service.retraining.job"] and container["args"] == ["abc123"]
    assert {"name": "IMGCLF_JOB_ID", "value": "abc123"} in container["env"]
    assert pod["spec"]["restartPolicy"] == "Never" and body["spec"]["backoffLimit"] == 0
    assert backend.manifest(queued_job("other"))["spec"]["template"]["spec"]["containers"][0]["args"] == ["other"]


def test_sweep_fails_jobs_whose_process_is_gone(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    backend = LocalBackend(Settings(jobs_dir=tmp_path), registry)
    gone = registry.create_job("m", "local", {}, {})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    registry.start_job(gone.id, pid=proc.pid, host=backend.host)
    alive = registry.create_job("n", "local", {}, {})
    registry.start_job(alive.id, pid=1, host=backend.host)  # pid 1 runs, but not this job: a recycled pid
    elsewhere = registry.create_job("o", "local", {}, {})
    registry.start_job(elsewhere.id, pid=1, host="another-host")  # cannot tell; heartbeat is recent
    assert backend.alive(registry.job(gone.id)) is False
    assert set(sweep(registry, backend, stale_seconds=3600, grace=0)) == {gone.id, alive.id}
    assert registry.job(gone.id).status == "failed"
    assert "process is gone" in registry.job(gone.id).error
    assert registry.job(elsewhere.id).status == "running"
    assert sweep(registry, backend, stale_seconds=0, grace=0) == [elsewhere.id]  # silent too long


def test_a_killed_job_is_reported_by_its_reaper_not_as_gone(tmp_path):
    """A process that has exited but is not yet reaped (a zombie) is not "gone": its parent says how it ended."""
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    backend = LocalBackend(Settings(jobs_dir=tmp_path), registry)
    job = registry.create_job("m", "local", {}, {})
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(60)  # {job.id}"])
    registry.start_job(job.id, pid=proc.pid, host=backend.host)
    assert backend.alive(registry.job(job.id)) is True
    proc.kill()
    deadline = time.monotonic() + 10
    while proc_state(Path(f"/proc/{proc.pid}")) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.alive(registry.job(job.id)) is True  # a zombie: killed, not yet reaped
    assert sweep(registry, backend, stale_seconds=3600, grace=0) == []
    backend._reap(job.id, proc)
    assert registry.job(job.id).status == "failed" and "SIGKILL" in registry.job(job.id).error
    assert backend.alive(registry.job(job.id)) is False


def test_exit_codes_are_described():
    assert describe_exit(-9) == "killed by signal SIGKILL"
    assert describe_exit(1) == "exit status 1"


class FakeJobsAPI:
    """The three batch/v1 calls the backend makes, served over HTTP so the real client does the talking."""

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                api.calls.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.jobs[body["metadata"]["name"]] = body
                self._send(201, body)

            def do_GET(self):
                api.calls.append(("GET", self.path))
                name = self.path.split("/jobs/")[1].split("/")[0]
                if name not in api.jobs:
                    return self._send(404, {"kind": "Status", "code": 404})
                self._send(200, {**api.jobs[name], "status": api.jobs[name].get("status", {"active": 1})})

            def do_DELETE(self):
                api.calls.append(("DELETE", self.path))
                api.jobs.pop(self.path.split("/jobs/")[1].split("?")[0], None)
                self._send(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        from kubernetes import client

        cfg = client.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        api_client = client.ApiClient(cfg)
        return client.BatchV1Api(api_client), client.CoreV1Api(api_client)


def test_kubernetes_backend_creates_follows_and_deletes_jobs(tmp_path):
    fake = FakeJobsAPI()
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    backend = KubernetesBackend(Settings(k8s_namespace="ml"), registry, api=fake.client())
    job = registry.create_job("m", "kubernetes", {}, {})
    backend.submit(job)
    job = registry.job(job.id)
    assert job.external_id == f"imgclf-retrain-{job.id}"
    assert fake.calls[0] == ("POST", "/apis/batch/v1/namespaces/ml/jobs")
    assert fake.jobs[job.external_id]["spec"]["template"]["spec"]["containers"][0]["args"] == [job.id]
    assert backend.alive(job) is True
    fake.jobs[job.external_id]["status"] = {"failed": 1}
    assert backend.alive(job) is False  # the pod failed: the sweep will fail the job
    backend.cancel(job)
    assert fake.calls[-1][0] == "DELETE" and job.external_id not in fake.jobs
    assert backend.alive(job) is False  # gone
    fake.server.shutdown()
