"""The classify operations behind the HTTP routes and the BentoML API methods alike: the per-worker in-flight
limit, the call into the classify path, and the response records (so both give the same answers and errors)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from service import telemetry
from service.edge.schemas import BatchItem, ClassifyBatchResponse, ClassifyResponse, ModelInfo
from service.errors import Overloaded
from service.inference import Classifier
from service.inference.answers import ClassifyQuery
from service.inference.capacity import Capacity
from service.serving import ClassifyPath, ImageResult
from training.stored import REPORT_DIR, REPORT_PICTURES

T = TypeVar("T")


class InFlight:
    """At most ``limit`` classify requests at once on this worker; past it, :class:`Overloaded` (429)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    async def run(self, path: ClassifyPath, call: Callable[[], Awaitable[T]]) -> T:
        if self.count >= self.limit:
            raise Overloaded(f"more than {self.limit} requests in flight on this worker; retry")
        self.count += 1
        try:
            with path.arriving():
                return await call()
        finally:
            self.count -= 1


def classified(result: ImageResult) -> dict[str, Any]:
    """The answer's response fields (those with a value: see :class:`~service.edge.schemas.Classified`), or the
    image's error raised."""
    if result.error is not None:
        raise result.error
    assert result.answer is not None
    a = result.answer
    fields = (("labels", a.labels), ("level", a.level), ("abstained", a.verdict.abstained))
    return {"predictions": a.predictions} | {k: v for k, v in fields if v is not None}


async def classify_one(path: ClassifyPath, data: bytes, query: ClassifyQuery, endpoint: str) -> ClassifyResponse:
    clf, [result] = await path.classify([data], query, endpoint)
    return ClassifyResponse(model=clf.tag, task=clf.task.kind, **classified(result))


async def classify_many(path: ClassifyPath, images: list[bytes], query: ClassifyQuery,
                        endpoint: str) -> ClassifyBatchResponse:  # fmt: skip
    """One result per image, in order; a one-image request gets the image's own error status."""
    clf, results = await path.classify(images, query, endpoint)
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error
    items = []
    for i, r in enumerate(results):
        if r.error is not None:
            telemetry.REJECTED.labels(endpoint, r.error.reason).inc()  # the request succeeds; the image did not
            items.append(BatchItem(index=i, predictions=None, error=r.error.message))
        else:
            items.append(BatchItem(index=i, error=None, **classified(r)))
    return ClassifyBatchResponse(model=clf.tag, task=clf.task.kind, results=items)


def model_info(clf: Classifier, capacity: Capacity | None = None) -> ModelInfo:
    meta = clf.stored.metadata
    task = clf.task
    pictures = [p for p in REPORT_PICTURES if (clf.stored.path / REPORT_DIR / p).is_file()]
    return ModelInfo(tag=clf.tag, architecture=meta["architecture"], classes=clf.classes, task=task.kind,
                     thresholds=task.metadata().get("thresholds"), taxonomy=task.metadata().get("taxonomy"),
                     levels=task.levels() if task.taxonomy else None,
                     preprocessing=meta["preprocessing"], metrics=meta.get("metrics", {}),
                     created=clf.stored.created, runtime=clf.runtime_report, worker_pid=os.getpid(),
                     dataset_fingerprint=meta.get("dataset_fingerprint"), training=meta.get("training"),
                     calibration=meta.get("calibration"),
                     drift=clf.drift.status.to_dict() if clf.drift else None,
                     report_pictures=pictures, serving=capacity.to_dict() if capacity else None)  # fmt: skip
