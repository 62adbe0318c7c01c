"""What a model predicts and how its outputs are read, saved with the model.

- ``multiclass``: one class per image, softmax.
- ``multilabel``: any number of labels per image, one sigmoid per label; a label is predicted when
  its score reaches its own threshold (tuned for F1 on the validation split at training time).
- ``hierarchical``: the classes are the leaves of a tree (softmax over leaves); a node's probability
  is the sum of its leaves', so predictions can be read at any level of the tree.

:class:`TaskSpec` is plain numpy, shared by training, evaluation, the promotion gate and serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import nn

from .calibration import Calibration
from .data.splits import Sample
from .metrics import classification_metrics, hierarchy_metrics, multilabel_metrics, sigmoid, softmax
from .taxonomy import Taxonomy

MULTICLASS, MULTILABEL, HIERARCHICAL = "multiclass", "multilabel", "hierarchical"


@dataclass
class TaskSpec:
    kind: str
    classes: list[str]
    thresholds: np.ndarray | None = None  # multilabel: one per class
    taxonomy: Taxonomy | None = None  # hierarchical
    calibration: Calibration | None = None  # fitted at the end of training; scores are calibrated
    _levels: dict[int, tuple[list[str], np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> TaskSpec:
        classes = list(meta["classes"])
        kind = meta.get("task", MULTICLASS)
        thresholds = meta.get("thresholds")
        return cls(
            kind, classes,
            np.array([float(thresholds.get(c, 0.5)) for c in classes]) if kind == MULTILABEL and thresholds else
            (np.full(len(classes), 0.5) if kind == MULTILABEL else None),
            Taxonomy.from_obj(meta["taxonomy"]) if kind == HIERARCHICAL and meta.get("taxonomy") else None,
            Calibration.from_json(meta["calibration"], classes) if meta.get("calibration") else None,
        )  # fmt: skip

    def metadata(self) -> dict[str, Any]:
        """What the store keeps (``task``, ``thresholds`` by label, ``taxonomy`` as child -> parent)."""
        out: dict[str, Any] = {"task": self.kind}
        if self.thresholds is not None:
            out["thresholds"] = {c: round(float(t), 6) for c, t in zip(self.classes, self.thresholds, strict=True)}
        if self.taxonomy is not None:
            out["taxonomy"] = self.taxonomy.to_json()
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_json(self.classes)
        return out

    @property
    def multilabel(self) -> bool:
        return self.kind == MULTILABEL

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Scores from logits (calibrated when the model was): sigmoids for multi-label, a softmax otherwise."""
        if self.calibration is not None:
            logits = self.calibration.apply(logits)
        return sigmoid(logits) if self.multilabel else softmax(logits)

    def decisions(self, scores: np.ndarray) -> np.ndarray:
        """What is predicted: the top class (N,), or the labels at/above threshold (N, L) booleans."""
        if self.multilabel:
            return scores >= self.thresholds[None, :]
        return scores.argmax(1)

    def metrics(self, targets: np.ndarray, scores: np.ndarray, top_k: int = 5) -> dict[str, Any]:
        """The task's metric set: mAP and per-label for multi-label; accuracy, per class (and per level)."""
        if self.multilabel:
            return multilabel_metrics(targets, scores, self.classes, self.thresholds)
        out = classification_metrics(targets, scores, self.classes, top_k)
        if self.taxonomy is not None:
            out["hierarchy"] = hierarchy_metrics(targets, scores, self.classes, self.taxonomy)
        return out

    def agreement(self, a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        """(agreeing images, images) between two runs' :meth:`decisions` (multi-label: the same label set)."""
        same = (a == b).all(axis=1) if self.multilabel else a == b
        return int(same.sum()), len(same)

    # ------------------------------------------------------------ hierarchy
    @property
    def depth(self) -> int:
        return self.taxonomy.max_depth(self.classes) if self.taxonomy else 1

    def levels(self) -> list[list[str]]:
        """The nodes of each tree level, the top first (hierarchical models; empty otherwise)."""
        return [self.level(d)[0] for d in range(1, self.depth + 1)] if self.taxonomy is not None else []

    def level(self, level: int) -> tuple[list[str], np.ndarray]:
        """(nodes at ``level``, leaves-to-nodes matrix); ``probs @ matrix`` are the nodes' probabilities."""
        assert self.taxonomy is not None
        if level not in self._levels:
            self._levels[level] = self.taxonomy.level_matrix(self.classes, level)
        return self._levels[level]


# ---------------------------------------------------------------- training-side helpers (torch)
def multi_hot(samples: Sequence[Sample], num_labels: int) -> torch.Tensor:
    out = torch.zeros((len(samples), num_labels), dtype=torch.float32)
    for i, s in enumerate(samples):
        out[i, list(s.targets)] = 1.0
    return out


def positive_weights(samples: Sequence[Sample], num_labels: int, cap: float) -> torch.Tensor:
    """Per label, negatives / positives in ``samples`` (capped): rare labels count as much as common ones."""
    pos = multi_hot(samples, num_labels).sum(0)
    return ((len(samples) - pos) / pos.clamp(min=1)).clamp(min=1.0, max=cap)


def multilabel_loss(cfg, samples: Sequence[Sample], num_labels: int) -> nn.Module:
    """BCE-with-logits (positives weighted per label) or the asymmetric loss, from ``cfg.multilabel``."""
    m = cfg.multilabel
    weight = positive_weights(samples, num_labels, m.pos_weight_max) if m.pos_weight else None
    if m.loss == "asl":
        return AsymmetricLossMultiLabel(gamma_neg=m.asl_gamma_neg, gamma_pos=m.asl_gamma_pos, clip=m.asl_clip,
                                        pos_weight=weight)  # fmt: skip
    return nn.BCEWithLogitsLoss(pos_weight=weight)
