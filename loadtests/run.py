"""Run Locust headless against a local service it starts, for a bounded time; write CSV and HTML; stop all.

    python loadtests/run.py --model fashion-cnn --users 16 --seconds 60       # make loadtest
    python loadtests/run.py --seconds 15 --check                              # smoke: exit 1 on any failure
    python loadtests/run.py --seconds 60 --rollout --check                    # and a full rollout under load

Output in --out (default runs/loadtest/): stats CSVs, report.html, serve.log. The service gets its own ports,
an admin token and a data root, so the ops user's occasional retrain (--retrain-data) works too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.server import Server  # noqa: E402
from loadtests.rollout import describe, restore, roll_out  # noqa: E402

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def run_locust(server: Server, users: int, seconds: float, out: Path, mix: str | None = None,
               extra_env: dict[str, str] | None = None) -> dict[str, dict]:  # fmt: skip
    """Locust against ``server``; returns its stats rows by name ("Aggregated" included)."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GRPC_TARGET=f"127.0.0.1:{server.grpc_port}", **(extra_env or {}))
    if mix is not None:
        env["LOAD_MIX"] = mix
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server.base, "--headless",
           "-u", str(users), "-r", str(max(1, users)), "-t", f"{seconds:.0f}s", "--csv", str(out / "stats"),
           "--html", str(out / "report.html"), "--only-summary", "--stop-timeout", "10"]  # fmt: skip
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=seconds + 120)
    (out / "locust.log").write_text(done.stdout + done.stderr)
    with open(out / "stats_stats.csv") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def summary(rows: dict[str, dict]) -> str:
    lines = [f"{'name':<28} {'requests':>9} {'failures':>8} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)"]
    for name, r in rows.items():
        lines.append(f"{name[:28]:<28} {r['Request Count']:>9} {r['Failure Count']:>8} {float(r['Requests/s']):8.1f} "
                     f"{r['50%']:>6} {r['95%']:>6} {r['99%']:>6}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn", help="store name to serve")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mix", help='LOAD_MIX, e.g. "classify=6,batch=2,json=1,grpc=3,ops=1"')
    p.add_argument("--retrain-data", help="a dataset under --data-root for the ops user's occasional retrain")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "loadtest")
    p.add_argument("--check", action="store_true", help="exit 1 when any request failed (or --rollout was not "
                   "promoted)")  # fmt: skip
    p.add_argument("--rollout", action="store_true", help="roll a copy of the served model out (shadow, canary, "
                   "champion) while the load runs, then restore the champion")  # fmt: skip
    args = p.parse_args()

    token = secrets.token_hex(16)
    env = dict(IMGCLF_MODEL_NAME=args.model, IMGCLF_WORKERS=str(args.workers), IMGCLF_ADMIN_TOKEN=token,
               IMGCLF_DATA_ROOTS=f'["{args.data_root.resolve()}"]', IMGCLF_ACCESS_LOG="false",
               IMGCLF_REGISTRY_POLL_SECONDS="1" if args.rollout else "5")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(env, args.out / "serve.log").start(timeout=300)
    rollout: dict = {}
    try:
        extra = {"ADMIN_TOKEN": token, **({"RETRAIN_DATA": args.retrain_data} if args.retrain_data else {})}
        within = {"after": 2, "timeout": max(1.0, args.seconds - 4)}  # ends while the load runs, or says so
        thread = threading.Thread(target=roll_out, args=(server, token, rollout), kwargs=within, daemon=True)
        if args.rollout:
            thread.start()
        rows = run_locust(server, args.users, args.seconds, args.out, args.mix, extra)
        if args.rollout:
            thread.join(timeout=60)
            restore(server, token, rollout)
    finally:
        server.stop()
    print(summary(rows))
    if rollout:
        print(describe(rollout, f"rollout of {rollout.get('challenger')}"))
        (args.out / "rollout.json").write_text(json.dumps(rollout, indent=2))
    print(f"CSV and HTML in {args.out}")
    failures = int(rows["Aggregated"]["Failure Count"])
    if args.check and (failures or int(rows["Aggregated"]["Request Count"]) == 0):
        print(f"FAILED: {failures} failed requests", file=sys.stderr)
        return 1
    if args.check and args.rollout and rollout.get("status") != "promoted":
        print(f"FAILED: the rollout under load ended {rollout.get('status')}: {rollout}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
