"""The framework-free classifier: bytes in, probabilities out, on the runtime chosen for this machine.

No BentoML, FastAPI or service settings here (a test imports this package in a fresh interpreter and
checks): what it needs comes in as a :class:`~service.inference.options.InferenceOptions` and a
:class:`~training.stored.StoredModel`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from service.inference.batch_size import measured_limit
from service.inference.drift import DriftMonitor
from service.inference.lone import lone_verdict, time_lone
from service.inference.measured import Measurement, measured_once
from service.inference.options import InferenceOptions
from service.inference.runtimes import OWN_THREAD_POOL, InferenceRuntime, build_runtime
from service.inference.selection import choose_runtime
from training.imaging import decode_image
from training.stored import StoredModel
from training.tasks import TaskSpec
from training.transforms import EvalPreprocessor

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A stored model ready to serve: its transform, its runtime and what was measured choosing it.

    ``lone``, when set, is the same runtime with more threads (:meth:`infer_alone`), for an image the worker has
    nothing else to do beside: the server is lightly loaded, and the cores other workers would use are idle.
    """

    stored: StoredModel
    runtime: InferenceRuntime
    max_pixels: int
    runtime_report: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    drift: DriftMonitor | None = None  # watches every batch's embeddings once set
    lone: InferenceRuntime | None = None
    batch_limit: int = 0  # the most images a batch should hold on this machine (build_classifier sets it)

    def __post_init__(self) -> None:
        self.task = TaskSpec.from_metadata(self.stored.metadata)
        self.transform = EvalPreprocessor(self.stored.preprocessing)
        self.channels = self.stored.preprocessing.channels
        self.draft_size = self.stored.preprocessing.resize_size

    @property
    def tag(self) -> str:
        return self.stored.tag

    @property
    def classes(self) -> list[str]:
        return self.stored.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.stored.input_shape

    def preprocess(self, data: bytes) -> np.ndarray:
        """Decode and transform one encoded image. Raises ``ImageError`` for unusable input."""
        img = decode_image(data, self.channels, self.max_pixels, draft_size=self.draft_size)
        return self.transform(img)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N, C) for a preprocessed float32 batch (N, C, H, W): probabilities, or sigmoids (multi-label)."""
        return self._infer(self.runtime, batch)

    def infer_alone(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`infer` on the runtime with every core (``lone``), for an image the server has nothing else to
        do beside."""
        return self._infer(self.lone or self.runtime, batch)

    def _infer(self, runtime: InferenceRuntime, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.drift is None:
            return self.task.activate(runtime(x))
        logits, embedding = runtime.with_embedding(x)
        scores = self.task.activate(logits)
        self.drift.observe(embedding, scores)
        return scores


def build_classifier(stored: StoredModel, options: InferenceOptions, started: float | None = None) -> Classifier:
    """Choose ``stored``'s runtime on this machine and warm it up; ``load_seconds`` counts from ``started``
    (a ``time.perf_counter()`` taken before the model was read, say), else from now. The workers of one server
    (``options.measured_by``) measure once, one at a time (:mod:`service.inference.measured`)."""
    start = time.perf_counter() if started is None else started
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
    with measured_once(stored, options) as (found, keep):
        if found is None:  # measure here, the server's other workers waiting
            runtime, report = choose_runtime(stored, options, threads)
            clf = _warmed(Classifier(stored, runtime, options.max_pixels, report), options, threads)
            _keep_lone_if_worth_it(clf, options)
            clf.batch_limit = options.max_batch_size
            if options.max_batch_size > 1:
                per_image, clf.batch_limit, why = measured_limit(clf.infer, _zeros(clf, options.max_batch_size))
                report["batch"] = {"ms_per_image": {str(k): round(v * 1000, 4) for k, v in per_image.items()},
                                   "limit": clf.batch_limit, "why": why}  # fmt: skip
            report["measured_in"] = f"worker {os.getpid()}"
            keep.append(Measurement(runtime.name, report, clf.batch_limit, lone=clf.lone is not None))
    if found is not None:  # another worker of this server measured with these options: its verdicts
        runtime, _ = choose_runtime(stored, replace(options, runtime=found.runtime), threads)
        clf = _warmed(Classifier(stored, runtime, options.max_pixels, found.report), options, threads, found.lone)
        clf.batch_limit = found.batch_limit
    report = clf.runtime_report
    reference = stored.drift_reference() if options.drift_sample > 0 else None
    if reference is not None:  # after the warm-up: zeros are not traffic
        clf.drift = DriftMonitor(reference, options.drift_sample, options.low_confidence)
    clf.load_seconds = time.perf_counter() - start
    lone = f", a lone image on {options.lone_threads} threads" if clf.lone else ""
    if "lone_image" in report and not clf.lone:  # timed and not worth it: the log says why
        lone = f", a lone image on its {threads} thread(s) ({report['lone_image']['why']})"
    batch = report.get("batch")  # the timings' verdict, logged either way: a worker that kept full batches says why
    batches = f", batches up to {clf.batch_limit} ({batch['why']})" if batch else ""
    measured = "" if found is None else f", as measured by {report['measured_in']}"
    log.info("%s runs on %s%s%s%s (%.1fs to choose and warm up)", stored.tag, runtime.name, lone, batches, measured,
             clf.load_seconds)  # fmt: skip
    return clf


def _zeros(clf: Classifier, batch: int) -> np.ndarray:
    return np.zeros((batch, *clf.input_shape), np.float32)


def _warmed(clf: Classifier, options: InferenceOptions, threads: int, lone: bool = True) -> Classifier:
    """``clf`` with its runtime for a lone image (when it gets one and ``lone``) and every power-of-two batch size
    run once: a runtime's first batch of a new size is slow. Kept apart from the batch timing, whose rounds would
    warm them too: folded into it, 3 of 8 Lite0 workers on OpenVINO (AMD EPYC Zen 4) kept batches of 32, against 0
    of 10 with this warm-up first."""
    if lone and (options.lone_threads or 0) > threads and clf.runtime.name in OWN_THREAD_POOL:
        # int8's calibrated export is cached by now, so no calibration images are needed again
        clf.lone = build_runtime(clf.runtime.name, clf.stored, options.lone_threads, calibration=lambda: iter(()),
                                 shared_cores=True)  # fmt: skip
        clf.runtime_report["lone_image_threads"] = options.lone_threads
    warm, size = _zeros(clf, options.max_batch_size), options.max_batch_size
    while size >= 1:
        clf.infer(warm[:size])
        size //= 2
    clf.infer_alone(warm[:1])
    return clf


def _keep_lone_if_worth_it(clf: Classifier, options: InferenceOptions) -> None:
    """Time one image on the worker's runtime and on the lone one, and drop the lone one unless it is worth its
    threads (:mod:`service.inference.lone`); the timings and the verdict go in the report."""
    if clf.lone is None:
        return
    shared, lone = time_lone(clf.infer, clf.infer_alone, _zeros(clf, 1))
    kept, why = lone_verdict(shared, lone, options.lone_threads or 0)
    clf.runtime_report["lone_image"] = {"ms": {"shared": round(shared * 1000, 4), "lone": round(lone * 1000, 4)},
                                        "kept": kept, "why": why}  # fmt: skip
    if not kept:
        clf.lone = None
        clf.runtime_report.pop("lone_image_threads", None)
