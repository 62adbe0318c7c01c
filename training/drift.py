"""Input drift as the model sees it: a reference stored with the model, and a calibrated two-sample test.

**Method.** Maximum mean discrepancy (MMD, Gretton et al. 2012) with a Gaussian kernel between a window of
live penultimate-layer embeddings and a reference sample of the validation split's embeddings. The embeddings
are standardised with the reference's per-dimension mean and standard deviation and reduced by a fixed random
Gaussian projection to ``dims`` dimensions ("Failing Loudly", Rabanser et al. 2019, found random projections
with MMD among the most reliable shift detectors); the kernel width is the median pairwise distance of the
reference (the median heuristic).

**Calibration.** The statistic (biased MMD², window of exactly ``window`` images) is computed for ``trials``
windows drawn from *held-out* validation images (not in the reference sample): its distribution when nothing
has changed. The threshold is that distribution's ``1 - alpha`` quantile, so a window of unchanged images
raises the alarm with probability about ``alpha``; a live window's p-value is read off the same distribution.
The class-distribution shift (total variation between predicted-class frequencies) and the mean confidence
are reported beside it, uncalibrated.

Pure numpy: training fits a :class:`DriftReference` (:func:`fit_reference`), the serving monitor reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DRIFT_FILE = "drift.npz"
METHOD = "MMD (Gaussian kernel, median-heuristic width) on a random projection of the penultimate-layer embedding"
MIN_IMAGES = 40  # fewer validation images than this: no reference (a test of 10 against 10 says little)


@dataclass
class DriftReference:
    mean: np.ndarray  # (D,) of the raw embedding
    scale: np.ndarray  # (D,)
    projection: np.ndarray  # (D, dims)
    reference: np.ndarray  # (n, dims): the projected reference sample
    bandwidth: float  # 2 sigma^2 of the Gaussian kernel
    reference_kernel_mean: float  # mean k(r, r') over the reference: the constant term of MMD²
    null: np.ndarray  # (trials,) sorted statistics of unchanged windows
    alpha: float
    window: int
    class_freq: np.ndarray  # (C,) predicted-class frequencies on the validation split
    mean_confidence: float

    @property
    def threshold(self) -> float:
        return float(np.quantile(self.null, 1 - self.alpha))

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        z = (np.asarray(embeddings, np.float32) - self.mean) / self.scale
        return (z @ self.projection).astype(np.float32)

    def statistic(self, window: np.ndarray) -> float:
        """Biased MMD² of a projected window against the reference."""
        return _mmd2(self.reference, self.reference_kernel_mean, window, self.bandwidth)

    def p_value(self, statistic: float) -> float:
        """Share of unchanged windows at least as far from the reference (with the +1 of a permutation test)."""
        above = len(self.null) - np.searchsorted(self.null, statistic, side="left")
        return float((above + 1) / (len(self.null) + 1))

    def summary(self) -> dict:
        return {"method": METHOD, "window": self.window, "alpha": self.alpha, "threshold": self.threshold,
                "reference_images": len(self.reference), "null_windows": len(self.null),
                "dims": int(self.projection.shape[1]), "mean_confidence": self.mean_confidence}  # fmt: skip

    def save(self, path: Path) -> None:
        np.savez(path, **{k: np.asarray(v) for k, v in vars(self).items()})

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        scalars = {"bandwidth": float, "reference_kernel_mean": float, "alpha": float, "window": int,
                   "mean_confidence": float}  # fmt: skip
        return cls(**{k: scalars[k](v) if k in scalars else v for k, v in arrays.items()})


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)


def _kernel_mean(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    return float(np.exp(-_sq_dist(a, b) / bandwidth).mean())


def _mmd2(reference: np.ndarray, reference_kernel_mean: float, window: np.ndarray, bandwidth: float) -> float:
    return (
        reference_kernel_mean + _kernel_mean(window, window, bandwidth) - 2 * _kernel_mean(reference, window, bandwidth)
    )


def fit_reference(
    embeddings: np.ndarray,
    scores: np.ndarray,
    *,
    window: int = 200,
    alpha: float = 0.01,
    dims: int = 32,
    reference_size: int = 1000,
    trials: int = 200,
    seed: int = 0,
) -> DriftReference | None:
    """The reference of one model from its validation split: ``embeddings`` (N, D) and ``scores`` (N, C).

    Half the images (at most ``reference_size``) form the reference sample, the others the held-out pool the
    threshold is calibrated on; ``window`` shrinks to half the pool on a small split. None below
    :data:`MIN_IMAGES` images.
    """
    n = len(embeddings)
    if n < MIN_IMAGES:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_ref = min(reference_size, n // 2)
    ref_idx, pool_idx = order[:n_ref], order[n_ref:]
    window = min(window, len(pool_idx) // 2)  # null windows must differ from one another
    emb = np.asarray(embeddings, np.float32)
    mean = emb[ref_idx].mean(0)
    scale = emb[ref_idx].std(0) + 1e-6
    projection = rng.normal(size=(emb.shape[1], dims)).astype(np.float32) / np.sqrt(dims)
    projected = (((emb - mean) / scale) @ projection).astype(np.float32)
    reference = projected[ref_idx]
    bandwidth = float(np.median(_sq_dist(reference, reference)[np.triu_indices(n_ref, 1)])) or 1.0
    ref_mean = _kernel_mean(reference, reference, bandwidth)
    pool = projected[pool_idx]
    null = np.sort([_mmd2(reference, ref_mean, pool[rng.choice(len(pool), window, replace=False)], bandwidth)
                    for _ in range(trials)])  # fmt: skip
    predicted = np.asarray(scores).argmax(1)
    class_freq = np.bincount(predicted, minlength=scores.shape[1]) / len(predicted)
    return DriftReference(mean, scale, projection, reference, bandwidth, ref_mean, np.asarray(null, np.float64),
                          alpha, window, class_freq, float(np.asarray(scores).max(1).mean()))  # fmt: skip


def class_shift(reference_freq: np.ndarray, predicted: np.ndarray) -> float:
    """Total variation distance between the reference's and a window's predicted-class frequencies (0..1)."""
    live = np.bincount(predicted, minlength=len(reference_freq)) / max(len(predicted), 1)
    return float(0.5 * np.abs(live - reference_freq).sum())
