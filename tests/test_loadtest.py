"""CI's load smoke test: `loadtests/run.py --check --rollout` for a few seconds with every user class and a full
rollout under that load; zero failures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from harness.server import ROOT

pytestmark = pytest.mark.slow


def test_load_smoke_every_user_class_zero_failures(trained_model, tmp_path):
    tag, _ = trained_model
    out = tmp_path / "loadtest"
    cmd = [sys.executable, str(ROOT / "loadtests" / "run.py"), "--model", tag.split(":")[0], "--users", "10",
           "--seconds", "40", "--workers", "2", "--out", str(out), "--check", "--rollout"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(out / "stats_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    seen = {name for name, r in rows.items() if int(r["Request Count"]) > 0}
    assert {"/classify", "/classify_batch", "/classify_json", "ModelInfer", "/model", "/metrics"} <= seen, seen
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert (out / "report.html").stat().st_size > 10_000
    rollout = json.loads((out / "rollout.json").read_text())  # shadow -> canary -> champion under that load
    assert rollout["status"] == "promoted" and rollout["every_worker_serves_it"], rollout
    assert list(rollout["stage_seconds"]) == ["shadow", "canary"] and rollout["rollback"] == 200
    print("\n".join(rollout["decisions"]))
