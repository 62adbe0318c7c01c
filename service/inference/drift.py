"""The drift monitor of one served model: a sampled sliding window of live embeddings, tested against the
reference stored with the model (the method and its calibration: :mod:`training.drift`).

``observe`` runs on the inference thread after each batch and only samples, projects (a (m, D) x (D, 32)
product) and writes into a ring of ``window`` rows: memory is fixed, and a window of 200 costs a few
kilobytes. ``check`` computes the statistic (on the periodic thread, every ``registry_poll_seconds``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np

from training.drift import METHOD, DriftReference, class_shift


@dataclass(frozen=True)
class DriftStatus:
    score: float  # the statistic over its calibrated threshold: 1 is the alarm line
    statistic: float  # biased MMD² of the window against the reference
    threshold: float
    p_value: float  # from the calibrated null distribution; 1.0 until the window is full
    detected: bool  # a full window's statistic above the threshold (false-alarm rate about alpha)
    images: int  # sampled images in the window now
    window: int  # images a full window holds
    class_shift: float  # total variation between live and reference predicted-class frequencies
    mean_confidence: float  # live, over the window
    low_confidence_share: float  # live: share of the window below the low-confidence threshold
    reference_confidence: float  # on the validation split
    alpha: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


class DriftMonitor:
    def __init__(self, reference: DriftReference, sample: float = 0.5, low_confidence: float = 0.5, seed: int = 0):
        self.reference = reference
        self.sample = sample
        self.low_confidence = low_confidence
        n, dims = reference.window, reference.projection.shape[1]
        self._points = np.zeros((n, dims), np.float32)
        self._predicted = np.zeros(n, np.int64)
        self._confidence = np.zeros(n, np.float32)
        self._written = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.status = self._status(0.0, self._predicted[:0], self._confidence[:0])

    def observe(self, embeddings: np.ndarray, scores: np.ndarray) -> None:
        """One inference batch: its embeddings (N, D) and served scores (N, C)."""
        if self.sample < 1:
            keep = self._rng.random(len(embeddings)) < self.sample
            embeddings, scores = embeddings[keep], scores[keep]
        n = len(self._points)
        embeddings, scores = embeddings[-n:], scores[-n:]
        if not len(embeddings):
            return
        points = self.reference.project(embeddings)
        with self._lock:
            rows = (self._written + np.arange(len(points))) % n
            self._points[rows] = points
            self._predicted[rows] = scores.argmax(1)
            self._confidence[rows] = scores.max(1)
            self._written += len(points)

    def check(self) -> DriftStatus:
        """Test the window now (the reference's window size, else quiet); the result is also ``status``."""
        with self._lock:
            filled = min(self._written, len(self._points))
            points, predicted = self._points[:filled].copy(), self._predicted[:filled].copy()
            confidence = self._confidence[:filled].copy()
        statistic = self.reference.statistic(points) if filled == self.reference.window else 0.0
        self.status = self._status(statistic, predicted, confidence)
        return self.status

    def _status(self, statistic: float, predicted: np.ndarray, confidence: np.ndarray) -> DriftStatus:
        ref, filled = self.reference, len(predicted)
        threshold = ref.threshold
        return DriftStatus(score=statistic / threshold if threshold > 0 else 0.0, statistic=statistic,
                           threshold=threshold, p_value=ref.p_value(statistic) if filled == ref.window else 1.0,
                           detected=filled == ref.window and statistic > threshold, images=filled,
                           window=ref.window, class_shift=class_shift(ref.class_freq, predicted) if filled else 0.0,
                           mean_confidence=float(confidence.mean()) if filled else 0.0,
                           low_confidence_share=float((confidence < self.low_confidence).mean()) if filled else 0.0,
                           reference_confidence=ref.mean_confidence, alpha=ref.alpha, method=METHOD)  # fmt: skip
