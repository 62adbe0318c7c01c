"""What one worker serves: the classifier, its micro-batcher and the classify use-case (no HTTP here)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service import telemetry
from service.errors import InvalidInput, NotReady, PayloadTooLarge, ServiceError, from_image_error
from service.inference.answers import Answer, ClassifyQuery, answer, check_query
from service.inference.batching import MicroBatcher
from service.inference.classifier import Classifier, load_classifier
from service.retraining.registry import Registry
from service.settings import Settings
from training import store
from training.imaging import ImageError

log = logging.getLogger(__name__)
_ARRIVAL: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("imgclf_arrival")


def newest_tag(model_name: str) -> str:
    versions = store.list_versions(model_name)
    if not versions:
        raise store.StoreError(
            f"no version of {model_name!r} in the model store; train one first "
            f"(python -m training train --name {model_name}) or set IMGCLF_MODEL_NAME"
        )
    return str(versions[0].tag)


def candidate_tags(settings: Settings, registry: Registry | None) -> list[str]:
    """Versions to try at start-up, best first: the pinned tag; else the champion, then the earlier
    champions; else (no champion yet, or no registry) every stored version, newest first."""
    if settings.model_tag:
        return [settings.model_tag]
    if registry is not None:
        champions = registry.champion_tags(settings.model_name)
        if champions:
            return champions[::-1]
    tags = [str(v.tag) for v in store.list_versions(settings.model_name)]
    if not tags:
        raise store.StoreError(
            f"no version of {settings.model_name!r} in the model store; train one first "
            f"(python -m training train --name {settings.model_name}) or set IMGCLF_MODEL_NAME"
        )
    return tags


def resolve_tag(settings: Settings) -> str:
    """The version a server started with ``settings`` would serve (benchmarks measure that one): the pinned
    tag, else the registry's champion, else the newest version."""
    return candidate_tags(settings, Registry(settings.database_url, settings.database_timeout_seconds))[0]


@dataclass
class Served:
    """One loaded model with its own batcher: a request keeps the pair it started with."""

    classifier: Classifier
    batcher: MicroBatcher
    in_flight: int = 0

    def retire(self, grace_seconds: float = 60.0) -> None:
        """Close once the requests that started on this model have finished (called off the loop)."""
        deadline = time.monotonic() + grace_seconds
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        self.batcher.close_threadsafe()


@dataclass
class ClassifyResult:
    answer: Answer | None = None
    error: ServiceError | None = None


