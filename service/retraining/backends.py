"""Where training jobs run: a local low-priority process, or a Kubernetes ``batch/v1`` Job.

Both start ``python -m service.retraining.job JOB_ID``, which records its own progress and end in the
registry. The backend starts, cancels, tells whether the job's process is still there, and reads
its log; :func:`sweep` fails jobs whose process has gone without saying how it ended.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import yaml

from service.retraining.records import Job
from service.retraining.registry import Registry, now
from service.settings import Settings
from training._env import REPO_ROOT

log = logging.getLogger(__name__)
JOB_COMMAND = [sys.executable, "-m", "service.retraining.job"]


class Backend(Protocol):
    name: str

    def submit(self, job: Job) -> None: ...
    def cancel(self, job: Job) -> None: ...
    def alive(self, job: Job) -> bool | None: ...  # None: cannot tell from here
    def log_tail(self, job: Job, lines: int = 40) -> list[str]: ...


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def proc_state(proc: Path) -> str:
    """The one-letter state of a process from ``/proc/PID/stat`` (R, S, D, Z, ...)."""
    stat = (proc / "stat").read_text()
    return stat[stat.rindex(")") + 2]  # the command name in parentheses may itself hold spaces or ")"


class LocalBackend:
    """A child process per job, in its own session (a service restart does not kill it), niced."""

    name = "local"

    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.host = socket.gethostname()

    def submit(self, job: Job) -> None:
        job_dir = self.settings.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        log_path = job_dir / "job.log"
        threads = str(self.settings.retrain_threads)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1",
                   IMGCLF_JOB_ID=job.id)  # fmt: skip
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the service reports jobs from the registry, not the child
        with log_path.open("ab") as out:
            proc = subprocess.Popen([*JOB_COMMAND, job.id], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    cwd=REPO_ROOT)  # fmt: skip
        self.registry.update_job(job.id, pid=proc.pid, host=self.host, log_path=str(log_path))
        threading.Thread(target=self._reap, args=(job.id, proc), daemon=True, name=f"reap-{job.id}").start()
        log.info("job %s started as process %d (log %s)", job.id, proc.pid, log_path)

    def _reap(self, job_id: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if self.registry.finish_job(job_id, "failed", error=f"training process {proc.pid} ended without "
                                                            f"finishing the job ({describe_exit(code)})"):  # fmt: skip
            log.error("job %s: process %d %s", job_id, proc.pid, describe_exit(code))

    def cancel(self, job: Job) -> None:
        if job.pid and job.host == self.host and self.alive(job):
            os.kill(job.pid, signal.SIGTERM)

    def alive(self, job: Job) -> bool | None:
        if not job.pid:
            return None
        if job.host != self.host:
            return None
        proc = Path(f"/proc/{job.pid}")
        try:
            if proc_state(proc) == "Z":
                # exited, but the worker that started it has yet to collect its exit status: that worker's
                # reaper says how it ended (a zombie's cmdline reads empty, so it must not count as gone)
                return True
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        return job.id.encode() in cmdline  # not a recycled pid

    def log_tail(self, job: Job, lines: int = 40) -> list[str]:
        path = job.log_path
        if not path or not Path(path).is_file():
            return []
        with open(path, errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]


class KubernetesBackend:
    """A ``batch/v1`` Job per training job, made from ``k8s/base/retrain-job.yaml``."""

    name = "kubernetes"

    def __init__(self, settings: Settings, registry: Registry, api: Any = None):
        self.settings = settings
        self.registry = registry
        self.template = yaml.safe_load(settings.k8s_job_template.read_text())
        self._api = api

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = (client.BatchV1Api(), client.CoreV1Api())
        return self._api

    def manifest(self, job: Job) -> dict[str, Any]:
        """The Job object for ``job``: the template with its name, labels and command filled in."""
        body = copy.deepcopy(self.template)
        name = f"imgclf-retrain-{job.id}"
        body["metadata"]["name"] = name
        labels = {"app.kubernetes.io/name": "imgclf", "app.kubernetes.io/component": "retrain",
                  "imgclf/job-id": job.id}  # fmt: skip
        body["metadata"].setdefault("labels", {}).update(labels)
        pod = body["spec"]["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        container = pod["spec"]["containers"][0]
        container["args"] = [*container.get("args", []), job.id]
        container.setdefault("env", []).append({"name": "IMGCLF_JOB_ID", "value": job.id})
        return body

    def submit(self, job: Job) -> None:
        body = self.manifest(job)
        self.api[0].create_namespaced_job(self.settings.k8s_namespace, body)
        self.registry.update_job(job.id, external_id=body["metadata"]["name"])

    def cancel(self, job: Job) -> None:
        if job.external_id:
            self.api[0].delete_namespaced_job(job.external_id, self.settings.k8s_namespace,
                                              propagation_policy="Background")  # fmt: skip

    def alive(self, job: Job) -> bool | None:
        if not job.external_id:
            return None
        from kubernetes.client.exceptions import ApiException

        try:
            status = self.api[0].read_namespaced_job_status(job.external_id, self.settings.k8s_namespace).status
        except ApiException as exc:
            return False if exc.status == 404 else None
        return not (status.failed and not status.active) and not status.succeeded

    def log_tail(self, job: Job, lines: int = 40) -> list[str]:
        if not job.external_id:
            return []
        core = self.api[1]
        pods = core.list_namespaced_pod(self.settings.k8s_namespace, label_selector=f"imgclf/job-id={job.id}")
        if not pods.items:
            return []
        text = core.read_namespaced_pod_log(pods.items[-1].metadata.name, self.settings.k8s_namespace,
                                            tail_lines=lines)  # fmt: skip
        return text.splitlines()


def make_backend(settings: Settings, registry: Registry) -> Backend:
    return (
        KubernetesBackend(settings, registry)
        if settings.retrain_backend == "kubernetes"
        else LocalBackend(settings, registry)
    )


def sweep(registry: Registry, backend: Backend, stale_seconds: float, grace: float = 1.0) -> list[str]:
    """Fail active jobs whose process is gone (or silent for ``stale_seconds``); returns their ids.

    A job whose process has just gone is failed only after ``grace`` seconds: the worker that started
    it may be about to record how it ended (exit status or signal), which says more than "gone".
    """
    failed, gone = [], []
    for job in registry.jobs(limit=200):
        if not job.active:
            continue
        alive = backend.alive(job)
        reason = None
        if alive is False:
            gone.append(job.id)
        elif alive is None:
            last = dt.datetime.fromisoformat(job.heartbeat_at or job.created_at)
            if (now() - last).total_seconds() > stale_seconds:
                reason = f"no sign of life for over {stale_seconds:.0f} s"
        if reason and _fail(registry, job.id, reason):
            failed.append(job.id)
    if gone:
        time.sleep(grace)
        reason = "its training process is gone (killed, crashed, or lost with a restart)"
        failed += [job_id for job_id in gone if _fail(registry, job_id, reason)]
    return failed


def _fail(registry: Registry, job_id: str, reason: str) -> bool:
    """Fail an active job; False when it has ended meanwhile (its own record of how wins)."""
    if registry.finish_job(job_id, "failed", error=f"job failed: {reason}"):
        log.error("job %s failed: %s", job_id, reason)
        return True
    return False
