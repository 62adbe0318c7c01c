"""Classification metrics as functions of arrays (scikit-learn does the maths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], top_k: int = 5) -> dict:
    """Accuracy, top-k, per-class P/R/F1, macro/weighted averages, confusion matrix, OvR ROC AUC.

    ``probs`` is (N, C) with rows summing to 1; ``targets`` holds class indices. Classes absent
    from ``targets`` get zero support; ROC AUC is ``None`` when it is undefined (one class present).
    """
    n_classes = len(classes)
    labels = np.arange(n_classes)
    preds = probs.argmax(axis=1)
    p, r, f1, support = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    out: dict = {
        "num_samples": int(len(targets)),
        "accuracy": float(accuracy_score(targets, preds)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
    }
    k = min(top_k, n_classes - 1)
    if k >= 2:
        out[f"top{k}_accuracy"] = float(top_k_accuracy_score(targets, probs, k=k, labels=labels))
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(targets, preds, labels=labels, average=avg, zero_division=0)
        out[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    out["roc_auc_ovr"] = _roc_auc(targets, probs, labels)
    return out


def _roc_auc(targets: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> float | None:
    present = np.unique(targets)
    if len(present) < 2:
        return None
    if len(labels) == 2:
        return float(roc_auc_score(targets, probs[:, 1]))
    # One-vs-rest over the classes present in the targets, renormalised to their probability mass.
    sub = probs[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    if len(present) == 2:
        return float(roc_auc_score(targets == present[1], sub[:, 1]))
    return float(roc_auc_score(targets, sub, multi_class="ovr", labels=present))
