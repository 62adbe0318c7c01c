"""Pure logic over samples: stratified seeded splits, class counts, imbalance, fingerprints."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DataConfig


SPLIT_DIRS = ("train", "val", "test")  # split names a folder tree or a manifest's split column may use


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``key`` is a file path or a source-specific id (``fashion-mnist:train:17``)."""

    key: str
    label: int  # the class; for multi-label data the rarest of its labels (stratification), -1 for none
    digest: str = ""  # content hash when known, for fingerprints and duplicate detection
    labels: tuple[int, ...] | None = None  # multi-label data: every label of the image (may be empty)

    @property
    def targets(self) -> tuple[int, ...]:
        """Every label of the image: its class, or its labels for multi-label data."""
        return self.labels if self.labels is not None else (self.label,)

    @property
    def record_label(self) -> int | list[int]:
        """How the label is written in a split record (a list for multi-label data)."""
        return list(self.labels) if self.labels is not None else self.label


@dataclass
class Skipped:
    key: str
    reason: str


@dataclass
class DataSplits:
    """The result of loading a data source: classes, three splits and what was skipped."""

    source: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    split_origin: str = "given"  # "given" by the source or "generated" (seeded, stratified)
    task: str = "multiclass"  # or "multilabel" (labels per image) or "hierarchical" (classes are tree leaves)
    taxonomy: dict[str, str] | None = None  # hierarchical: node -> parent ("" at the top)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class (multi-label: per label) per split, keyed by class name."""
        out: dict[str, dict[str, int]] = {}
        for split_name in ("train", "val", "test"):
            per = Counter(t for s in getattr(self, split_name) for t in s.targets)
            out[split_name] = {name: per.get(i, 0) for i, name in enumerate(self.classes)}
        return out

    def imbalance(self) -> float:
        """Largest over smallest training class size (1.0 means balanced)."""
        sizes = [n for n in self.counts()["train"].values()]
        return max(sizes) / max(1, min(sizes)) if sizes else 0.0

    def fingerprint(self) -> str:
        return fingerprint(self.classes, self.train + self.val + self.test)

    def split_record(self) -> dict:
        """A JSON-able record of exactly which samples went where (reused by later evaluations)."""
        return {
            "source": self.source,
            "classes": self.classes,
            "origin": self.split_origin,
            "task": self.task,
            **({"taxonomy": self.taxonomy} if self.taxonomy else {}),
            **{name: [[s.key, s.record_label] for s in getattr(self, name)] for name in ("train", "val", "test")},
        }

    def summary(self) -> dict:
        return {
            "source": self.source,
            "classes": self.classes,
            "counts": self.counts(),
            "imbalance_ratio": round(self.imbalance(), 3),
            "split_origin": self.split_origin,
            "task": self.task,
            "skipped": [asdict(s) for s in self.skipped],
            "fingerprint": self.fingerprint(),
        }


def sample_from_record(key: str, label: int | list[int], names: Sequence[str], index: dict[str, int]) -> Sample | None:
    """A split record's row relabelled into another class list by name (None: its class is unknown there).

    Multi-label rows keep the labels the other list knows; unknown ones are dropped.
    """
    if isinstance(label, list):
        labels = tuple(index[names[i]] for i in label if names[i] in index)
        return Sample(key, labels[0] if labels else -1, labels=labels)
    name = names[int(label)]
    return Sample(key, index[name]) if name in index else None


def multi_label_samples(samples: Iterable[tuple[str, tuple[int, ...], str]]) -> list[Sample]:
    """(key, labels, digest) -> samples whose ``label`` (the split's stratum) is the image's rarest label."""
    items = list(samples)
    freq = Counter(t for _, labels, _ in items for t in labels)
    return [Sample(key, min(labels, key=lambda t: (freq[t], t)) if labels else -1, digest, tuple(sorted(labels)))
            for key, labels, digest in items]  # fmt: skip


class DatasetError(ValueError):
    """The data cannot be trained on; the message says what was found and what is needed."""


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split per class with a seeded shuffle; every class keeps at least one training sample.

    A class of n samples gives round(n * fraction) to val and test, so tiny classes may have
    none there but never lose their training images.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.label, s.key)):
        by_class.setdefault(s.label, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n = len(items)
        n_test = min(round(n * test_fraction), max(0, n - 1))
        n_val = min(round(n * val_fraction), max(0, n - 1 - n_test))
        test += items[:n_test]
        val += items[n_test : n_test + n_val]
        train += items[n_test + n_val :]
    return train, val, test


def cap_per_class(samples: Iterable[Sample], limit: int, seed: int) -> list[Sample]:
    """Keep at most ``limit`` samples per class, chosen with a seeded shuffle (order preserved)."""
    rng = random.Random(seed)
    items = list(samples)
    order = list(range(len(items)))
    rng.shuffle(order)
    kept: set[int] = set()
    per: Counter[int] = Counter()
    for i in order:
        if per[items[i].label] < limit:
            per[items[i].label] += 1
            kept.add(i)
    return [s for i, s in enumerate(items) if i in kept]


def fingerprint(classes: Sequence[str], samples: Iterable[Sample]) -> str:
    """SHA-256 over the class names and the sorted (key, label, digest) list."""
    h = hashlib.sha256(json.dumps(list(classes)).encode())
    for s in sorted(samples, key=lambda s: s.key):
        h.update(f"{s.key}\t{s.record_label}\t{s.digest}\n".encode())
    return h.hexdigest()


def check_trainable(splits: DataSplits, where: str) -> None:
    """Raise :class:`DatasetError` unless there are >= 2 classes, each with training images."""
    total = len(splits.train) + len(splits.val) + len(splits.test)
    if total == 0:
        raise DatasetError(
            f"Found 0 usable images in {where}"
            + (f" ({len(splits.skipped)} skipped, e.g. {splits.skipped[0].reason})" if splits.skipped else "")
            + ". Expected class-per-folder images or a CSV manifest (path,label) of JPEG, PNG, BMP, GIF,"
            " WebP or TIFF files."
        )
    if len(splits.classes) < 2:
        raise DatasetError(
            f"Found {len(splits.classes)} class ({', '.join(splits.classes) or 'none'}) in {where}; "
            "a classifier needs at least 2 classes."
        )
    empty = [name for name, n in splits.counts()["train"].items() if n == 0]
    if empty:
        kind = "Labels" if splits.task == "multilabel" else "Classes"
        raise DatasetError(
            f"{kind} with no training images in {where}: {', '.join(empty)}. "
            f"Every {kind.lower()[:-1]} needs at least one training image."
        )


def split_generated(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    splits.train, splits.val, splits.test = stratified_split(
        splits.train, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
    )
    return splits


def fill_missing_splits(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    """A source that gives train (and maybe test) but not val: carve the missing ones from train."""
    if splits.val and splits.test:
        return splits
    val_f = 0.0 if splits.val else cfg.val_fraction
    test_f = 0.0 if splits.test else cfg.test_fraction
    train, val, test = stratified_split(splits.train, max(val_f, 1e-9), max(test_f, 1e-9), cfg.split_seed)
    splits.train = train
    splits.val = splits.val or val
    splits.test = splits.test or test
    splits.split_origin = "given+generated"
    return splits
