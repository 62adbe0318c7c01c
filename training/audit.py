"""Know the data before training on it: a label audit by confident learning.

Out-of-sample class probabilities (from the current champion, which never trained on a retrain's new images;
or any stored model) are compared with the given labels by ``cleanlab`` (Northcutt et al., "Confident
Learning", 2021): an image whose given label the model finds improbable, given how often each pair of
classes is confused, is a suspect. Suspects are ranked by the model's confidence in the given label, listed
in ``audit.json`` with a picture of the worst ones (``audit.png``), and either excluded from training
(``data.exclude``) or only reported. Images whose content is exactly repeated are already dropped by the
readers (same bytes); this audit is about labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.recorded import key_loader, recorded_samples
from .data.splits import DataSplits, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suspect:
    key: str
    given: str
    suggested: str  # the model's top class
    given_confidence: float  # the model's probability of the given label


def find_suspects(probs: np.ndarray, labels: np.ndarray, keys: list[str], classes: list[str]) -> list[Suspect]:
    """The images whose label is probably wrong, worst first (``probs``: out-of-sample, (N, C))."""
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(labels) < 2 * len(classes) or len(present) < 2:
        return []  # too few images to estimate how classes are confused
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [Suspect(keys[i], classes[labels[i]], classes[int(probs[i].argmax())], round(float(probs[i, labels[i]]), 6))
            for i in ranked]  # fmt: skip


def audit_samples(stored: Any, samples: list[Sample], load: Any) -> list[Suspect]:
    """Suspects among ``samples`` (labels in ``stored``'s classes) as ``stored`` sees them: one label an image
    (multi-class and hierarchical models; a multi-label model's labels are not audited)."""
    from .evaluate import predict_samples
    from .tasks import TaskSpec

    single = [s for s in samples if isinstance(s.label, int)]
    if not single or TaskSpec.from_metadata(stored.metadata).multilabel:
        return []
    probs, targets = predict_samples(stored, single, load)
    return find_suspects(probs, np.asarray(targets, int), [s.key for s in single], list(stored.classes))


@dataclass
class Audit:
    suspects: list[Suspect]
    samples: list[Sample]  # what was audited: the split's images with labels in the model's classes
    load: Any  # key -> image, for the pictures
    flipped: set[str]  # keys whose label was flipped on purpose (a measurement), else empty


def audit_split(stored: Any, splits: DataSplits, split: str = "train", flip: float = 0.0, seed: int = 0) -> Audit:
    """Audit one split of ``splits`` with ``stored`` (labels matched to its classes by name); with ``flip``, that
    fraction of the labels is changed first, to measure the audit."""
    samples = recorded_samples(splits.split_record(), split, list(stored.classes))
    flipped: set[str] = set()
    if flip:
        samples, flipped = flip_labels(samples, len(stored.classes), flip, seed)
    load = key_loader(splits.source, stored.preprocessing.channels)
    return Audit(audit_samples(stored, samples, load), samples, load, flipped)


def write(suspects: list[Suspect], audited: int, out_dir: Path, load: Any, excluded: bool, show: int = 16) -> dict:
    """``audit.json`` (every suspect) and ``audit.png`` (the worst ``show``); returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"audited": audited, "suspects": len(suspects), "excluded": excluded,
               "method": "confident learning (cleanlab), probabilities from the champion"}  # fmt: skip
    (out_dir / "audit.json").write_text(json.dumps({**summary, "items": [asdict(s) for s in suspects]}, indent=2))
    if suspects:
        from . import report

        report.plot_suspects(suspects[:show], load, out_dir / "audit.png")
    return summary


def flip_labels(samples: list[Sample], num_classes: int, fraction: float, seed: int = 0) -> tuple[list[Sample], set]:
    """``fraction`` of the labels changed to another class at random (to measure the audit); the keys flipped."""
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(samples), int(round(fraction * len(samples))), replace=False).tolist())
    out = []
    for i, s in enumerate(samples):
        if i in chosen:
            other = int((s.label + rng.integers(1, num_classes)) % num_classes)
            out.append(Sample(s.key, other, s.digest))
        else:
            out.append(s)
    return out, {samples[i].key for i in chosen}
