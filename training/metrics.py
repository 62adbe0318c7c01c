"""Classification metrics as functions of arrays (scikit-learn does the maths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
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


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


# ---------------------------------------------------------------- multi-label
def tune_thresholds(targets: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per label, the score threshold that maximises F1 on (``targets`` multi-hot, ``scores``) (N, L).

    A label with no positive example keeps ``default``. The threshold sits halfway between the
    chosen score and the next lower one, so it does not hang on one validation image's exact score.
    """
    thresholds = np.full(targets.shape[1], default, np.float64)
    for j in range(targets.shape[1]):
        t, s = targets[:, j].astype(bool), scores[:, j]
        if not t.any():
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted, t_sorted = s[order], t[order]
        tp = np.cumsum(t_sorted)
        k = np.arange(1, len(s_sorted) + 1)
        f1 = 2 * tp / (k + t.sum())
        last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # cut only between distinct scores
        f1 = np.where(last_of_tie, f1, -1)
        best = int(np.argmax(f1))
        below = s_sorted[best + 1] if best + 1 < len(s_sorted) else 0.0
        thresholds[j] = float((s_sorted[best] + below) / 2)
    return thresholds


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                       thresholds: Sequence[float]) -> dict:  # fmt: skip
    """mAP, per-label AP/P/R/F1, micro and macro F1, subset accuracy and Hamming loss.

    ``targets`` is multi-hot (N, L), ``scores`` the sigmoid outputs; a label is predicted when its
    score reaches its threshold. mAP averages AP over the labels with at least one positive.
    """
    y = targets.astype(bool)
    pred = scores >= np.asarray(thresholds)[None, :]
    p, r, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    ap = [float(average_precision_score(y[:, j], scores[:, j])) if y[:, j].any() else None
          for j in range(len(classes))]  # fmt: skip
    present = [a for a in ap if a is not None]
    out: dict = {
        "num_samples": int(len(y)),
        "map": float(np.mean(present)) if present else 0.0,
        "subset_accuracy": float((pred == y).all(axis=1).mean()) if len(y) else 0.0,
        "hamming_loss": float((pred != y).mean()) if len(y) else 0.0,
        "per_label": {
            name: {
                "ap": ap[j],
                "precision": float(p[j]),
                "recall": float(r[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
                "threshold": round(float(thresholds[j]), 6),
            }
            for j, name in enumerate(classes)
        },  # fmt: skip
    }
    for avg in ("micro", "macro"):
        ap_, ar, af, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        out[avg] = {"precision": float(ap_), "recall": float(ar), "f1": float(af)}
    return out


def pr_curves(targets: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> dict[str, tuple]:
    """Per label with positives: (precision, recall) arrays for plotting."""
    return {name: precision_recall_curve(targets[:, j], scores[:, j])[:2]
            for j, name in enumerate(classes) if targets[:, j].any()}  # fmt: skip


# ---------------------------------------------------------------- hierarchical
def hierarchy_metrics(targets: np.ndarray, probs: np.ndarray, leaves: Sequence[str], taxonomy) -> dict:
    """Accuracy at each depth (argmax of the level's summed probabilities) and how far mistakes land.

    ``mistakes`` counts wrong leaf predictions by tree distance (edges through the lowest common
    ancestor: 2 = a sibling); ``mean_mistake_distance`` averages it over the mistakes.
    """
    out: dict = {"levels": {}, "mistakes": {}, "mean_mistake_distance": None}
    if not len(targets):
        return out
    for level in range(1, taxonomy.max_depth(leaves) + 1):
        nodes, m = taxonomy.level_matrix(leaves, level)
        true_node = m[targets].argmax(1)
        accuracy = float(((probs @ m).argmax(1) == true_node).mean())
        out["levels"][str(level)] = {"nodes": len(nodes), "accuracy": accuracy}
    preds = probs.argmax(1)
    distances = [taxonomy.distance(leaves[t], leaves[p]) for t, p in zip(targets, preds, strict=True) if t != p]
    for d in sorted(set(distances)):
        out["mistakes"][str(d)] = distances.count(d)
    if distances:
        out["mean_mistake_distance"] = float(np.mean(distances))
    return out
