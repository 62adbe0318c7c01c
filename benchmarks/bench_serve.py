"""Serving benchmark: in-process ceiling vs HTTP end to end, best runtime vs the eager-torch baseline.

    python benchmarks/bench_serve.py --model fashion-cnn --model imagenet-lite0 [--seconds 15]

For each model: (1) the in-process ceiling: decode + preprocess + the chosen runtime in a tight loop, in one
process a core (what the server's workers could do with no HTTP at all); (2) `bentoml serve` with the best
runtime, driven over HTTP at concurrency 1, 8 and 32 with one image a request (images/s, p50/p95/p99 ms), and
with 16 images a request to /classify_batch (a client that batches pays the per-request cost once); (3) the same
with IMGCLF_RUNTIME=torch.
The load generator is wrk (Debian's package; `make bench` installs it) when present, else an httpx client;
either shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = ROOT / "loadtests" / "wrk_classify.lua"
sys.path.insert(0, str(ROOT))

from harness.ceiling import in_process, sample_images  # noqa: E402
from harness.server import Server  # noqa: E402
from service.inference import build_classifier  # noqa: E402
from service.serving import resolve_tag  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.store import load_model  # noqa: E402


def start_server(tag: str, runtime: str, batch: int, latency_ms: float, workers: int, log: Path) -> Server:
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME=runtime,
               IMGCLF_MAX_BATCH_SIZE=str(batch), IMGCLF_MAX_LATENCY_MS=str(latency_ms), IMGCLF_ACCESS_LOG="false",
               IMGCLF_WORKERS=str(workers))  # fmt: skip
    return Server(env, log).start(timeout=300)


@dataclass
class Load:
    """One request the load generator repeats: where it goes, its body, and how many images it carries."""

    path: str
    body: bytes
    content_type: str
    images: int = 1

    @classmethod
    def single(cls, image: bytes) -> Load:
        return cls("/classify", image, "image/jpeg")

    @classmethod
    def batch(cls, images: list[bytes]) -> Load:
        """``/classify_batch`` with the images as repeated multipart ``images`` fields (encoded by httpx)."""
        files = [("images", (f"{k}.jpg", img, "image/jpeg")) for k, img in enumerate(images)]
        request = httpx.Request("POST", "http://bench/classify_batch", files=files)
        return cls("/classify_batch", request.read(), request.headers["Content-Type"], len(images))


def drive_wrk(base: str, load: Load, concurrency: int, seconds: float, warmup: bool = True) -> dict:
    """wrk (C, one thread) as the load generator: it leaves the cores to the server. ``warmup``: a second at
    concurrency 1 first, not counted."""
    with tempfile.NamedTemporaryFile(suffix=".body") as fh:
        fh.write(load.body)
        fh.flush()
        env = dict(os.environ, WRK_IMAGE=fh.name, WRK_CONTENT_TYPE=load.content_type)
        url = base + load.path
        if warmup:
            subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(WRK_SCRIPT), url], env=env, capture_output=True,
                           check=True)  # fmt: skip
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "30s", "-s",
                              str(WRK_SCRIPT), url], env=env, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    r = json.loads(line.removeprefix("WRK_JSON "))
    return {"img_per_s": (r["requests"] - r["errors"]) * load.images / (r["duration_us"] / 1e6), "p50": r["p50"],
            "p95": r["p95"], "p99": r["p99"], "errors": r["errors"], "requests": r["requests"]}  # fmt: skip


async def drive(base: str, load: Load, concurrency: int, seconds: float) -> dict:
    """The fallback load generator where wrk is missing (a Python client: it takes cores from the server)."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await client.post(base + load.path, content=load.body, headers={"Content-Type": load.content_type})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await user(client)  # warm-up request
        latencies.clear()
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [float("nan")] * 99
    return {"img_per_s": len(latencies) * load.images / elapsed, "p50": q[49] * 1e3, "p95": q[94] * 1e3,
            "p99": q[98] * 1e3, "errors": errors, "requests": len(latencies) + errors}  # fmt: skip


def measure(base: str, load: Load, concurrency: int, seconds: float, warmup: bool = True) -> dict:
    if shutil.which("wrk"):
        return drive_wrk(base, load, concurrency, seconds, warmup)
    return asyncio.run(drive(base, load, concurrency, seconds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="store name(s) to benchmark (default fashion-cnn)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-ms", type=float, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch-images", type=int, default=16,
                   help="also send this many images a request to /classify_batch (0: no)")  # fmt: skip
    p.add_argument("--batch-concurrency", type=int, default=4,
                   help="concurrency of the /classify_batch load (4 x 16 images in flight)")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server workers (default: one a core)")
    args = p.parse_args()
    for model in args.model or ["fashion-cnn"]:
        settings = Settings(model_name=model, runtime="auto", max_batch_size=args.batch)
        tag = resolve_tag(settings)  # the champion: what a server serves (and is pinned below)
        clf = build_classifier(load_model(tag), settings.inference())
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
        loads = [(Load.single(images[0]), c) for c in args.concurrency]
        if args.batch_images:
            loads.append((Load.batch(images[: args.batch_images]), args.batch_concurrency))
        rows: dict[tuple[str, int, int], dict] = {}
        for runtime in (best, "torch"):
            log = Path(tempfile.mkdtemp()) / "serve.log"
            server = start_server(tag, runtime, args.batch, args.latency_ms, args.workers, log)
            try:
                for load, c in loads:
                    rows[(runtime, load.images, c)] = measure(server.base, load, c, args.seconds)
            finally:
                server.stop()
        print(f"HTTP: {args.workers} worker(s); p99 from wrk includes its correction for coordinated omission")
        print(f"{'runtime':<14} {'img/req':>7} {'conc':>4} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6}")  # fmt: skip
        for (runtime, n, c), r in rows.items():
            print(f"{runtime:<14} {n:>7} {c:>4} {r['img_per_s']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} "
                  f"{r['p99']:8.1f} {r['errors']:>6}")  # fmt: skip
        for n in sorted({n for _, n, _ in rows}):
            top, eager = (max(r["img_per_s"] for (rt, k, _), r in rows.items() if rt == runtime and k == n)
                          for runtime in (best, "torch"))  # fmt: skip
            what = "one image a request" if n == 1 else f"{n} images a request"
            print(
                f"{what}: HTTP best / in-process ceiling {top / ceiling:.2f} (target >= 0.8), "
                f"HTTP best / HTTP eager {top / eager:.2f} (target >= 6)"
            )


if __name__ == "__main__":
    main()
