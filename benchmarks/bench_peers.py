"""Peer comparison: this service beside Mosec and LitServe, same model, same runtime, same load generator, one run.

    make bench-peers                                         # imagenet-lite0 (EfficientNet-Lite0 at 224 px)
    python benchmarks/bench_peers.py --model imagenet-lite0 --seconds 20

The model is exported once to ONNX (the very file this service's ``onnx`` runtime runs); each peer serves it with
ONNX Runtime (2 intra-op threads), dynamic batching (max 32, 10 ms), and the preprocessing stored with the model,
written as its own documentation teaches (``benchmarks/peers/``) and run from a virtualenv of its own
(``.venv-peers``: the framework, onnxruntime, Pillow and numpy, at this venv's versions; made on first use).
This service runs with its defaults (workers from the cores), on ``onnx`` and on its own choice (``auto``).
Every server is driven by the same ``wrk`` (one thread) posting real photos as JPEGs (quality 90), one server
at a time on an otherwise idle machine: a warm-up, then each concurrency for ``--seconds``. Around each of this
service's loads, with its server up and idle, the in-process ceiling of the runtime it chose
(``harness/ceiling.py``: one process a core decoding, preprocessing and inferring that photo with no HTTP),
once before and once after, and this service's HTTP throughput over their mean; then ``--ratio-rounds`` more
loads at the top concurrency, each followed by another ceiling, so that the target's ratio (HTTP / ceiling at
c=32) is taken several times from a load and the ceilings just before and after it, and its median printed: on
a host whose speed drifts by a tenth within minutes, one ratio says little.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import Load, measure  # noqa: E402

from harness.ceiling import in_process, photos  # noqa: E402
from harness.server import Server, free_port, tree_cpu_seconds, wait_ready  # noqa: E402
from service.inference.runtimes import export_onnx  # noqa: E402
from service.serving import resolve_tag  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.autotune import cpu_description  # noqa: E402
from training.store import load_model  # noqa: E402

PEERS_VENV = ROOT / ".venv-peers"
PEER_PACKAGES = ["mosec==0.9.8", "litserve==0.2.19"]
SHARED_PACKAGES = [
    "onnxruntime",
    "pillow",
    "numpy",
    "python-multipart",
]  # at this venv's versions: the same runtime on both sides


@dataclass
class Contender:
    """A server under test: how to start it, where it answers, and how a request looks to it."""

    name: str
    runtime: str
    start: Callable[[Load], Server | PeerServer]  # given a request to probe readiness with
    load: Callable[[bytes], Load]  # a photo -> the request this server is sent


def peers_python() -> Path:
    """The peers' own virtualenv, made on first use (pip, with this venv's onnxruntime, Pillow and numpy)."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    wanted = PEER_PACKAGES + [f"{p}=={md.version(p)}" for p in SHARED_PACKAGES]
    if not stamp.is_file() or stamp.read_text() != "\n".join(wanted):
        if not python.is_file():
            subprocess.run([os.environ.get("PYTHON_SYS", "python3.11"), "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
        stamp.write_text("\n".join(wanted))
    return python


def export(tag: str, out: Path) -> Path:
    """The model as the peers get it: the ONNX file this service runs, its preprocessing and its classes."""
    stored = load_model(tag)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(export_onnx(stored), out / "model.onnx")
    (out / "preprocessing.json").write_text(json.dumps(stored.metadata["preprocessing"]))
    (out / "classes.json").write_text(json.dumps(stored.classes))
    return out


class PeerServer:
    """A peer's process on a free port, ready once ``probe`` answers 200."""

    def __init__(self, cmd: list[str], env: dict, port: int, probe: Load, log: Path):
        self.cmd, self.env, self.port, self.probe, self.log = cmd, env, port, probe, log
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> PeerServer:
        fh = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT / "benchmarks" / "peers", env=self.env, stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        probe = self.probe

        def answer() -> httpx.Response:
            return httpx.post(self.base + probe.path, content=probe.body,
                              headers={"Content-Type": probe.content_type}, timeout=10)  # fmt: skip

        if not wait_ready(self.proc, answer, timeout, self.log.read_text):
            self.stop()
            raise RuntimeError(f"{self.cmd[1]} not ready in {timeout:.0f} s: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def multipart(field: str, path: str, photo: bytes) -> Load:
    request = httpx.Request("POST", "http://bench" + path, files={field: ("photo.jpg", photo, "image/jpeg")})
    return Load(path, request.read(), request.headers["Content-Type"])


def contenders(tag: str, model_dir: Path, work: Path, threads: int, batch: int, wait_ms: float) -> list[Contender]:
    peer_env = dict(os.environ, PEER_MODEL_DIR=str(model_dir), PEER_THREADS=str(threads),
                    PEER_MAX_BATCH=str(batch), PEER_MAX_WAIT_MS=str(wait_ms))  # fmt: skip
    peer_env.pop("PYTHONPATH", None)

    def ours(runtime: str):
        def start(probe: Load) -> Server:
            env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME=runtime,
                       IMGCLF_MAX_BATCH_SIZE=str(batch), IMGCLF_MAX_LATENCY_MS=str(wait_ms),
                       IMGCLF_ACCESS_LOG="false")  # fmt: skip
            server = Server(env, work / f"imgclf-{runtime}.log")
            server.env.pop("IMGCLF_WORKERS", None)  # its defaults (workers from the cores, the drift monitor on)
            return server.start(timeout=300)

        return start

    def peer(script: str, args: list[str]):
        def start(probe: Load) -> PeerServer:
            port = free_port()
            cmd = [str(peers_python()), script, *[a.format(port=port) for a in args]]
            return PeerServer(cmd, peer_env, port, probe, work / f"{script}.log").start()

        return start

    return [
        Contender("this service", "onnx", ours("onnx"), Load.single),
        Contender("Mosec 0.9.8", "onnx", peer("mosec_server.py", ["--port", "{port}"]),
                  lambda photo: Load("/inference", photo, "image/jpeg")),
        Contender("LitServe 0.2.19", "onnx", peer("litserve_server.py", ["{port}"]),
                  lambda photo: multipart("image", "/predict", photo)),
        Contender("this service", "auto", ours("auto"), Load.single),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="imagenet-lite0", help="store name (default imagenet-lite0)")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--photos", nargs="+", default=["640x480", "1280x960"], help="photo sizes, WxH")
    p.add_argument("--threads", type=int, default=2, help="the peers' ONNX Runtime threads")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=10)
    p.add_argument("--only", nargs="*", help="run only these contenders (name substrings)")
    p.add_argument(
        "--ceiling-seconds",
        type=float,
        default=5,
        help="the in-process ceiling's seconds a batch size, for each runtime this service ran (0: none)",
    )
    p.add_argument(
        "--ratio-rounds",
        type=int,
        default=2,
        help="extra loads of this service at the top concurrency, each followed by a ceiling, for the ratio",
    )
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_peers needs wrk (Debian's package; make bench-peers installs it)")
    tag = resolve_tag(Settings(model_name=args.model))
    work = Path(tempfile.mkdtemp(prefix="imgclf-peers-"))
    model_dir = export(tag, work / "model")
    images = photos(args.photos)
    print(f"== {tag} on {cpu_description()} ({os.cpu_count()} cores); photos {', '.join(args.photos)} as JPEG q90; "
          f"{args.seconds:.0f} s a point; logs in {work} ==")  # fmt: skip
    results: list[tuple[Contender, str, int, dict]] = []
    chose: dict[str, str] = {}  # this service's runtime setting -> the runtime it ran ("auto" resolved)
    # (photo size, runtime setting) -> the in-process ceilings of the runtime it ran, measured with its server up
    # but idle before the load, after it and after each extra load at the top concurrency (the machine's speed
    # drifts: each ratio compares a load with the ceilings just before and after it)
    ceilings: dict[tuple[str, str], list[float]] = {}
    top = max(args.concurrency)
    extra: dict[tuple[str, str], list[float]] = {}  # the same key -> requests/s of each extra load at ``top``

    def bracket(setting: str) -> None:  # one ceiling between two of this service's loads on ``setting``
        for size, rate in ceiling(tag, chose[setting], images, args.batch, args.ceiling_seconds).items():
            ceilings.setdefault((size, setting), []).append(rate)

    for who in contenders(tag, model_dir, work, args.threads, args.batch, args.wait_ms):
        if args.only and not any(o.lower() in f"{who.name} {who.runtime}".lower() for o in args.only):
            continue
        first = next(iter(images.values()))
        server = who.start(who.load(first))
        ours = who.name == "this service"
        try:
            if ours:
                chose[who.runtime] = httpx.get(server.base + "/model", timeout=10).json()["runtime"]["chosen"]
                bracket(who.runtime)  # the server idle meanwhile
            for size, photo in images.items():
                load = who.load(photo)
                measure(server.base, load, 1, 5)  # warm-up at this size
                for c in args.concurrency:
                    cpu = tree_cpu_seconds(server.proc.pid)
                    r = measure(server.base, load, c, args.seconds, warmup=False)
                    r["cpu_ms"] = (tree_cpu_seconds(server.proc.pid) - cpu) * 1000 / max(r["requests"], 1)
                    results.append((who, size, c, r))
                    print(f"  {who.name:<16} {who.runtime:<5} {size:>9} c={c:<3} {r['img_per_s']:7.1f} req/s  "
                          f"p50 {r['p50']:7.1f}  p99 {r['p99']:7.1f} ms  CPU {r['cpu_ms']:5.1f} ms/req  "
                          f"errors {r['errors']}", flush=True)  # fmt: skip
            if ours and args.ceiling_seconds:
                bracket(who.runtime)
                for _ in range(args.ratio_rounds):  # the target's ratio again, each load between two ceilings
                    for size, photo in images.items():
                        r = measure(server.base, who.load(photo), top, args.seconds, warmup=False)
                        extra.setdefault((size, who.runtime), []).append(r["img_per_s"])
                        print(f"  {who.name:<16} {who.runtime:<5} {size:>9} c={top:<3} {r['img_per_s']:7.1f} req/s "
                              f"(between ceilings)", flush=True)  # fmt: skip
                    bracket(who.runtime)
        finally:
            server.stop()
    print_table(results, args.concurrency, list(images), chose, ceilings, extra)


def ceiling(tag: str, runtime: str, images: dict[str, bytes], batch: int, seconds: float) -> dict[str, float]:
    """Photo size -> the in-process ceiling of ``runtime`` (images/s decoding, preprocessing and inferring that
    photo, no HTTP); none when ``seconds`` is 0."""
    rates = {}
    for size, photo in images.items() if seconds else ():
        rates[size] = in_process(tag, runtime, [photo], batch, seconds)
        print(f"  in-process ceiling {runtime:<8} {size:>9} {rates[size]:7.1f} img/s", flush=True)
    return rates


def print_table(results: list, concurrency: list[int], sizes: list[str], chose: dict[str, str],
                ceilings: dict[tuple[str, str], list[float]], extra: dict[tuple[str, str], list[float]]
                ) -> None:  # fmt: skip
    for size in sizes:
        print(f"\n{size} photo: requests/s (p99 ms) [server CPU ms a request]\n")
        print("| server | runtime | " + " | ".join(f"c={c}" for c in concurrency) + " |")
        print("| --- | --- |" + " --- |" * len(concurrency))
        rows: dict[tuple[str, str], dict[int, dict]] = {}
        for who, s, c, r in results:
            if s == size:
                rows.setdefault((who.name, who.runtime), {})[c] = r
        for (name, runtime), by_c in rows.items():
            cells = [f"{by_c[c]['img_per_s']:.1f} ({by_c[c]['p99']:.0f}) [{by_c[c]['cpu_ms']:.1f}]" if c in by_c else ""
                     for c in concurrency]  # fmt: skip
            print(f"| {name} | {runtime} | " + " | ".join(cells) + " |")
        for c in concurrency:
            ours = {rt: by_c[c] for (n, rt), by_c in rows.items() if n == "this service" and c in by_c}
            peers = [by_c[c] for (n, rt), by_c in rows.items() if n != "this service" and rt == "onnx" and c in by_c]
            if not peers:
                continue
            best = max(peers, key=lambda r: r["img_per_s"])
            parts = []
            if "onnx" in ours:
                parts.append(f"same runtime {ours['onnx']['img_per_s'] / best['img_per_s']:.2f}x the best peer "
                             f"(target 1.2x), p99 {ours['onnx']['p99']:.0f} vs {best['p99']:.0f} ms")  # fmt: skip
            if "auto" in ours:
                parts.append(f"own choice {ours['auto']['img_per_s'] / best['img_per_s']:.2f}x (target 1.5x)")
            print(f"c={c}: " + "; ".join(parts))
        for (name, runtime), by_c in rows.items():
            rates = ceilings.get((size, runtime))
            if name != "this service" or len(rates or ()) < 2:
                continue
            mean = (rates[0] + rates[1]) / 2
            ratios = ", ".join(f"c={c} {by_c[c]['img_per_s'] / mean:.2f}" for c in by_c)
            print(f"this service on {runtime} ({chose.get(runtime, runtime)}): HTTP / in-process ceiling "
                  f"({mean:.1f} img/s, the mean of {rates[0]:.1f} and {rates[1]:.1f} measured just before and "
                  f"after its loads) {ratios}")  # fmt: skip
            top = max(by_c)
            loads = [by_c[top]["img_per_s"], *extra.get((size, runtime), [])]
            pairs = [load / ((rates[i] + rates[i + 1]) / 2) for i, load in enumerate(loads[: len(rates) - 1])]
            print(f"  at c={top}, each load over the ceilings just before and after it: "
                  f"{', '.join(f'{r:.2f}' for r in pairs)}; median {statistics.median(pairs):.2f} "
                  f"(target 0.9 at c=32)")  # fmt: skip


if __name__ == "__main__":
    main()
