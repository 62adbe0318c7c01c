"""Is the challenger worse than the champion, or only unlucky on this holdout? (pure)

Both models answer the same holdout images, so their results are paired: the accuracy difference gets a
bootstrap confidence interval (resampling images) and McNemar's exact test (only the images one model gets
right and the other wrong carry information); a multi-label model's mAP difference gets the bootstrap.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score

from service.retraining.records import PairedComparison

CONFIDENCE = 0.95


def compare_accuracy(challenger: np.ndarray, champion: np.ndarray, resamples: int = 4000,
                     seed: int = 0) -> PairedComparison:  # fmt: skip
    """``challenger`` / ``champion``: per-image correctness (bool) on the same images, in the same order."""
    a, b = np.asarray(challenger, bool), np.asarray(champion, bool)
    n = len(a)
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    # The difference only depends on how many images each model alone got right: resample those counts.
    counts = np.random.default_rng(seed).multinomial(n, [better / n, worse / n, 1 - (better + worse) / n], resamples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    low, high = np.quantile(diffs, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    p = binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
    return PairedComparison(metric="accuracy", test="paired bootstrap + McNemar exact", images=n,
                            difference=(better - worse) / n, ci_low=float(low), ci_high=float(high),
                            confidence=CONFIDENCE, p_value=float(p), challenger_only=better,
                            champion_only=worse)  # fmt: skip


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    present = targets.sum(0) > 0
    return float(np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in np.flatnonzero(present)]))


def compare_map(challenger: np.ndarray, champion: np.ndarray, targets: np.ndarray, resamples: int = 300,
                seed: int = 0) -> PairedComparison:  # fmt: skip
    """``challenger`` / ``champion``: per-image label scores (N, L) on the same images and labels."""
    rng = np.random.default_rng(seed)
    n = len(targets)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if targets[idx].sum() == 0:
            continue
        diffs.append(mean_ap(challenger[idx], targets[idx]) - mean_ap(champion[idx], targets[idx]))
    diff = mean_ap(challenger, targets) - mean_ap(champion, targets)
    d = np.asarray(diffs)
    low, high = np.quantile(d, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))  # bootstrap two-sided
    return PairedComparison(metric="map", test="paired bootstrap", images=n, difference=diff, ci_low=float(low),
                            ci_high=float(high), confidence=CONFIDENCE, p_value=p)  # fmt: skip
