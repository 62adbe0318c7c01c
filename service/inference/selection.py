"""Choosing the runtime on this machine: with ``auto``, measure every candidate and keep the fastest whose
decisions agree with fp32 torch on the model's recorded test split (int8 calibrated on its validation split),
or, for a model with none (an imported one), on unlabelled representative images: those stored with it, a
folder in the settings, and the live images people sent as feedback for it. The result is cached per model
version."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from service.inference.options import InferenceOptions
from service.inference.runtimes import (
    CPU_RUNTIMES,
    CUDA_RUNTIMES,
    REDUCED_PRECISION,
    InferenceRuntime,
    build_runtime,
    export_dir,
    locked,
    read_record,
    write_record,
)
from training.data.folder import images_under
from training.data.recorded import key_loader
from training.imaging import decode_image
from training.stored import StoredModel
from training.tasks import TaskSpec
from training.transforms import EvalPreprocessor

log = logging.getLogger(__name__)


def split_batches(stored: StoredModel, transform, split: str, limit: int, batch: int = 32) -> list[np.ndarray]:
    """Preprocessed images from one split the model recorded: ``test`` to measure agreement on, ``val`` to
    calibrate int8 on (so the agreement is not measured on the images the quantiser was fitted to)."""
    record = stored.split()
    if not record or not record.get(split):
        return []
    load = key_loader(record["source"], stored.preprocessing.channels)
    keys = [k for k, _ in record[split]][:limit]
    images = []
    for key in keys:
        try:
            images.append(transform(load(key)))
        except Exception as exc:  # noqa: BLE001 - a missing file only shrinks the check
            log.debug("calibration image %s unavailable: %s", key, exc)
    return [np.stack(images[i : i + batch]) for i in range(0, len(images), batch)]


def sample_batches(stored: StoredModel, transform, limit: int, folder: str | None, feedback: str | None = None,
                   batch: int = 32) -> tuple[list[np.ndarray], list[np.ndarray], str]:  # fmt: skip
    """For a model with no recorded split: unlabelled representative images (those stored with the model, then
    ``folder``'s, then the live images of its ``feedback`` store), alternately for int8 calibration and for the
    agreement check (never the same image for both); and where they came from, in words."""
    paths, sources = list(stored.sample_images()), []
    if paths:
        sources.append(f"{len(paths)} sample images stored with the model")
    for where, what in ((folder, "images of IMGCLF_AGREEMENT_IMAGES"), (feedback, "feedback images")):
        extra = images_under(Path(where))[0] if where and Path(where).is_dir() else []
        if extra:
            paths += extra
            sources.append(f"{len(extra)} {what}")
    images = []
    for path in paths[: 2 * limit]:
        try:
            images.append(transform(decode_image(path, stored.preprocessing.channels)))
        except Exception as exc:  # noqa: BLE001 - an unreadable file only shrinks the check
            log.debug("sample image %s unusable: %s", path, exc)
    halves = images[0::2], images[1::2]
    calibration, agreement = ([np.stack(h[i : i + batch]) for i in range(0, len(h), batch)] for h in halves)
    return calibration, agreement, " + ".join(sources)


def _agreement(
    task: TaskSpec, reference: list[np.ndarray], runtime: InferenceRuntime, batches: list[np.ndarray]
) -> float:
    """Share of images whose decision (top-1, or multi-label: the label set) matches the fp32 reference."""
    same = total = 0
    for ref, x in zip(reference, batches, strict=True):
        s, n = task.agreement(task.decisions(task.activate(runtime(x))), ref)
        same, total = same + s, total + n
    return same / max(total, 1)


def _throughput(runtime: InferenceRuntime, x: np.ndarray, seconds: float = 0.4) -> float:
    runtime(x)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n == 0:
        runtime(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def choose_runtime(stored: StoredModel, options: InferenceOptions, threads: int) -> tuple[InferenceRuntime, dict]:
    """Build the configured runtime, or with ``auto`` measure every candidate and keep the fastest.

    A reduced-precision runtime (bf16, int8) qualifies only when its top-1 (multi-label: its label
    set) agrees with fp32 torch on at least ``agreement_threshold`` of the recorded test split; the
    result is cached per version.
    """
    task = TaskSpec.from_metadata(stored.metadata)
    transform = EvalPreprocessor(stored.preprocessing)
    # Read and preprocessed only when needed: a named fp32 runtime needs neither split, int8 the validation
    # split only when its export is not cached yet.
    recorded = functools.cache(lambda name: split_batches(stored, transform, name, options.agreement_samples))
    unlabelled = functools.cache(lambda: sample_batches(stored, transform, options.agreement_samples,
                                                        options.agreement_images, options.feedback_images))  # fmt: skip

    def split(name: str) -> list[np.ndarray]:
        """``test`` (agreement) or ``val`` (int8 calibration): the recorded split, else representative images."""
        return recorded(name) or (recorded("test") if name == "val" else []) or unlabelled()[name == "test"]

    cache_file = export_dir(stored) / "runtimes.json"
    cache = read_record(cache_file)
    if options.runtime != "auto":
        candidates = [options.runtime]
    else:  # on a GPU machine the GPU runtimes; otherwise every CPU runtime
        candidates = list(CUDA_RUNTIMES if torch.cuda.is_available() else CPU_RUNTIMES)
    reference = None
    report: dict = {"requested": options.runtime, "candidates": {}}
    probe = np.random.default_rng(0).normal(size=(options.max_batch_size, *stored.input_shape)).astype(np.float32)
    best: tuple[float, InferenceRuntime] | None = None
    for name in candidates:
        entry: dict = {}
        try:
            if name in REDUCED_PRECISION and not split("test"):
                raise ValueError("no images to measure agreement with fp32 on: no recorded test split, no sample "
                                 "images stored with the model (import-weights --samples), no "
                                 "IMGCLF_AGREEMENT_IMAGES and no feedback images")  # fmt: skip
            runtime = build_runtime(name, stored, threads, calibration=lambda: iter(split("val")))
            if name in REDUCED_PRECISION:
                if name in cache and "agreement" in cache[name]:
                    entry["agreement"] = cache[name]["agreement"]
                else:
                    if reference is None:
                        fp32 = build_runtime("torch", stored, threads)
                        reference = [task.decisions(task.activate(fp32(x))) for x in split("test")]
                    entry["agreement"] = round(_agreement(task, reference, runtime, split("test")), 5)
                if entry["agreement"] < options.agreement_threshold:
                    raise ValueError(f"top-1 agreement with fp32 {entry['agreement']:.4f} < "
                                     f"{options.agreement_threshold}")  # fmt: skip
            entry["img_per_s"] = round(_throughput(runtime, probe), 1) if len(candidates) > 1 else None
            if best is None or (entry["img_per_s"] or 0) > best[0]:
                best = (entry["img_per_s"] or 0, runtime)
        except Exception as exc:  # noqa: BLE001 - one runtime failing must not stop serving
            entry["refused"] = f"{type(exc).__name__}: {exc}"
            log.warning("runtime %s not used: %s", name, entry["refused"])
            if options.runtime != "auto":
                raise
        report["candidates"][name] = entry
    _update_cache(cache_file, {k: v for k, v in report["candidates"].items() if "agreement" in v})
    assert best is not None
    report["chosen"] = best[1].name
    report["agreement"] = report["candidates"][best[1].name].get("agreement", 1.0)
    report["threads"] = threads
    if any(n in REDUCED_PRECISION for n in candidates):
        report["agreement_images"] = "the recorded test split" if recorded("test") else (unlabelled()[2] or None)
    return best[1], report


def _update_cache(path: Path, entries: dict) -> None:
    """Merge ``entries`` into the per-version cache; workers loading the same version at once are serialised."""
    with locked(path.parent):
        write_record(path, read_record(path) | entries)
