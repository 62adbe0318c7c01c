"""The rolling evaluation set: the share of feedback images (labelled captures included) that never trains,
newest first up to a size, as a recorded split both sides of the gate are judged on.

Which images belong is decided by their content hash (:func:`training.data.in_evaluation_share`), so training
(which skips them) and this set agree without talking to each other, and an image never moves between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.retraining.registry import Registry
from training.data import in_evaluation_share


@dataclass(frozen=True)
class EvaluationSet:
    record: dict[str, Any]  # a recorded split: {"source", "classes", "test": [[path, class index], ...]}
    images: int
    oldest: str | None
    newest: str | None
    share: float

    def describe(self) -> str:
        return f"rolling evaluation set ({self.images} feedback images, {self.oldest} to {self.newest})"

    def summary(self) -> dict[str, Any]:
        return {"images": self.images, "oldest": self.oldest, "newest": self.newest, "share": self.share}


def evaluation_set(registry: Registry, model_name: str, share: float, max_images: int) -> EvaluationSet:
    """The newest ``max_images`` feedback images of ``model_name`` in the evaluation ``share`` whose file is
    still there."""
    items = [(sha, label, path, at) for sha, label, path, at in registry.feedback_items(model_name)
             if in_evaluation_share(Path(path).name, share) and Path(path).is_file()][:max_images]  # fmt: skip
    classes = sorted({label for _, label, _, _ in items})
    index = {name: i for i, name in enumerate(classes)}
    record = {"source": "feedback", "classes": classes, "test": [[path, index[label]] for _, label, path, _ in items]}
    times = [at for *_, at in items]
    return EvaluationSet(record, len(items), min(times).isoformat() if times else None,
                         max(times).isoformat() if times else None, share)  # fmt: skip
