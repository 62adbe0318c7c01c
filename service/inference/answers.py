"""One image's scores -> the answer a client reads, per task (pure; no HTTP, no model).

- multi-class: the top-k classes;
- multi-label: every label at or above its threshold (``labels``), each prediction flagged
  ``positive`` with its ``threshold``; with ``top_k`` the k best labels by score instead;
- hierarchical: the top-k leaves, each with its ``path`` from the top (every ancestor's probability
  being the sum of its leaves'); with ``level`` the top-k nodes of that level instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput
from training.tasks import TaskSpec


@dataclass
class ClassifyQuery:
    """What a request asks of each image: ``top_k`` (None: the task's default) and a tree ``level``."""

    top_k: int | None = None
    level: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What the model decided for one image, decided once: the answer and the metrics both read it."""

    predicted: list[int]  # the top-1 class; multi-label: every label at or above its threshold
    confidence: float  # the top score
    abstained: bool | None = None  # with an abstain threshold: the top score is below it (None: no threshold)


@dataclass
class Answer:
    predictions: list[dict]
    verdict: Verdict
    labels: list[str] | None = None  # multi-label: the labels at or above their thresholds
    level: int | None = None


def decide(spec: TaskSpec, scores: np.ndarray, abstain_below: float | None = None) -> Verdict:
    top = int(np.argmax(scores))
    predicted = np.flatnonzero(scores >= spec.thresholds).tolist() if spec.multilabel else [top]
    confidence = float(scores[top])
    return Verdict(predicted, confidence, None if abstain_below is None else confidence < abstain_below)


def check_query(spec: TaskSpec, query: ClassifyQuery, default_k: int) -> ClassifyQuery:
    """Validate against the model: ``top_k`` >= 1 (capped at what there is), ``level`` within the tree."""
    if query.top_k is not None and query.top_k < 1:
        raise InvalidInput(f"top_k must be a positive integer, got {query.top_k}", reason="bad_top_k")
    if query.level is not None:
        if spec.taxonomy is None:
            raise InvalidInput(f"level applies to hierarchical models; this model is {spec.kind}", reason="bad_level")
        if not 1 <= query.level <= spec.depth:
            raise InvalidInput(f"level must be between 1 (the top) and {spec.depth} (the leaves), got {query.level}",
                               reason="bad_level")  # fmt: skip
    size = len(spec.level(query.level)[0]) if query.level else len(spec.classes)
    if query.top_k is None and spec.multilabel:
        return query  # every label above its threshold
    return ClassifyQuery(min(default_k if query.top_k is None else query.top_k, size), query.level)


def answer(spec: TaskSpec, scores: np.ndarray, query: ClassifyQuery, abstain_below: float | None = None) -> Answer:
    """``scores``: one image's probabilities (or multi-label sigmoids); ``query`` from :func:`check_query`.
    With ``abstain_below``, an image whose top score is below it is answered with ``abstained`` (the top-k
    are still listed)."""
    verdict = decide(spec, scores, abstain_below)
    if spec.multilabel:
        return _multilabel(spec, scores, query.top_k, verdict)
    if spec.taxonomy is not None:
        return _hierarchical(spec, scores, query, verdict)
    return Answer(_top(spec.classes, scores, query.top_k or 1), verdict)


def _top(names: list[str], scores: np.ndarray, k: int) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": names[i], "index": int(i), "score": float(scores[i])} for i in order]


def _multilabel(spec: TaskSpec, scores: np.ndarray, top_k: int | None, verdict: Verdict) -> Answer:
    assert spec.thresholds is not None
    positive = np.zeros(len(scores), bool)
    positive[verdict.predicted] = True
    order = np.argsort(-scores, kind="stable")
    chosen = order[:top_k] if top_k is not None else [i for i in order if positive[i]]
    preds = [{"label": spec.classes[i], "index": int(i), "score": float(scores[i]),
              "threshold": float(spec.thresholds[i]), "positive": bool(positive[i])} for i in chosen]  # fmt: skip
    return Answer(preds, verdict, labels=[spec.classes[i] for i in order if positive[i]])


def _hierarchical(spec: TaskSpec, probs: np.ndarray, query: ClassifyQuery, verdict: Verdict) -> Answer:
    assert spec.taxonomy is not None
    per_level = {d: probs @ spec.level(d)[1] for d in range(1, spec.depth + 1)}

    def path(node: str) -> list[dict]:
        return [{"label": a, "level": d, "score": float(per_level[d][spec.level(d)[0].index(a)])}
                for d, a in enumerate(spec.taxonomy.path(node), start=1)]  # fmt: skip

    if query.level is None:
        names, scores = spec.classes, probs
    else:
        names, scores = spec.level(query.level)[0], per_level[query.level]
    preds = _top(names, scores, query.top_k or 1)
    for p in preds:
        p["path"] = path(p["label"])
    return Answer(preds, verdict, level=query.level)
