"""A worker's part of a rollout: load the challenger the registry names, send it its share of the traffic,
count what both sides do, and report the counts to the registry (where one worker judges them).

**Shadow**: the champion answers; then, for a sampled ``fraction`` of images, the same preprocessed image goes to
the challenger in its own batcher, whose thread runs at low scheduling priority, and the two answers are compared
(top-1 by class name; multi-label: the label set). It is dropped, and counted, rather than queued when the worker
is busy (a full batch waiting for the champion) or the shadow already holds two batches: shadow work never delays
an answer. A disagreement can be captured for labelling (``IMGCLF_CAPTURE`` with ``disagreement``).

**Canary**: a ``fraction`` of requests is answered by the challenger, at the champion's priority; the answer's
``model`` says which version answered.

Both: each side's images, failures, answers below the low-confidence line and model latency (from the batcher's
queue to the answer) go into this worker's :class:`~service.retraining.rollout.Tally` for the stage, written to
the registry on every poll; a sample of answered images is recorded by content, so feedback on them later
judges both sides.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable

import numpy as np

from service import telemetry
from service.inference.answers import decide
from service.retraining.records import Rollout
from service.retraining.registry import Registry, holder_id
from service.retraining.rollout import Tally
from service.serving.follower import Served

log = logging.getLogger(__name__)

MAX_ANSWERS = 5000  # images recorded by content per stage and worker, for the feedback guard
UNTIMED = 32  # a freshly loaded challenger's first answers are counted, not timed: a runtime's first batches are slow


class RolloutFollower:
    """``build(tag, nice)`` loads a challenger with its own batcher (``nice`` > 0: at low priority)."""

    def __init__(self, model_name: str, registry: Registry, build: Callable[[str, int], Served],
                 low_confidence: float,
                 on_disagreement: Callable[[bytes, np.ndarray, str, list[str]], None] | None = None):  # fmt: skip
        self.model_name = model_name
        self.registry = registry
        self.build = build
        self.low_confidence = low_confidence
        self.on_disagreement = on_disagreement
        self.worker = holder_id()
        self.rollout: Rollout | None = None
        self.served: Served | None = None  # the challenger, loaded for ``self._loaded_for``
        self._loaded_for: tuple[str, str] | None = None  # (tag, stage)
        self._failed: tuple[str, str] | None = None
        self._key: tuple[int, str] | None = None  # (rollout id, stage) that ``tally`` counts
        self.tally = Tally()
        self._answers: list[tuple[str, str, str]] = []
        self._recorded = 0
        self._untimed = 0  # answers of the loaded challenger not timed yet
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------ the periodic thread
    def poll(self) -> None:
        """Report this worker's counts, then follow the registry: load, reload or let go of the challenger."""
        self._report()
        rollout = self.registry.rollout(self.model_name)
        telemetry.set_rollout(rollout)
        if rollout is None:
            self._failed = None  # a version that failed may be rolled out again later, and is then retried
            self._key = None  # its last counts are reported: nothing more to write
            self._let_go(None)
            return
        want = (rollout.tag, rollout.stage or "")
        if want != self._loaded_for and want != self._failed:
            self.rollout = None  # nothing routed or counted while this stage's challenger loads
            try:
                new = self.build(rollout.tag, 10 if rollout.stage == "shadow" else 0)
            except Exception as exc:  # noqa: BLE001 - the champion serves on, and the rollout ends here
                self._failed = want
                self._let_go(None)
                reason = f"aborted in {rollout.stage}: the challenger does not load on {self.worker}: {exc}"
                if self.registry.step_rollout(rollout.id, rollout.stage or "", "aborted", reason, []) is not None:
                    telemetry.ROLLOUT_ABORTS.labels("load_failed").inc()
                log.error("%s (the champion serves on)", reason)
                return
            log.info("rollout of %s: %s on %.0f%% of %s", rollout.tag, rollout.stage, 100 * rollout.fraction,
                     "images" if rollout.stage == "shadow" else "requests")  # fmt: skip
            self._let_go(new)
            self._loaded_for, self._untimed = want, UNTIMED
        if want == self._failed:
            return
        key = (rollout.id, rollout.stage or "")
        if key != self._key:  # a new stage counts from zero (its tally replaced, never mixed with the last)
            self.tally, self._answers, self._recorded, self._key = Tally(), [], 0, key
        self.rollout = rollout

    def _let_go(self, new: Served | None) -> None:
        old, self.served = self.served, new
        if new is None:
            self.rollout, self._loaded_for = None, None
        if old is not None:
            threading.Thread(target=old.retire, daemon=True, name="retire-challenger").start()

    def _report(self) -> None:
        if self._key is None:
            return
        answers, self._answers = self._answers, []
        rollout_id, stage = self._key
        self.registry.report_rollout(rollout_id, stage, self.worker, self.tally.to_json(), answers)

    # ------------------------------------------------------------ the event loop
    def route(self, champion: Served) -> Served:
        """Who answers this request: the challenger for a canary's share, else the champion."""
        rollout, served = self.rollout, self.served
        if rollout is None or served is None or rollout.stage != "canary" or random.random() >= rollout.fraction:
            return champion
        return served

    def failed(self, served: Served) -> None:
        if self.rollout is not None and self.served is not None:
            self.tally.side(self._role(served)).failed()

    def answered(self, data: bytes | None, x: np.ndarray, out: np.ndarray, served: Served, seconds: float) -> None:
        """One image ``served`` answered in ``seconds`` (never waits: counters, a coin, at most a task)."""
        rollout = self.rollout
        if rollout is None or self.served is None:  # both sides counted over the same time, on every worker
            return
        role = self._role(served)
        clf = served.classifier
        verdict = decide(clf.task, out, None)
        self.tally.side(role).answered(self._timed(role, seconds), verdict.confidence < self.low_confidence)
        telemetry.ROLLOUT_IMAGES.labels(clf.tag).inc()
        if rollout.stage == "canary":
            # Both sides' answers kept at the same rate for the feedback guard: all of the challenger's share.
            share = 1.0 if role == "challenger" else rollout.fraction / max(1e-9, 1 - rollout.fraction)
            if data is not None and random.random() < share:
                self._record(data, role, clf.classes, verdict.predicted)
        elif role == "champion" and data is not None:
            self._offer(data, x, out, served)

    def _timed(self, role: str, seconds: float) -> float | None:
        if role == "challenger" and self._untimed > 0:
            self._untimed -= 1
            return None
        return seconds

    def _role(self, served: Served) -> str:
        return "challenger" if served is self.served else "champion"

    def _record(self, data: bytes, role: str, classes: list[str], predicted: list[int]) -> None:
        if self._recorded < MAX_ANSWERS and predicted:
            self._recorded += 1
            self._answers.append((hashlib.sha256(data).hexdigest(), role, classes[predicted[0]]))

    def _offer(self, data: bytes, x: np.ndarray, answer: np.ndarray, champion: Served) -> None:
        served, rollout = self.served, self.rollout
        if served is None or rollout is None or random.random() >= rollout.fraction:
            return
        limit = served.batcher.max_batch_size
        if champion.batcher.pending > champion.batcher.max_batch_size or served.batcher.pending >= 2 * limit:
            self.tally.dropped += 1
            telemetry.SHADOW_IMAGES.labels("dropped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._score(served, data, x, answer, champion, self.tally))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, served: Served, data: bytes, x: np.ndarray, answer: np.ndarray, champion: Served,
                     tally: Tally) -> None:  # fmt: skip
        served.in_flight += 1
        start = time.perf_counter()
        try:
            out = await served.batcher.submit(x)
        except Exception as exc:  # noqa: BLE001 - counted: a challenger that fails is a finding, not an outage
            log.debug("shadow %s failed on an image: %s", served.classifier.tag, exc)
            tally.challenger.failed()
            telemetry.SHADOW_IMAGES.labels("failed").inc()
            return
        finally:
            served.in_flight -= 1
        if served is not self.served or tally is not self.tally:  # the stage changed meanwhile: not its tally's
            return
        mine, theirs = champion.classifier, served.classifier
        ours_v, shadow_v = decide(mine.task, answer, None), decide(theirs.task, out, None)
        seconds = self._timed("challenger", time.perf_counter() - start)
        self.tally.challenger.answered(seconds, shadow_v.confidence < self.low_confidence)
        telemetry.ROLLOUT_IMAGES.labels(theirs.tag).inc()
        ours = {mine.classes[i] for i in ours_v.predicted}
        shadow = {theirs.classes[i] for i in shadow_v.predicted}
        agreed = ours == shadow
        self.tally.compared += 1
        self.tally.disagreed += not agreed
        telemetry.SHADOW_IMAGES.labels("agreed" if agreed else "disagreed").inc()
        telemetry.SHADOW_AGREEMENT.set(1 - self.tally.disagreed / self.tally.compared)
        self._record(data, "champion", mine.classes, ours_v.predicted)
        self._record(data, "challenger", theirs.classes, shadow_v.predicted)
        if not agreed and self.on_disagreement is not None:
            self.on_disagreement(data, answer, mine.tag, mine.classes)

    def status(self) -> dict | None:
        """What this worker has loaded and counted of the active rollout."""
        if self.rollout is None:
            return None
        return {"loaded": self.served is not None, "worker": self.worker, "stage": self.rollout.stage,
                **self.tally.summary()}  # fmt: skip

    async def close(self) -> None:
        if self.served is not None:
            await self.served.batcher.close()
