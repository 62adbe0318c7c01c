"""Measure what docs/PERFORMANCE.md reports, in one run, and draw its plots.

    python loadtests/perf_report.py --model fashion-cnn --seconds 15        # make perf-report

For each runtime (eager torch, the one `auto` picks): the in-process ceiling (decode + preprocess + runtime in
a tight loop, as benchmarks/bench_serve.py), then Locust at several concurrencies over HTTP (/classify, one
image per request) and gRPC (ModelInfer), and where a request's time goes (decode + preprocess, queue,
inference, the rest) from the service's own histograms. Writes runs/perf.json and docs/perf-*.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.server import Server  # noqa: E402
from loadtests.run import run_locust  # noqa: E402

MIXES = {"http": "classify=1,batch=0,json=0,grpc=0,ops=0", "grpc": "classify=0,batch=0,json=0,grpc=1,ops=0"}


def scrape(base: str) -> dict[str, float]:
    """Sums over label sets of the histogram _sum/_count series needed for the time breakdown."""
    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        m = re.match(r"^(imgclf_\w+_(?:sum|count)|bentoml_service_request_duration_seconds_(?:sum|count))(\{[^}]*\})? "
                     r"([0-9.e+-]+)$", line)  # fmt: skip
        if m and ("endpoint" not in (m.group(2) or "") or 'endpoint="/classify"' in m.group(2)):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def breakdown(before: dict, after: dict) -> dict[str, float]:
    """Mean milliseconds per image: preprocess, queue, inference (batch time / batch size), and the rest."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    images = max(d.get("imgclf_preprocess_seconds_count", 0), 1)
    per_batch_images = d.get("imgclf_inference_batch_size_sum", 0) / max(
        d.get("imgclf_inference_batch_size_count", 1), 1
    )
    pre = d.get("imgclf_preprocess_seconds_sum", 0) / images
    queue = d.get("imgclf_batch_queue_seconds_sum", 0) / max(d.get("imgclf_batch_queue_seconds_count", 1), 1)
    infer_batch = d.get("imgclf_inference_seconds_sum", 0) / max(d.get("imgclf_inference_seconds_count", 1), 1)
    total = d.get("bentoml_service_request_duration_seconds_sum", 0) / max(
        d.get("bentoml_service_request_duration_seconds_count", 1), 1)  # fmt: skip
    parts = {"decode + preprocess": pre, "batch queue": queue, "inference (its batch)": infer_batch}
    parts["HTTP, parsing, framework"] = max(0.0, total - sum(parts.values()))
    return {k: v * 1e3 for k, v in parts.items()} | {"mean batch size": per_batch_images, "request total": total * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-ms", type=float, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "perf.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--plots-only", action="store_true", help="redraw the plots from --out without measuring")
    args = p.parse_args()
    if args.plots_only:
        plots(json.loads(args.out.read_text()), args.docs)
        return

    from harness.ceiling import in_process, sample_images
    from service.inference import build_classifier
    from service.serving import resolve_tag
    from service.settings import Settings
    from training.store import load_model

    settings = Settings(model_name=args.model, runtime="auto", max_batch_size=args.batch)
    tag = resolve_tag(settings)  # the champion, pinned for every server below
    clf = build_classifier(load_model(tag), settings.inference())
    best, pp = clf.runtime.name, clf.stored.preprocessing
    images = sample_images(pp.channels, max(pp.input_size, 64) if pp.input_size < 64 else pp.resize_size)
    report: dict = {"model": clf.tag, "architecture": clf.stored.metadata["architecture"], "input": pp.input_size,
                    "auto": best, "candidates": clf.runtime_report["candidates"], "runtimes": {}}  # fmt: skip
    del clf
    for runtime in dict.fromkeys(["torch", best]):
        entry: dict = {"ceiling": in_process(tag, runtime, images, args.batch, 10), "http": {}, "grpc": {}}
        print(f"{runtime}: in-process ceiling {entry['ceiling']:.1f} img/s", flush=True)
        env = dict(IMGCLF_MODEL_NAME=args.model, IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME=runtime,
                   IMGCLF_WORKERS=str(args.workers),
                   IMGCLF_MAX_BATCH_SIZE=str(args.batch), IMGCLF_MAX_LATENCY_MS=str(args.latency_ms),
                   IMGCLF_ACCESS_LOG="false")  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix="imgclf-perf-"))
        server = Server(env, work / "serve.log").start(timeout=300)
        try:
            for transport, mix in MIXES.items():
                for c in args.concurrency:
                    before = scrape(server.base)
                    rows = run_locust(server, c, args.seconds, work / f"{transport}-{c}", mix)
                    row = rows["/classify" if transport == "http" else "ModelInfer"]
                    entry[transport][c] = {"img_per_s": float(row["Requests/s"]), "p50": float(row["50%"]),
                                           "p95": float(row["95%"]), "p99": float(row["99%"]),
                                           "failures": int(row["Failure Count"])}  # fmt: skip
                    if transport == "http" and c == max(args.concurrency):
                        entry["breakdown"] = breakdown(before, scrape(server.base))
                    r = entry[transport][c]
                    print(f"  {transport} c={c}: {r['img_per_s']:.1f} img/s p50 {r['p50']:.0f} p99 {r['p99']:.0f} ms "
                          f"({r['failures']} failures)", flush=True)  # fmt: skip
        finally:
            server.stop()
        report["runtimes"][runtime] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plots(report, args.docs)
    print(f"wrote {args.out} and {args.docs}/perf-*.png")


def plots(report: dict, docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    runtimes = report["runtimes"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, entry in runtimes.items():
        for transport, style in (("http", "-o"), ("grpc", "--s")):
            cs = sorted(entry[transport], key=int)
            axes[0].plot([int(c) for c in cs], [entry[transport][c]["img_per_s"] for c in cs], style,
                         label=f"{name} {transport}")  # fmt: skip
            axes[1].plot(
                [int(c) for c in cs], [entry[transport][c]["p99"] for c in cs], style, label=f"{name} {transport}"
            )
        axes[0].axhline(
            entry["ceiling"], ls=":", color=axes[0].lines[-1].get_color(), label=f"{name} in-process ceiling"
        )
    axes[0].set(
        title="Throughput against concurrency",
        xlabel="concurrent clients",
        ylabel="images/s",
        xscale="log",
        yscale="log",
    )
    axes[1].set(title="p99 latency", xlabel="concurrent clients", ylabel="ms", xscale="log", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']} ({report['architecture']}, {report['input']} px)")
    fig.tight_layout()
    fig.savefig(docs / "perf-throughput.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    parts = {"decode + preprocess": "tab:blue", "batch queue": "tab:orange", "inference (its batch)": "tab:green",
             "HTTP, parsing, framework": "tab:red"}  # fmt: skip
    for i, entry in enumerate(runtimes.values()):
        left = 0.0
        for part, colour in parts.items():
            value = entry["breakdown"][part]
            ax.barh(i, value, left=left, color=colour, label=part if i == 0 else None)
            left += value
    ax.set_yticks(range(len(runtimes)), list(runtimes))
    ax.set(title="Where a /classify request's time goes (mean ms, highest concurrency)", xlabel="ms")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(docs / "perf-breakdown.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
