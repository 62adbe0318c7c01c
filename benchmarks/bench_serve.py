"""Serving benchmark: in-process ceiling vs HTTP end to end, best runtime vs the eager-torch baseline.

    python benchmarks/bench_serve.py --model fashion-cnn --model imagenet-lite0 [--seconds 15]

For each model: (1) the in-process ceiling: decode + preprocess + the chosen runtime in a tight loop
(preprocessing on a thread a core); (2) `bentoml serve` with the best runtime, driven
over HTTP at concurrency 1, 8 and 32 (images/s, p50/p95/p99 ms); (3) the same with IMGCLF_RUNTIME=torch.
The load generator is wrk (Debian's package; `make bench` installs it) when present, else an httpx client;
either shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = ROOT / "loadtests" / "wrk_classify.lua"
sys.path.insert(0, str(ROOT))

from loadtests.server import Server  # noqa: E402
from service.inference import load_classifier  # noqa: E402
from service.serving import resolve_tag  # noqa: E402
from service.settings import Settings  # noqa: E402


def sample_images(channels: int, size: int, n: int = 64) -> list[bytes]:
    """JPEG photos-like images at the model's scale (a smooth random field, so JPEG has work to do)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        (img.convert("L") if channels == 1 else img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def in_process(tag: str, runtime: str, images: list[bytes], batch: int, seconds: float) -> float:
    model = tag.split(":")[0]
    clf = load_classifier(tag, Settings(model_name=model, runtime=runtime, max_batch_size=batch))
    pool = ThreadPoolExecutor(os.cpu_count() or 1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        xs = list(pool.map(clf.preprocess, images[:batch]))
        clf.infer(np.stack(xs))
        n += len(xs)
    return n / (time.perf_counter() - start)


def start_server(tag: str, runtime: str, batch: int, latency_ms: float, workers: int, log: Path) -> Server:
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME=runtime,
               IMGCLF_MAX_BATCH_SIZE=str(batch), IMGCLF_MAX_LATENCY_MS=str(latency_ms), IMGCLF_ACCESS_LOG="false",
               IMGCLF_WORKERS=str(workers))  # fmt: skip
    return Server(env, log).start(timeout=300)


def drive_wrk(base: str, image: bytes, concurrency: int, seconds: float) -> dict:
    """wrk (C, one thread) as the load generator: it leaves the cores to the server."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as fh:
        fh.write(image)
        fh.flush()
        env = dict(os.environ, WRK_IMAGE=fh.name)
        subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(WRK_SCRIPT), base + "/classify"], env=env,
                       capture_output=True, check=True)  # warm-up  # fmt: skip
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "30s", "-s",
                              str(WRK_SCRIPT), base + "/classify"], env=env, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    r = json.loads(line.removeprefix("WRK_JSON "))
    return {"img_per_s": (r["requests"] - r["errors"]) / (r["duration_us"] / 1e6), "p50": r["p50"],
            "p95": r["p95"], "p99": r["p99"], "errors": r["errors"]}  # fmt: skip


async def drive(base: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def user(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await client.post(base + "/classify", content=images[i % len(images)],
                                  headers={"Content-Type": "image/jpeg"})  # fmt: skip
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await user(client, 0)  # warm-up request
        latencies.clear()
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(user(client, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [float("nan")] * 99
    return {"img_per_s": len(latencies) / elapsed, "p50": q[49] * 1e3, "p95": q[94] * 1e3, "p99": q[98] * 1e3,
            "errors": errors}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="store name(s) to benchmark (default fashion-cnn)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-ms", type=float, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server workers (default: one a core)")
    args = p.parse_args()
    for model in args.model or ["fashion-cnn"]:
        settings = Settings(model_name=model, runtime="auto", max_batch_size=args.batch)
        tag = resolve_tag(settings)  # the champion: what a server serves (and is pinned below)
        clf = load_classifier(tag, settings)
        best = clf.runtime.name
        pp = clf.stored.preprocessing
        images = sample_images(pp.channels, max(pp.input_size, 64) if pp.input_size < 64 else pp.resize_size)
        print(f"\n== {clf.tag}: {clf.stored.metadata['architecture']} at {pp.input_size} px; auto chose {best} ==")
        print("runtime candidates:", {k: v.get("img_per_s", v.get("refused")) for k, v in
                                      clf.runtime_report["candidates"].items()})  # fmt: skip
        del clf
        ceiling = in_process(tag, best, images, args.batch, args.seconds)
        eager_ceiling = in_process(tag, "torch", images, args.batch, args.seconds)
        print(f"in-process ceiling ({best}): {ceiling:8.1f} img/s   eager torch: {eager_ceiling:8.1f} img/s")
        rows = {}
        for runtime in (best, "torch"):
            log = Path(tempfile.mkdtemp()) / "serve.log"
            server = start_server(tag, runtime, args.batch, args.latency_ms, args.workers, log)
            base = server.base
            try:
                for c in args.concurrency:
                    if shutil.which("wrk"):
                        rows[(runtime, c)] = drive_wrk(base, images[0], c, args.seconds)
                    else:
                        rows[(runtime, c)] = asyncio.run(drive(base, images, c, args.seconds))
            finally:
                server.stop()
        print(
            f"HTTP: {args.workers} worker(s), one image per request (p99 from wrk includes its correction for "
            "coordinated omission)"
        )
        print(f"{'runtime':<14} {'conc':>4} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for (runtime, c), r in rows.items():
            print(f"{runtime:<14} {c:>4} {r['img_per_s']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
                  f"{r['errors']:>6}")  # fmt: skip
        top = max(r["img_per_s"] for (rt, _), r in rows.items() if rt == best)
        eager = max(r["img_per_s"] for (rt, _), r in rows.items() if rt == "torch")
        print(f"HTTP best / in-process ceiling: {top / ceiling:.2f} (target >= 0.8)")
        print(f"HTTP best / HTTP eager baseline: {top / eager:.2f} (target >= 6)")


if __name__ == "__main__":
    main()
