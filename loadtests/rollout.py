"""A full rollout under load: an exact copy of the served model (so the guards have nothing to object to) goes
shadow -> canary -> champion while the load runs; afterwards the champion it replaced is restored and the copy
deleted, leaving the store as it was found. Used by ``run.py --rollout`` and the soak."""

from __future__ import annotations

import itertools
import time

import httpx

from harness.server import Server, served_models
from harness.variants import variant

# Short stages for a run of a minute or two; a real plan (IMGCLF_ROLLOUT) waits longer.
QUICK_PLAN = {"stages": ["shadow", "canary"],
              "shadow": {"fraction": 0.5, "min_requests": 100, "min_minutes": 0.1},
              "canary": {"fraction": 0.2, "min_requests": 60, "min_minutes": 0.1},
              # a copy of the champion: the smoke checks the rollout's mechanics, not its speed; on two shared cores
              # a few slow batches moved a 60-request canary p99 to 3.8 x the champion's (CI, 2026-12-01)
              "guards": {"min_requests": 50, "max_latency_ratio": 10.0}}  # fmt: skip


def roll_out(server: Server, token: str, log: dict, plan: dict | None = None, after: float = 0,
             timeout: float = 600) -> dict:  # fmt: skip
    """After ``after`` seconds, roll a copy of the served model out and wait for the rollout to end and every
    worker to serve the result; ``log`` gets the rollout's decisions, its stages' seconds and the outcome."""
    time.sleep(after)
    auth = {"Authorization": f"Bearer {token}"}
    champion = httpx.get(server.base + "/model").json()["tag"]
    copy = variant(champion)
    body = {"tag": copy, "reason": "load test: a full rollout under load", "plan": plan or QUICK_PLAN}
    started = httpx.post(server.base + "/rollout", json=body, headers=auth, timeout=30)
    log |= {"champion": champion, "challenger": copy, "start_status": started.status_code}
    if started.status_code != 201:
        log["error"] = started.text
        return log
    deadline = time.monotonic() + timeout
    ended = wait_ended(server, token, started.json()["id"], timeout)
    if ended is None:
        log["status"] = "still active"
        return log
    history = ended["history"]
    decisions = [f"{h['action']} {h['stage'] or ''}: {h['reason']}" for h in history]
    stage_seconds = {h["stage"]: round(_seconds(h["at"], n["at"]), 1) for h, n in itertools.pairwise(history)}
    log |= {"status": ended["status"], "decisions": decisions, "stage_seconds": stage_seconds}
    if ended["status"] == "promoted":
        while time.monotonic() < deadline and _served(server) != {copy}:
            time.sleep(0.5)
        log["every_worker_serves_it"] = _served(server) == {copy}
    return log


def wait_ended(server: Server, token: str, rollout_id: int, timeout: float) -> dict | None:
    """The rollout once it has ended (promoted or aborted), or None if it is still active after ``timeout``."""
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = httpx.get(server.base + "/rollout", headers=auth, timeout=30).json()["recent"]
        ended = next((r for r in recent if r["id"] == rollout_id and r["status"] != "active"), None)
        if ended is not None:
            return ended
        time.sleep(1)
    return None


def describe(log: dict, what: str) -> str:
    """The rollout's outcome and its decisions, for a load test's summary."""
    lines = [f"{what}: {log.get('status')}; stage seconds {log.get('stage_seconds')}; every worker serves it: "
             f"{log.get('every_worker_serves_it')}"]  # fmt: skip
    return "\n".join(lines + [f"  {line}" for line in log.get("decisions", [])])


def _served(server: Server) -> set[str]:
    return set(served_models(httpx.get(server.base + "/metrics").text).values())


def restore(server: Server, token: str, log: dict) -> None:
    """Undo :func:`roll_out`: the champion it replaced serves again, and the copy leaves the store."""
    auth = {"Authorization": f"Bearer {token}"}
    if log.get("status") == "promoted":
        reason = {"reason": "load test: restore the champion the rollout replaced"}
        log["rollback"] = httpx.post(
            server.base + "/models/rollback", json=reason, headers=auth, timeout=30
        ).status_code
    if log.get("challenger"):
        import bentoml

        try:
            bentoml.models.delete(log["challenger"])
        except Exception as exc:  # noqa: BLE001 - a copy left behind is harmless
            log["delete_error"] = str(exc)


def _seconds(a: str, b: str) -> float:
    import datetime as dt

    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()
