"""Which model this worker serves: the first stored version that loads at start-up, then whatever the
registry names champion.

A new champion is loaded and warmed up beside the old one, then swapped in with one assignment; requests
already running finish on the model they started with, and the old model is closed after them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service import telemetry
from service.errors import NotReady
from service.inference import Classifier, MicroBatcher
from service.retraining.registry import Registry
from service.settings import Settings
from training import store

log = logging.getLogger(__name__)


def candidate_tags(model_name: str, pinned: str | None, registry: Registry | None) -> list[str]:
    """Versions to try at start-up, best first: the pinned tag; else the champion, then the earlier
    champions; else (no champion yet, or no registry) every stored version, newest first."""
    if pinned:
        return [pinned]
    if registry is not None:
        champions = registry.champion_tags(model_name)
        if champions:
            return champions[::-1]
    tags = [str(v.tag) for v in store.list_versions(model_name)]
    if not tags:
        raise store.StoreError(
            f"no version of {model_name!r} in the model store; train one first "
            f"(python -m training train --name {model_name}) or set IMGCLF_MODEL_NAME"
        )
    return tags


def resolve_tag(settings: Settings) -> str:
    """The version a server started with ``settings`` would serve (benchmarks measure that one)."""
    registry = Registry(settings.database_url, settings.database_timeout_seconds)
    return candidate_tags(settings.model_name, settings.model_tag, registry)[0]


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


class ModelFollower:
    """Loads, follows and swaps the served model; ``build(tag)`` makes a ready :class:`Served` (or raises)."""

    def __init__(self, model_name: str, pinned: str | None, registry: Registry | None,
                 build: Callable[[str], Served]):  # fmt: skip
        self.model_name = model_name
        self.pinned = pinned
        self.registry = registry
        self.build = build
        self.served: Served | None = None
        self._failed: str | None = None  # a champion that did not load: not retried until the champion changes
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.served is not None

    def require(self) -> Classifier:
        if self.served is None:
            raise NotReady()
        return self.served.classifier

    def load(self) -> None:
        """Serve the first candidate that loads (a damaged version must not keep the service down)."""
        candidates = candidate_tags(self.model_name, self.pinned, self.registry)
        for tag in candidates:
            try:
                served = self.build(tag)
            except store.StoreError as exc:
                log.error("cannot serve %s: %s", tag, exc)
                self._failed = tag
                telemetry.RELOADS.labels("failed").inc()
                continue
            if self.registry is not None and not self.pinned:
                self.registry.ensure_champion(self.model_name, tag)  # only when there is none yet
            if tag != candidates[0]:
                log.error("serving %s because %s does not load; roll back or promote a working version", tag,
                          candidates[0])  # fmt: skip
            self._swap(served)
            return
        raise store.StoreError(f"none of {', '.join(candidates)} can be loaded; see the errors above")

    def poll(self) -> bool:
        """Swap in the registry's champion if it changed; returns whether a swap happened."""
        if self.registry is None:
            return False
        with self._lock:
            tag = self.registry.champion(self.model_name)
            if tag:
                telemetry.set_champion(self.model_name, tag)
            if self.pinned or not tag or (self.served and tag == self.served.classifier.tag) or tag == self._failed:
                return False
            log.info("champion changed to %s; loading it", tag)
            try:
                new = self.build(tag)
            except Exception as exc:  # noqa: BLE001 - keep serving the old model
                self._failed = tag
                telemetry.RELOADS.labels("failed").inc()
                log.error("could not load the new champion %s; still serving %s: %s", tag, self._serving(), exc)
                return False
            self._swap(new)
            self._failed = None
            telemetry.RELOADS.labels("ok").inc()
            return True

    def _serving(self) -> str:
        return self.served.classifier.tag if self.served else "nothing"

    def _swap(self, new: Served) -> None:
        old, self.served = self.served, new
        clf = new.classifier
        telemetry.set_model_info(clf.tag, clf.runtime.name, clf.load_seconds)
        if old is not None:
            log.info("now serving %s (was %s)", clf.tag, old.classifier.tag)
            threading.Thread(target=old.retire, daemon=True, name="retire-model").start()

    async def close(self) -> None:
        if self.served is not None:
            await self.served.batcher.close()
