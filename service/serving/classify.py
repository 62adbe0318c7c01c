"""The classify path every protocol's images take: admission, decoding on a small thread pool, the served
model's micro-batcher, and each image's answer (with the metrics read from that same answer).

No HTTP here: errors are :mod:`service.errors` values, mapped to statuses by each edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service import telemetry
from service.errors import InvalidInput, NotReady, PayloadTooLarge, ServiceError, from_image_error
from service.inference import Classifier
from service.inference.answers import Answer, ClassifyQuery, answer, check_query, decide
from service.serving.follower import Served
from service.serving.rollout import RolloutFollower
from training.imaging import ImageError

_ARRIVAL: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("imgclf_arrival")


@dataclass(frozen=True)
class Admission:
    """The one admission rule for every protocol and input form (pixels and the decode budget are the
    decoder's, the same for all)."""

    max_images: int  # images in one request
    max_image_bytes: int  # one encoded image

    def check(self, count: int, sizes: list[int] | None = None) -> None:
        """Raises :class:`PayloadTooLarge` or :class:`InvalidInput`."""
        if count < 1:
            raise InvalidInput("the request holds no images", reason="no_images")
        if count > self.max_images:
            raise PayloadTooLarge(f"{count} images in one request; the maximum is {self.max_images}",
                                  reason="too_many_images")  # fmt: skip
        for i, size in enumerate(sizes or ()):
            if size > self.max_image_bytes:
                raise PayloadTooLarge(f"image {i} is {size} bytes; the maximum is {self.max_image_bytes} bytes",
                                      reason="too_large")  # fmt: skip


class Arrivals:
    """Requests taken by the edge whose images are not yet with the batcher: an idle batcher holding other
    images waits for them (up to ``max_latency_ms``), and for nobody else."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request from the moment the edge takes it until its images are known (or it ends)."""
        cell = [True]
        token = _ARRIVAL.set(cell)
        self.count += 1
        try:
            yield
        finally:
            _ARRIVAL.reset(token)
            if cell[0]:
                self.count -= 1

    def arrived(self) -> None:
        """This request's images are now counted by the batcher (or submitted): stop counting the request."""
        cell = _ARRIVAL.get(None)
        if cell is not None and cell[0]:
            cell[0] = False
            self.count -= 1


@dataclass
class ImageResult:
    """One image's answer, or why it could not be classified (a bad image does not fail the others)."""

    answer: Answer | None = None
    error: ServiceError | None = None


class ClassifyPath:
    """``current()`` is the served model (from the follower); ``model_name`` the name the protocols know it by."""

    def __init__(self, model_name: str, current: Callable[[], Served | None], admission: Admission,
                 arrivals: Arrivals, default_top_k: int, low_confidence: float,
                 abstain_below: float | None = None, decode_threads: int = 2):  # fmt: skip
        self.model_name = model_name
        # set by the service when capture is on: offered every answered image (see retraining.capture)
        self.capture: Callable[[bytes, np.ndarray, str, list[str]], None] | None = None
        # set when the registry may name a challenger: routes canary requests, counts and shadows every answer
        self.rollout: RolloutFollower | None = None
        self.abstain_below = abstain_below
        self.current = current
        self.admission = admission
        self.arrivals = arrivals
        self.default_top_k = default_top_k
        self.low_confidence = low_confidence
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="preprocess")

    def admit(self, count: int, sizes: list[int] | None = None) -> None:
        self.admission.check(count, sizes)

    def arriving(self) -> contextlib.AbstractContextManager:
        return self.arrivals.arriving()

    @property
    def ready(self) -> bool:
        return self.current() is not None

    @property
    def classifier(self) -> Classifier | None:
        served = self.current()
        return served.classifier if served else None

    def _served(self) -> Served:
        served = self.current()
        if served is None:
            raise NotReady()
        return served

    def require(self) -> Classifier:
        return self._served().classifier

    @property
    def drift_detected(self) -> bool:
        clf = self.classifier
        return bool(clf and clf.drift and clf.drift.status.detected)

    @contextlib.contextmanager
    def _use(self) -> Iterator[Served]:
        """The model this request runs on from start to end, whatever swaps meanwhile (during a canary, the
        challenger for its share of requests)."""
        served = self._served()
        if self.rollout is not None:
            served = self.rollout.route(served)
        served.in_flight += 1
        try:
            yield served
        finally:
            served.in_flight -= 1

    async def classify(
        self, images: list[bytes], query: ClassifyQuery, endpoint: str
    ) -> tuple[Classifier, list[ImageResult]]:
        """Each image's answer (see :mod:`service.inference.answers`) and the model that gave it; a bad query
        fails the request."""
        self.admit(len(images), [len(d) for d in images])
        with self._use() as served:
            clf = served.classifier
            query = check_query(clf.task, query, self.default_top_k)
            results = []
            outputs = await self._scores(served, images, endpoint)
            for out in outputs:
                if isinstance(out, ServiceError):
                    results.append(ImageResult(error=out))
                    continue
                result = answer(clf.task, out, query, self.abstain_below)
                telemetry.observe_verdict(clf.tag, clf.classes, result.verdict, self.low_confidence)
                results.append(ImageResult(result))
            self._offer(clf, images, outputs)
        return clf, results

    async def probabilities(self, images: list[bytes], endpoint: str) -> tuple[Classifier, list]:
        """Class probabilities (or a :class:`ServiceError`) per encoded image, and the model that answered."""
        self.admit(len(images), [len(d) for d in images])
        with self._use() as served:
            outputs = await self._scores(served, images, endpoint)
            self._observe(served.classifier, [o for o in outputs if not isinstance(o, ServiceError)])
            self._offer(served.classifier, images, outputs)
            return served.classifier, outputs

    async def probabilities_of_tensors(self, batch: np.ndarray, endpoint: str) -> tuple[Classifier, np.ndarray]:
        """Probabilities for already-preprocessed float32 images (N, C, H, W) of the served model's shape."""
        self.admit(len(batch) if batch.ndim else 0)
        with self._use() as served:
            clf = served.classifier
            if batch.ndim != 4 or tuple(batch.shape[1:]) != clf.input_shape:
                c, h, w = clf.input_shape
                raise InvalidInput(f"preprocessed input must have shape [N, {c}, {h}, {w}], got "
                                   f"{list(batch.shape)}", reason="bad_shape")  # fmt: skip
            telemetry.observe_images(endpoint, len(batch))
            self.arrivals.arrived()
            images = list(batch.astype(np.float32, copy=False))
            rows = await self._infer(served, images, None)
            self._observe(clf, rows)
            return clf, np.stack(rows)

    def _observe(self, clf: Classifier, rows: list[np.ndarray]) -> None:
        for row in rows:
            verdict = decide(clf.task, row, self.abstain_below)
            telemetry.observe_verdict(clf.tag, clf.classes, verdict, self.low_confidence)

    def _offer(self, clf: Classifier, images: list[bytes], outputs: list) -> None:
        if self.capture is None or clf.task.multilabel:  # one label per image: multi-label needs the manifest
            return
        for data, out in zip(images, outputs, strict=True):
            if not isinstance(out, ServiceError):
                self.capture(data, out, clf.tag, clf.classes)

    def _preprocess(self, clf: Classifier, data: bytes) -> np.ndarray:
        start = time.perf_counter()
        x = clf.preprocess(data)
        telemetry.observe_preprocess(time.perf_counter() - start)
        return x

    async def _scores(self, served: Served, images: list[bytes], endpoint: str) -> list[np.ndarray | ServiceError]:
        clf = served.classifier
        telemetry.observe_images(endpoint, len(images))
        loop = asyncio.get_running_loop()

        async def one(data: bytes) -> np.ndarray | ServiceError:
            try:
                x = await loop.run_in_executor(self._decode_pool, self._preprocess, clf, data)
            except ImageError as exc:
                return from_image_error(exc)
            finally:
                served.batcher.coming -= 1  # in the same step as the submit below: never a gap
            return (await self._infer(served, [x], data))[0]

        served.batcher.coming += len(images)
        self.arrivals.arrived()
        if len(images) == 1:  # most requests: no task of its own for the one image
            return [await one(images[0])]
        return list(await asyncio.gather(*(one(d) for d in images)))

    async def _infer(self, served: Served, xs: list[np.ndarray], data: bytes | None) -> list[np.ndarray]:
        """``served``'s answers for preprocessed images (``data``: the one image's encoded bytes, if known), told
        to the rollout when there is one."""
        rollout = self.rollout
        submit = served.batcher.submit_many(xs) if len(xs) > 1 else served.batcher.submit_one(xs[0])
        if rollout is None or rollout.rollout is None:
            return await submit
        start = time.perf_counter()
        try:
            outs = await submit
        except Exception:
            for _ in xs:
                rollout.failed(served)
            raise
        seconds = time.perf_counter() - start
        for x, out in zip(xs, outs, strict=True):
            rollout.answered(data, x, out, served, seconds)
        return outs

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