class ServingState:
    """Loads the model, owns the batcher; ``classify`` is the one path every endpoint takes.

    With a registry, a watcher thread follows the champion: a new one is loaded and warmed up
    beside the old, then swapped in with one assignment; requests already running finish on the
    model they started with, and the old model is closed after them.
    """

    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.registry = registry
        self.served: Served | None = None
        self._pre_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess")
        self._poll_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed: str | None = None
        self._watcher: threading.Thread | None = None
        self.tasks: list[Callable[[], object]] = []  # run on every poll (job sweeps, metrics)
        self._arriving = 0  # requests taken by the edge whose images are not yet with the batcher

    def load(self) -> None:
        """Serve the first candidate that loads (a damaged version must not keep the service down)."""
        candidates = candidate_tags(self.settings, self.registry)
        for tag in candidates:
            try:
                served = self._build(tag)
            except store.StoreError as exc:
                log.error("cannot serve %s: %s", tag, exc)
                self._failed = tag
                telemetry.RELOADS.labels("failed").inc()
                continue
            if self.registry is not None and not self.settings.model_tag:
                self.registry.ensure_champion(self.settings.model_name, tag)  # only when there is none yet
            if tag != candidates[0]:
                log.error("serving %s because %s does not load; roll back or promote a working version", tag,
                          candidates[0])  # fmt: skip
            self._swap(served)
            return
        raise store.StoreError(f"none of {', '.join(candidates)} can be loaded; see the errors above")

    def _build(self, tag: str) -> Served:
        clf = load_classifier(tag, self.settings)
        batcher = MicroBatcher(clf.infer, self.settings.max_batch_size, self.settings.max_latency_ms,
                               on_batch=telemetry.observe_batch)  # fmt: skip
        batcher.also_coming = lambda: self._arriving
        return Served(clf, batcher)

    # ------------------------------------------------------------ arrivals (what an idle batcher waits for)
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request from the moment the edge takes it: until its images are known (or it ends),
        an idle batcher holding other images waits for it (up to ``max_latency_ms``)."""
        cell = [True]
        token = _ARRIVAL.set(cell)
        self._arriving += 1
        try:
            yield
        finally:
            _ARRIVAL.reset(token)
            if cell[0]:
                self._arriving -= 1

    def _arrived(self) -> None:
        """This request's images are now counted by the batcher (or submitted): stop counting the request."""
        cell = _ARRIVAL.get(None)
        if cell is not None and cell[0]:
            cell[0] = False
            self._arriving -= 1

    def _swap(self, new: Served) -> None:
        old, self.served = self.served, new
        telemetry.set_model_info(new.classifier.tag, new.classifier.runtime.name, new.classifier.load_seconds)
        if old is not None:
            log.info("now serving %s (was %s)", new.classifier.tag, old.classifier.tag)
            threading.Thread(target=old.retire, daemon=True, name="retire-model").start()

    # ------------------------------------------------------------ following the registry
    def start_watching(self) -> None:
        """Follow the champion (unless a tag is pinned) and run ``tasks`` every poll interval."""
        if self.registry is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="registry-watcher")
        self._watcher.start()

    def wake(self) -> None:
        """Poll now (after a promotion or rollback this worker handled)."""
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.registry_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a registry outage must not stop serving
                log.error("registry poll failed (serving continues with %s): %s",
                          self.served.classifier.tag if self.served else "nothing", exc)  # fmt: skip
            for task in self.tasks:
                try:
                    task()
                except Exception as exc:  # noqa: BLE001
                    log.error("periodic task %s failed: %s", getattr(task, "__name__", task), exc)

    def poll(self) -> bool:
        """Swap in the champion if it changed; returns whether a swap happened."""
        assert self.registry is not None
        with self._poll_lock:
            tag = self.registry.champion(self.settings.model_name)
            if tag:
                telemetry.set_champion(self.settings.model_name, tag)
            if self.settings.model_tag or not tag or (self.served and tag == self.served.classifier.tag):
                return False
            if tag == self._failed:
                return False  # already failed to load; wait for the next champion change
            log.info("champion changed to %s; loading it", tag)
            try:
                new = self._build(tag)
            except Exception as exc:  # noqa: BLE001 - keep serving the old model
                self._failed = tag
                telemetry.RELOADS.labels("failed").inc()
                log.error("could not load the new champion %s; still serving %s: %s", tag,
                          self.served.classifier.tag if self.served else "nothing", exc)  # fmt: skip
                return False
            self._swap(new)
            self._failed = None
            telemetry.RELOADS.labels("ok").inc()
            return True

    # ------------------------------------------------------------ classify
    @property
    def classifier(self) -> Classifier | None:
        return self.served.classifier if self.served else None

    @property
    def ready(self) -> bool:
        return self.served is not None

    def require(self) -> Classifier:
        if self.served is None:
            raise NotReady("the model is still loading; retry shortly")
        return self.served.classifier

    def _preprocess(self, clf: Classifier, data: bytes) -> np.ndarray:
        start = time.perf_counter()
        x = clf.preprocess(data)
        telemetry.PREPROCESS_SECONDS.observe(time.perf_counter() - start)
        return x

    @contextlib.contextmanager
    def _use(self) -> Iterator[Served]:
        """The model this request runs on from start to end, whatever swaps meanwhile."""
        self.require()
        served = self.served
        assert served is not None
        served.in_flight += 1
        try:
            yield served
        finally:
            served.in_flight -= 1

    def admit(self, count: int, sizes: list[int] | None = None) -> None:
        """The one admission rule for every protocol and input form: at most ``max_batch_images`` images a
        request, each encoded image at most ``max_upload_bytes`` (pixels and decode budget are checked by
        the decoder, the same for all). Raises :class:`PayloadTooLarge` or :class:`InvalidInput`."""
        limit = self.settings.max_batch_images
        if count < 1:
            raise InvalidInput("the request holds no images", reason="no_images")
        if count > limit:
            raise PayloadTooLarge(f"{count} images in one request; the maximum is {limit}", reason="too_many_images")
        for i, size in enumerate(sizes or ()):
            if size > self.settings.max_upload_bytes:
                raise PayloadTooLarge(f"image {i} is {size} bytes; the maximum is {self.settings.max_upload_bytes} "
                                      "bytes", reason="too_large")  # fmt: skip

    async def classify(
        self, images: list[bytes], query: ClassifyQuery, endpoint: str
    ) -> tuple[Classifier, list[ClassifyResult]]:
        """The model's answer for each image (see :mod:`service.inference.answers`) and the model that gave it.

        A bad image gets its own error and does not fail the others; a bad query fails the request.
        """
        self.admit(len(images), [len(d) for d in images])
        with self._use() as served:
            clf = served.classifier
            query = check_query(clf.task, query, self.settings.default_top_k)
            outputs = await self._probabilities(served, images, endpoint)
        return clf, [ClassifyResult(error=out) if isinstance(out, ServiceError) else
                     ClassifyResult(answer(clf.task, out, query)) for out in outputs]  # fmt: skip

    async def probabilities(self, images: list[bytes], endpoint: str) -> tuple[Classifier, list]:
        """Class probabilities (or a :class:`ServiceError`) per encoded image, and the model that answered."""
        self.admit(len(images), [len(d) for d in images])
        with self._use() as served:
            return served.classifier, await self._probabilities(served, images, endpoint)

    async def probabilities_of_tensors(self, batch: np.ndarray, endpoint: str) -> tuple[Classifier, np.ndarray]:
        """Probabilities for already-preprocessed float32 images (N, C, H, W) of the served model's shape."""
        self.admit(len(batch) if batch.ndim else 0)
        with self._use() as served:
            clf = served.classifier
            if batch.ndim != 4 or tuple(batch.shape[1:]) != clf.input_shape:
                c, h, w = clf.input_shape
                raise InvalidInput(f"preprocessed input must have shape [N, {c}, {h}, {w}], got "
                                   f"{list(batch.shape)}", reason="bad_shape")  # fmt: skip
            telemetry.IMAGES.labels(endpoint).inc(len(batch))
            self._arrived()
            rows = await asyncio.gather(*(self._submit(served, x) for x in batch.astype(np.float32, copy=False)))
            return clf, np.stack(rows)

    async def _probabilities(self, served: Served, images: list[bytes], endpoint: str) -> list:
        clf = served.classifier
        telemetry.IMAGES.labels(endpoint).inc(len(images))
        loop = asyncio.get_running_loop()

        async def one(data: bytes) -> np.ndarray | ServiceError:
            try:
                x = await loop.run_in_executor(self._pre_pool, self._preprocess, clf, data)
            except ImageError as exc:
                err = from_image_error(exc)
                telemetry.REJECTED.labels(endpoint, err.reason).inc()
                err.counted = True
                return err
            finally:
                served.batcher.coming -= 1  # in the same step as the submit below: never a gap
            return await self._submit(served, x)

        served.batcher.coming += len(images)
        self._arrived()
        return list(await asyncio.gather(*(one(d) for d in images)))

    async def _submit(self, served: Served, x: np.ndarray) -> np.ndarray:
        probs = await served.batcher.submit(x)
        clf = served.classifier
        top = int(np.argmax(probs))
        # Multi-label: every label at/above its threshold is a prediction; the confidence is the top score.
        predicted = np.flatnonzero(clf.task.decisions(probs[None])[0]) if clf.task.multilabel else [top]
        telemetry.observe_prediction(clf.tag, [clf.classes[i] for i in predicted], float(probs[top]),
                                   self.settings.low_confidence)  # fmt: skip
        return probs

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.served is not None:
            await self.served.batcher.close()
        self._pre_pool.shutdown(wait=False, cancel_futures=True)
