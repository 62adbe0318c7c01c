"""What the predictor needs to know, as one plain record (the service fills it from its settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceOptions:
    runtime: str = "auto"  # a runtime name (service.inference.runtimes), or auto: measure and choose
    max_batch_size: int = 32  # most images in one inference batch
    threads: int | None = None  # inference threads (default: cores / workers)
    workers: int = 1  # worker processes sharing the cores
    max_pixels: int = 40_000_000  # largest accepted image (width x height)
    agreement_threshold: float = 0.995  # reduced precision must agree with fp32 on this share of decisions
    agreement_samples: int = 1000  # recorded test images the agreement is measured on
    drift_sample: float = 0.5  # share of served images the drift monitor samples (0: no monitor)
    low_confidence: float = 0.5  # top-1 score below which an answer counts as low-confidence
    agreement_images: str | None = None  # a folder of representative images for models with no recorded split
    feedback_images: str | None = None  # the served model's feedback store: live images people labelled
    lone_threads: int | None = None  # threads for a batch of one image, when more than ``threads``
    # a key shared by the workers of one server (``measured.server_key``): the first to load a model measures the
    # runtimes and batch sizes alone, the others reuse it; None: each worker measures for itself
    measured_by: str | None = None
