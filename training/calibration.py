"""Scores that mean what they say: calibration fitted on the validation split at the end of training (pure).

- multi-class and hierarchical: one temperature ``T`` (softmax of ``logits / T``) minimising the validation
  negative log-likelihood (Guo et al., 2017); top-1 decisions do not change;
- multi-label: per-label Platt scaling (sigmoid of ``a * logit + b``, ``a > 0``), fitted by logistic
  regression on each label's validation logits; the ranking within a label does not change (nor its AP).

Measured by the expected calibration error (ECE, 15 equal-width bins): of the top-1 confidence for one label
an image, of every label's score for multi-label models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

BINS = 15


@dataclass
class Calibration:
    method: str  # "temperature" or "platt"
    temperature: float = 1.0
    slopes: np.ndarray | None = None  # platt: one a per label
    intercepts: np.ndarray | None = None  # platt: one b per label

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits (the activation is the task's)."""
        if self.method == "platt":
            return logits * self.slopes[None, :] + self.intercepts[None, :]
        return logits / self.temperature

    def to_json(self, classes: list[str]) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "slopes": dict(zip(classes, map(float, self.slopes), strict=True)),
                    "intercepts": dict(zip(classes, map(float, self.intercepts), strict=True))}  # fmt: skip
        return {"method": "temperature", "temperature": float(self.temperature)}

    @classmethod
    def from_json(cls, data: dict[str, Any], classes: list[str]) -> Calibration:
        if data["method"] == "platt":
            slopes = np.array([float(data["slopes"].get(c, 1.0)) for c in classes])
            intercepts = np.array([float(data["intercepts"].get(c, 0.0)) for c in classes])
            return cls("platt", slopes=slopes, intercepts=intercepts)
        return cls("temperature", temperature=float(data["temperature"]))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature (0.05 to 20) that minimises the negative log-likelihood of ``targets``."""
    logits, rows = logits.astype(np.float64), np.arange(len(targets))

    def nll(log_t: float) -> float:
        return float(-_log_softmax(logits / np.exp(log_t))[rows, targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def fit_platt(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label (slope, intercept); a label with one kind of example only, or a fit that would reverse
    the ranking, keeps the identity (1, 0)."""
    from sklearn.linear_model import LogisticRegression

    slopes, intercepts = np.ones(logits.shape[1]), np.zeros(logits.shape[1])
    for j in range(logits.shape[1]):
        y = targets[:, j].astype(int)
        if y.min() == y.max():
            continue
        fit = LogisticRegression(C=1e4).fit(logits[:, j : j + 1].astype(np.float64), y)
        if fit.coef_[0, 0] > 0:
            slopes[j], intercepts[j] = fit.coef_[0, 0], fit.intercept_[0]
    return slopes, intercepts


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by the bin's share."""
    confidence, correct = np.asarray(confidence, float).ravel(), np.asarray(correct, float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def confidence_and_correct(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> tuple:
    """What ECE compares: top-1 confidence and correctness, or (multi-label) each label's score and truth."""
    if multilabel:
        return scores.ravel(), targets.ravel().astype(bool)
    return scores.max(1), scores.argmax(1) == targets


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Per non-empty bin: mean confidence, accuracy and share of the predictions (for the diagram)."""
    confidence, correct = np.asarray(confidence, float).ravel(), np.asarray(correct, float).ravel()
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "share": float((which == b).mean())} for b in range(bins) if (which == b).any()]  # fmt: skip


def fit(multilabel: bool, val_logits: np.ndarray, val_targets: np.ndarray) -> Calibration:
    if multilabel:
        slopes, intercepts = fit_platt(val_logits, val_targets)
        return Calibration("platt", slopes=slopes, intercepts=intercepts)
    return Calibration("temperature", temperature=fit_temperature(val_logits, val_targets))


def summary(calibration: Calibration, before: np.ndarray, after: np.ndarray, targets: np.ndarray,
            multilabel: bool) -> dict[str, Any]:  # fmt: skip
    """What the report keeps: the method (and temperature), the test ECE before and after, the diagram's bins."""
    b = confidence_and_correct(before, targets, multilabel)
    a = confidence_and_correct(after, targets, multilabel)
    out: dict[str, Any] = {"method": calibration.method}
    if calibration.method == "temperature":
        out["temperature"] = round(calibration.temperature, 6)
    return out | {"test_ece_before": expected_calibration_error(*b), "test_ece_after": expected_calibration_error(*a),
                  "bins_before": reliability_bins(*b), "bins_after": reliability_bins(*a)}  # fmt: skip
