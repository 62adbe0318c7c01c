"""Soak: a long run at 80% of the measured capacity; memory sampled; a retrain, a promotion and a rollout.

    python loadtests/soak.py --model fashion-cnn --minutes 10 --retrain-data colours    # make soak

1. Capacity: Locust classify users as fast as answers come, for --probe-seconds.
2. The soak: users at a fixed rate adding up to --load (0.8) of that, for --minutes, while the workers'
   resident memory is sampled every --sample-seconds.
3. Halfway, unless --no-retrain: POST /retrain with --retrain (JSON), wait for it and for its rollout (shadow,
   canary, champion: under the soak's load), promote the result by hand if the gate refused it or a guard
   aborted it (the soak is about serving through a swap) and wait until every worker serves it.
   Before it, at a fifth of the run, unless --no-rollout: a copy of the champion goes through shadow, canary and
   champion (loadtests/rollout.py); the soak fails unless it is promoted. The store's champion is restored.
Passes when no request failed, the rollout was promoted, and memory grew by at most --max-growth (10%): the
median of the last fifth of the samples against the median of the second fifth (the first is warm-up). Writes
JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.server import Server, rss_bytes, served_models  # noqa: E402
from loadtests.rollout import QUICK_PLAN, describe, restore, roll_out, wait_ended  # noqa: E402
from loadtests.run import run_locust, summary  # noqa: E402

CLASSIFY_ONLY = "classify=1,batch=0,json=0,grpc=0,ops=0"
# The retrained challenger's way to champion under the soak's load (a production plan waits longer).
SOAK_PLAN = {"stages": ["shadow", "canary"], "shadow": {"fraction": 0.25, "min_requests": 500, "min_minutes": 1},
             "canary": {"fraction": 0.1, "min_requests": 300, "min_minutes": 1}}  # fmt: skip


def growth(samples: list[tuple[float, int]]) -> float:
    values = [v for _, v in samples]
    fifth = max(1, len(values) // 5)
    early = statistics.median(values[fifth : 2 * fifth])
    late = statistics.median(values[-fifth:])
    return late / early - 1


def retrain_midway(server: Server, token: str, request: dict, at: float, log: dict) -> None:
    time.sleep(at)
    auth = {"Authorization": f"Bearer {token}"}
    before = httpx.get(server.base + "/model").json()["tag"]
    job = httpx.post(server.base + "/retrain", json=request, headers=auth, timeout=30).json()
    log["job"] = job
    for _ in range(600):
        status = httpx.get(f"{server.base}/jobs/{job['job_id']}", headers=auth).json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(1)
    log["status"], log["decision"] = status["status"], (status.get("decision") or {}).get("reason")
    tag = status.get("result_tag")
    rollout_id = (status.get("decision") or {}).get("rollout_id")
    if rollout_id:  # the gate passed it to a rollout: shadow, then canary, then champion, under the soak's load
        ended = wait_ended(server, token, rollout_id, timeout=900) or {"status": "still active", "history": []}
        log["rollout"] = {"status": ended["status"], "decisions": [h["reason"] for h in ended["history"]]}
    if status["status"] == "succeeded":
        if not status["decision"]["promoted"] and log.get("rollout", {}).get("status") != "promoted":
            promote = {"tag": tag, "reason": "soak: promote through the swap"}
            log["manual_promotion"] = httpx.post(
                server.base + "/models/promote", json=promote, headers=auth
            ).status_code
        for _ in range(120):
            if set(served_models(httpx.get(server.base + "/metrics").text).values()) == {tag}:
                log["promoted_at"] = time.time()
                break
            time.sleep(1)
    log["before"], log["after"] = before, httpx.get(server.base + "/model").json()["tag"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--load", type=float, default=0.8, help="share of the measured capacity")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--probe-seconds", type=float, default=30)
    p.add_argument("--sample-seconds", type=float, default=10)
    p.add_argument("--max-growth", type=float, default=0.10)
    p.add_argument(
        "--retrain",
        type=json.loads,
        help="POST /retrain body for the mid-run retrain",
        default={
            "data": "fashion-mnist",
            "epochs": 1,
            "overrides": {"data.limit_per_class": 300},
            "rollout": SOAK_PLAN,
        },
    )
    p.add_argument("--no-retrain", action="store_true")
    p.add_argument("--no-rollout", action="store_true", help="no rollout of a copy at three quarters of the run")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "soak.json")
    args = p.parse_args()

    token = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="imgclf-soak-"))
    env = dict(IMGCLF_MODEL_NAME=args.model, IMGCLF_WORKERS=str(args.workers), IMGCLF_ADMIN_TOKEN=token,
               IMGCLF_DATA_ROOTS=f'["{args.data_root.resolve()}"]', IMGCLF_ACCESS_LOG="false",
               IMGCLF_REGISTRY_POLL_SECONDS="2")  # fmt: skip
    server = Server(env, work / "serve.log").start(timeout=300)
    result: dict = {"model": args.model, "minutes": args.minutes, "workers": args.workers}
    try:
        probe = run_locust(server, args.users, args.probe_seconds, work / "probe", CLASSIFY_ONLY)["Aggregated"]
        capacity = float(probe["Requests/s"])
        rate = capacity * args.load
        result |= {"capacity_img_per_s": capacity, "target_img_per_s": rate}
        print(f"capacity {capacity:.1f} img/s; soaking at {rate:.1f} img/s for {args.minutes:g} min", flush=True)

        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(args.sample_seconds):
                samples.append((time.time(), rss_bytes(server.worker_pids())))

        retrain_log: dict = {}
        rollout_log: dict = {}
        threads = [threading.Thread(target=sample, daemon=True)]
        if not args.no_retrain:
            midway = (server, token, args.retrain, args.minutes * 30, retrain_log)
            threads.append(threading.Thread(target=retrain_midway, args=midway, daemon=True))
        early = {"after": args.minutes * 12, "timeout": args.minutes * 15, "plan": QUICK_PLAN}
        if not args.no_rollout:  # at a fifth: a copy of the champion, through every stage, before the retrain
            threads.append(threading.Thread(target=roll_out, args=(server, token, rollout_log), kwargs=early,
                                            daemon=True))  # fmt: skip
        for t in threads:
            t.start()
        rows = run_locust(server, args.users, args.minutes * 60, work / "soak", CLASSIFY_ONLY,
                          {"LOAD_RATE": f"{rate / args.users:.4f}"})  # fmt: skip
        stop.set()
        for t in threads:
            t.join(timeout=900)
        swapped = (
            retrain_log.get("manual_promotion") == 200 or retrain_log.get("rollout", {}).get("status") == "promoted"
        )
        if swapped:  # leave the store's champion as it was found
            retrain_log["rollback"] = httpx.post(
                server.base + "/models/rollback", json={"reason": "soak: restore the champion it replaced"},
                headers={"Authorization": f"Bearer {token}"}, timeout=30,
            ).status_code  # fmt: skip
        restore(server, token, rollout_log)  # after the retrain's: the champion stack unwinds in order
    finally:
        server.stop()
    total = rows["Aggregated"]
    result |= {"requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
               "achieved_img_per_s": float(total["Requests/s"]), "p50": total["50%"], "p99": total["99%"],
               "rss_samples": samples, "rss_growth": growth(samples) if len(samples) >= 5 else None,
               "retrain": retrain_log, "rollout": rollout_log}  # fmt: skip
    print(summary(rows))
    rss = [v / 2**20 for _, v in samples]
    if rss:
        print(
            f"worker RSS: first {rss[0]:.0f} MiB, min {min(rss):.0f}, max {max(rss):.0f}, last {rss[-1]:.0f}; "
            f"growth {result['rss_growth'] * 100 if result['rss_growth'] is not None else float('nan'):+.1f}%"
        )
    if retrain_log:
        print(f"mid-run retrain: {retrain_log.get('status')}, {retrain_log.get('before')} -> {retrain_log.get('after')}"
              f" ({retrain_log.get('decision')}); rolled back after the soak: "
              f"{retrain_log.get('rollback', 'no')}")  # fmt: skip
        for line in retrain_log.get("rollout", {}).get("decisions", []):
            print(f"  rollout: {line}")
    if rollout_log:
        print(describe(rollout_log, "rollout of a copy at a fifth"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    ok = result["failures"] == 0 and result["requests"] > 0 and (result["rss_growth"] or 0) <= args.max_growth
    ok = ok and (args.no_rollout or rollout_log.get("status") == "promoted")
    print(("PASS" if ok else "FAIL") + f": {result['failures']} failed of {result['requests']}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
