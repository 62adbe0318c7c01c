"""Shadow scoring: another version scores a sample of live images beside the champion, off the answer's path.

The registry names the shadow (``POST /models/shadow``); every worker loads it within a poll interval, with
its own batcher, whose thread runs at low scheduling priority. The champion answers first; then, for a sampled
``fraction`` of images, the same preprocessed image goes to the shadow, whose answer is compared with the
champion's (top-1 by class name; multi-label: the label set). It is dropped, and counted, rather than queued
when the worker is busy (a full batch waiting for the champion) or the shadow already holds two batches: shadow
work never delays an answer. A disagreement can be captured for labelling (``IMGCLF_CAPTURE`` with
``disagreement``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable

import numpy as np

from service import telemetry
from service.inference.answers import decide
from service.retraining.records import Shadow
from service.retraining.registry import Registry
from service.serving.follower import Served

log = logging.getLogger(__name__)


class ShadowScorer:
    def __init__(self, model_name: str, registry: Registry, build: Callable[[str], Served],
                 on_disagreement: Callable[[bytes, np.ndarray, str, list[str]], None] | None = None):  # fmt: skip
        self.model_name = model_name
        self.registry = registry
        self.build = build
        self.on_disagreement = on_disagreement
        self.served: Served | None = None
        self.config: Shadow | None = None
        self._failed: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self.counts = {"agreed": 0, "disagreed": 0, "dropped": 0, "failed": 0}

    # ------------------------------------------------------------ the periodic thread
    def poll(self) -> None:
        """Follow the registry: load the named shadow, or let the current one go."""
        config = self.registry.shadow(self.model_name)
        if config is None:
            self._failed = None  # a version that failed may be named again later, and is then retried
        current = self.served.classifier.tag if self.served else None
        if config is not None and config.tag == current:
            self.config = config
            return
        if config is not None and config.tag == self._failed:
            return
        new = None
        if config is not None:
            try:
                new = self.build(config.tag)
            except Exception as exc:  # noqa: BLE001 - the champion serves on
                self._failed = config.tag
                log.error("cannot load the shadow %s (the champion serves on): %s", config.tag, exc)
                return
            log.info("shadowing %s on %.0f%% of images", config.tag, 100 * config.fraction)
        old, self.served, self.config = self.served, new, config
        self.counts = dict.fromkeys(self.counts, 0)
        telemetry.set_shadow(config.tag if config else None)
        if old is not None:
            threading.Thread(target=old.retire, daemon=True, name="retire-shadow").start()

    # ------------------------------------------------------------ the event loop
    def offer(self, data: bytes, x: np.ndarray, answer: np.ndarray, champion: Served) -> None:
        """One image the champion has answered (never waits: a coin, two counters, at most a task)."""
        served, config = self.served, self.config
        if served is None or config is None or random.random() >= config.fraction:
            return
        limit = served.batcher.max_batch_size
        if champion.batcher.pending > champion.batcher.max_batch_size or served.batcher.pending >= 2 * limit:
            self._count("dropped")
            return
        task = asyncio.get_running_loop().create_task(self._score(served, data, x, answer, champion))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, served: Served, data: bytes, x: np.ndarray, answer: np.ndarray, champion: Served) -> None:
        served.in_flight += 1
        try:
            out = await served.batcher.submit(x)
        except Exception as exc:  # noqa: BLE001 - counted: a shadow that fails is a finding, not an outage
            log.debug("shadow %s failed on an image: %s", served.classifier.tag, exc)
            self._count("failed")
            return
        finally:
            served.in_flight -= 1
        mine, theirs = champion.classifier, served.classifier
        ours = {mine.classes[i] for i in decide(mine.task, answer, None).predicted}
        shadow = {theirs.classes[i] for i in decide(theirs.task, out, None).predicted}
        self._count("agreed" if ours == shadow else "disagreed")
        if ours != shadow and self.on_disagreement is not None:
            self.on_disagreement(data, answer, mine.tag, mine.classes)

    def _count(self, result: str) -> None:
        self.counts[result] += 1
        telemetry.SHADOW_IMAGES.labels(result).inc()
        compared = self.counts["agreed"] + self.counts["disagreed"]
        if compared:
            telemetry.SHADOW_AGREEMENT.set(self.counts["agreed"] / compared)

    def status(self) -> dict | None:
        """The shadow named in the registry and what this worker has seen of it."""
        if self.config is None:
            return None
        compared = self.counts["agreed"] + self.counts["disagreed"]
        agreement = self.counts["agreed"] / compared if compared else None
        seen = {**self.counts, "compared": compared, "agreement": agreement}
        return {**self.config.model_dump(), "loaded": self.served is not None, "this_worker": seen}

    async def close(self) -> None:
        if self.served is not None:
            await self.served.batcher.close()
