"""What one worker serves: the classifier, its micro-batcher and the classify use-case (no HTTP here)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from training import store
from training.imaging import ImageError

from . import metrics
from .batching import MicroBatcher
from .errors import InvalidInput, NotReady, ServiceError, from_image_error
from .inference import Classifier, load_classifier
from .settings import Settings

log = logging.getLogger(__name__)


def resolve_tag(settings: Settings) -> str:
    """The version to serve: the pinned tag, else the newest stored version of the model name.

    This is the single place that decides; the retraining registry's champion pointer plugs in here.
    """
    if settings.model_tag:
        return settings.model_tag
    versions = store.list_versions(settings.model_name)
    if not versions:
        raise store.StoreError(
            f"no version of {settings.model_name!r} in the model store; train one first "
            f"(python -m training train --name {settings.model_name}) or set IMGCLF_MODEL_NAME"
        )
    return str(versions[0].tag)


@dataclass
class ClassifyResult:
    predictions: list[dict] | None = None
    error: ServiceError | None = None


class ServingState:
    """Loads the model, owns the batcher; ``classify`` is the one path every endpoint takes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher | None = None
        self._pre_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess")

    def load(self) -> None:
        clf = load_classifier(resolve_tag(self.settings), self.settings)
        self.classifier = clf
        self.batcher = MicroBatcher(self._infer, self.settings.max_batch_size, self.settings.max_latency_ms,
                                    on_batch=metrics.observe_batch)  # fmt: skip
        metrics.set_model_info(clf.tag, clf.runtime.name, clf.load_seconds)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        assert self.classifier is not None
        return self.classifier.infer(batch)

    @property
    def ready(self) -> bool:
        return self.classifier is not None

    def require(self) -> Classifier:
        if self.classifier is None:
            raise NotReady("the model is still loading; retry shortly")
        return self.classifier

    def check_top_k(self, top_k: int | None) -> int:
        k = self.settings.default_top_k if top_k is None else top_k
        if k < 1:
            raise InvalidInput(f"top_k must be a positive integer, got {k}", reason="bad_top_k")
        return min(k, len(self.require().classes))

    def _preprocess(self, clf: Classifier, data: bytes) -> np.ndarray:
        start = time.perf_counter()
        x = clf.preprocess(data)
        metrics.PREPROCESS_SECONDS.observe(time.perf_counter() - start)
        return x

    async def classify(self, images: list[bytes], top_k: int | None, endpoint: str) -> list[ClassifyResult]:
        """Classify each image; a bad image gets its own error and does not fail the others."""
        clf = self.require()
        k = self.check_top_k(top_k)
        metrics.IMAGES.labels(endpoint).inc(len(images))
        loop = asyncio.get_running_loop()

        async def one(data: bytes) -> ClassifyResult:
            try:
                x = await loop.run_in_executor(self._pre_pool, self._preprocess, clf, data)
            except ImageError as exc:
                err = from_image_error(exc)
                metrics.REJECTED.labels(endpoint, err.reason).inc()
                err.counted = True
                return ClassifyResult(error=err)
            return await self.classify_tensor(clf, x, k)

        return list(await asyncio.gather(*(one(d) for d in images)))

    async def classify_tensor(self, clf: Classifier, x: np.ndarray, k: int) -> ClassifyResult:
        assert self.batcher is not None
        probs = await self.batcher.submit(x)
        preds = clf.top_k(probs, k)
        metrics.observe_prediction(clf.tag, preds[0]["label"], preds[0]["score"], self.settings.low_confidence)
        return ClassifyResult(predictions=preds)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self._pre_pool.shutdown(wait=False, cancel_futures=True)
