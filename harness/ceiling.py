"""The in-process ceiling and the images it (and the load generators) send: what the machine can do with no
HTTP, no queueing and no thread hand-offs, to compare a server's throughput with."""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from service.inference import build_classifier
from service.settings import Settings
from training.store import load_model


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


def photos(sizes: list[str]) -> dict[str, bytes]:
    """scikit-image's astronaut photo at each ``WxH``, as a JPEG of quality 90."""
    from skimage import data  # a real photo, shipped with scikit-image

    out = {}
    for size in sizes:
        w, h = (int(v) for v in size.split("x"))
        buf = io.BytesIO()
        Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
        out[size] = buf.getvalue()
    return out


CEILING_BATCHES = (4, 8, 16, 32)


def _ceiling_worker(tag: str, runtime: str, images: list[bytes], batches: list[int], seconds: float, threads: int,
                    ready) -> list[tuple[int, float]]:  # fmt: skip
    """One process of the ceiling: for each batch size, decode + preprocess + infer in a tight loop, the
    processes starting each batch size together (``ready`` is a barrier shared by all of them)."""
    settings = Settings(model_name=tag.split(":")[0], runtime=runtime, max_batch_size=max(batches), threads=threads)
    clf = build_classifier(load_model(tag), settings.inference())
    out = []
    for batch in batches:
        clf.infer(np.stack([clf.preprocess(d) for d in images[:batch]]))  # warm
        ready.wait()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            clf.infer(np.stack([clf.preprocess(images[(n + k) % len(images)]) for k in range(batch)]))
            n += batch
        out.append((n, time.perf_counter() - start))
    return out


def in_process(tag: str, runtime: str, images: list[bytes], max_batch: int, seconds: float,
               processes: int | None = None) -> float:  # fmt: skip
    """The in-process ceiling: one process a core (as many as the server's workers would use), each with a
    one-thread runtime, decoding, preprocessing and inferring back to back: the machine's images/s with no
    HTTP, no queueing and no thread hand-offs, at the best batch size up to ``max_batch``."""
    processes = processes or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // processes)
    batches = [b for b in CEILING_BATCHES if b < max_batch] + [max_batch]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        ready = manager.Barrier(processes)
        futures = [pool.submit(_ceiling_worker, tag, runtime, images, batches, seconds, threads, ready)
                   for _ in range(processes)]  # fmt: skip
        results = [f.result() for f in futures]
    return max(sum(r[i][0] for r in results) / max(r[i][1] for r in results) for i in range(len(batches)))
