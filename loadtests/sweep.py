"""Batching sweep: max_batch_size x max_latency_ms x workers x runtime, each under the same Locust load.

    python loadtests/sweep.py --model fashion-cnn --batch 8 32 --latency-ms 1 10 --workers 1 2 \\
        --runtime torch openvino-bf16 --users 32 --seconds 20                    # make sweep

Prints a table of throughput (images/s: single-image /classify requests) and p50/p95/p99 latency, writes
it as JSON (--out), and recommends the fastest setting whose p99 stays within --p99-budget-ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.server import Server  # noqa: E402
from loadtests.run import run_locust  # noqa: E402


def measure(model: str, batch: int, latency_ms: float, workers: int, runtime: str, users: int,
            seconds: float) -> dict:  # fmt: skip
    env = dict(IMGCLF_MODEL_NAME=model, IMGCLF_MAX_BATCH_SIZE=str(batch), IMGCLF_MAX_LATENCY_MS=str(latency_ms),
               IMGCLF_WORKERS=str(workers), IMGCLF_RUNTIME=runtime, IMGCLF_ACCESS_LOG="false")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="imgclf-sweep-"))
    server = Server(env, work / "serve.log").start(timeout=300)
    try:
        row = run_locust(server, users, seconds, work, mix="classify=1,batch=0,json=0,grpc=0,ops=0")["/classify"]
    finally:
        server.stop()
    return {"batch": batch, "latency_ms": latency_ms, "workers": workers, "runtime": runtime, "users": users,
            "img_per_s": float(row["Requests/s"]), "failures": int(row["Failure Count"]),
            "p50": float(row["50%"]), "p95": float(row["95%"]), "p99": float(row["99%"])}  # fmt: skip


def recommend(rows: list[dict], p99_budget_ms: float) -> dict | None:
    ok = [r for r in rows if r["failures"] == 0 and r["p99"] <= p99_budget_ms]
    return max(ok, key=lambda r: r["img_per_s"]) if ok else None


def table(rows: list[dict]) -> str:
    cols = f"{'runtime':<14} {'workers':>7} {'batch':>5} {'wait ms':>7} {'img/s':>8}"
    lines = [cols + f" {'p50':>6} {'p95':>6} {'p99':>6} {'fail':>5}"]
    for r in sorted(rows, key=lambda r: -r["img_per_s"]):
        left = f"{r['runtime']:<14} {r['workers']:>7} {r['batch']:>5} {r['latency_ms']:>7g} {r['img_per_s']:8.1f}"
        lines.append(left + f" {r['p50']:6.0f} {r['p95']:6.0f} {r['p99']:6.0f} {r['failures']:>5}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--latency-ms", type=float, nargs="+", default=[1, 10])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runtime", nargs="+", default=["torch", "auto"])
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--p99-budget-ms", type=float, default=500)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sweep.json")
    args = p.parse_args()
    rows = []
    for runtime, workers, batch, latency in itertools.product(args.runtime, args.workers, args.batch, args.latency_ms):
        rows.append(measure(args.model, batch, latency, workers, runtime, args.users, args.seconds))
        r = rows[-1]
        print(f"{runtime} workers={workers} batch={batch} wait={latency:g}ms: {r['img_per_s']:.1f} img/s, "
              f"p99 {r['p99']:.0f} ms, {r['failures']} failures", flush=True)  # fmt: skip
    print("\n" + table(rows))
    best = recommend(rows, args.p99_budget_ms)
    if best:
        print(f"\nrecommended on this machine (p99 <= {args.p99_budget_ms:g} ms): IMGCLF_RUNTIME={best['runtime']} "
              f"IMGCLF_WORKERS={best['workers']} IMGCLF_MAX_BATCH_SIZE={best['batch']} "
              f"IMGCLF_MAX_LATENCY_MS={best['latency_ms']:g}  ({best['img_per_s']:.0f} img/s)")  # fmt: skip
    else:
        print(f"\nno setting kept p99 within {args.p99_budget_ms:g} ms without failures at {args.users} users")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "rows": rows, "recommended": best}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
