"""Capture of live images worth labelling (opt-in): what to keep (:func:`worth_labelling`, pure), and the
store that keeps it off the request path (:class:`Capturer`).

Kept: the image's bytes only (never a header, an address or anything else of the request), under
``<capture_dir>/<model name>/``, with the model's prediction in the registry. Bounded by a disk quota and a
retention time, sampled, and written by one background thread with a bounded queue (32 MiB of images): a
busy worker drops a capture (counted) rather than slow an answer or grow its memory. The labelling queue is
ordered by margin sampling: the smallest gap between the two best classes first, the images the model is
least sure how to separate.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from service import telemetry
from service.retraining.feedback import EXTENSIONS, write_once
from service.retraining.registry import Registry

log = logging.getLogger(__name__)

Reason = Literal["disagreement", "low_confidence", "near_tie", "drift", "random"]
REASONS: tuple[Reason, ...] = ("disagreement", "low_confidence", "near_tie", "drift", "random")
QUEUE_BYTES = 32 * 1024 * 1024  # captures waiting for the writer thread; past it they are dropped


@dataclass(frozen=True)
class Candidate:
    reason: Reason
    predicted: int
    confidence: float
    margin: float  # top-1 minus top-2 score

    @property
    def priority(self) -> float:
        return 1.0 - self.margin


def worth_labelling(scores: np.ndarray, reasons: frozenset[str], low_confidence: float, near_tie: float,
                    drifting: bool, disagreement: bool = False) -> Candidate | None:  # fmt: skip
    """Whether one answer's scores make its image worth a label, and why (the first reason that holds;
    ``disagreement``: the shadow version answered otherwise)."""
    order = np.argsort(scores)[::-1]
    confidence = float(scores[order[0]])
    margin = confidence - float(scores[order[1]]) if len(order) > 1 else 1.0
    checks: list[tuple[Reason, bool]] = [
        ("disagreement", disagreement),
        ("low_confidence", confidence < low_confidence),
        ("near_tie", margin < near_tie),
        ("drift", drifting),
        ("random", True),
    ]
    for reason, holds in checks:
        if reason in reasons and holds:
            return Candidate(reason, int(order[0]), confidence, margin)
    return None


class Capturer:
    """Offers from the classify path (``offer``), written by one background thread."""

    def __init__(self, registry: Registry, root: Path, model_name: str, reasons: list[str], sample: float,
                 max_bytes: int, low_confidence: float, near_tie: float,
                 drifting: Callable[[], bool] = lambda: False):  # fmt: skip
        self.registry = registry
        self.root = root
        self.model_name = model_name
        self.reasons = frozenset(reasons)
        self.sample = sample
        self.max_bytes = max_bytes
        self.low_confidence = low_confidence
        self.near_tie = near_tie
        self.drifting = drifting
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
        self._pending = 0  # bytes handed to the writer, not yet written
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.reasons) and self.sample > 0

    def offer(self, data: bytes, scores: np.ndarray, tag: str, classes: list[str], disagreement: bool = False) -> None:
        """One answered image (never blocks: a decision, a coin and at most a hand-off)."""
        if not self.enabled or random.random() >= self.sample:
            return
        candidate = worth_labelling(scores, self.reasons, self.low_confidence, self.near_tie, self.drifting(),
                                    disagreement)  # fmt: skip
        if candidate is None:
            return
        with self._lock:
            if self._pending + len(data) > QUEUE_BYTES:
                telemetry.CAPTURE_DROPPED.labels("busy").inc()
                return
            self._pending += len(data)
        self._writer.submit(self._write, data, candidate, tag, classes)

    def _write(self, data: bytes, candidate: Candidate, tag: str, classes: list[str]) -> None:
        try:
            if self.registry.capture_bytes(self.model_name) + len(data) > self.max_bytes:
                telemetry.CAPTURE_DROPPED.labels("quota").inc()
                return
            sha = hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as img:
                ext = EXTENSIONS.get(img.format or "", ".img")
            path = write_once(self.root / self.model_name / f"{sha[:32]}{ext}", data)
            c = candidate
            if self.registry.add_capture(self.model_name, sha, str(path), len(data), c.reason, tag,
                                         classes[c.predicted], c.confidence, c.margin):  # fmt: skip
                telemetry.CAPTURED.labels(c.reason).inc()
        except Exception as exc:  # noqa: BLE001 - a capture must never hurt serving
            telemetry.CAPTURE_DROPPED.labels("error").inc()
            log.warning("capture not kept: %s", exc)
        finally:
            with self._lock:
                self._pending -= len(data)

    def expire(self, older_than_hours: float) -> int:
        """Forget captures older than the retention time, files included; returns how many."""
        paths = self.registry.expire_captures(self.model_name, older_than_hours)
        for path in paths:
            Path(path).unlink(missing_ok=True)
        return len(paths)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
