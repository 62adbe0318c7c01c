"""One dataset from the configured source: read it, then cap, extend (feedback), hold out and check.

:func:`load_splits` turns a :class:`~training.config.DataConfig` into :class:`DataSplits` (plain data: keys,
labels, classes, what was skipped and why). Reading pixels is :mod:`training.data.recorded`'s job."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote

from ..config import DataConfig
from ..taxonomy import Taxonomy, TaxonomyError
from .fashion_mnist import FASHION_MNIST, load_fashion_mnist
from .files import allowed_roots, check_all, unsupported
from .folder import class_dirs, images_under, read_folder
from .manifest import read_manifest
from .recorded import read_record
from .splits import DatasetError, DataSplits, Sample, Skipped, cap_per_class, check_trainable, sample_from_record

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- entry points
def load_splits(cfg: DataConfig) -> DataSplits:
    """Load and check the configured source. Raises :class:`DatasetError` when it cannot train."""
    if cfg.source == FASHION_MNIST:
        splits = load_fashion_mnist(cfg)
    elif cfg.source.lower().endswith(".csv"):
        splits = read_manifest(Path(cfg.source), cfg)
    else:
        splits = read_folder(Path(cfg.source), cfg)
    if cfg.task == "multilabel" and splits.task != "multilabel":
        raise DatasetError(
            f"{cfg.source} gives one class per image (a folder tree cannot express several labels); multi-label "
            "data needs a CSV manifest: 'path,labels' with labels separated by ';' (e.g. img1.png,red;circle), "
            "or a header 'path,<label>,<label>,...' with one 0/1 column per label"
        )
    if cfg.task == "hierarchical" or cfg.taxonomy:
        set_taxonomy(splits, cfg)
    if cfg.limit_per_class:
        n = cfg.limit_per_class
        splits.train = cap_per_class(splits.train, n, cfg.split_seed)
        splits.val = cap_per_class(splits.val, max(1, n // 4), cfg.split_seed)
        splits.test = cap_per_class(splits.test, max(1, n // 4), cfg.split_seed)
    for root in cfg.extra_train:
        add_extra_train(splits, Path(root), cfg.min_size, allowed_roots(cfg), cfg.extra_eval_share)
    if cfg.holdout:
        apply_holdout(splits, Path(cfg.holdout))
    for s in splits.skipped:
        log.warning("skipped %s: %s", s.key, s.reason)
    if cfg.exclude:  # after the warnings: the audit's own report lists them
        exclude(splits, cfg.exclude)
    check_trainable(splits, cfg.source)
    return splits


def exclude(splits: DataSplits, keys: list[str]) -> DataSplits:
    """Keep ``keys`` out of the training split (the label audit's suspects), listing them as skipped."""
    excluded = set(keys)
    reason = "excluded: the label audit found its label improbable"
    splits.skipped += [Skipped(s.key, reason) for s in splits.train if s.key in excluded]
    before, splits.train = len(splits.train), [s for s in splits.train if s.key not in excluded]
    log.info("%d training images excluded by the label audit", before - len(splits.train))
    return splits


def set_taxonomy(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    """Make ``splits`` hierarchical: the taxonomy file's tree, else the class names read as paths."""
    if splits.task == "multilabel":
        raise DatasetError("a taxonomy needs one class per image; this data is multi-label")
    try:
        tree = Taxonomy.from_file(cfg.taxonomy) if cfg.taxonomy else Taxonomy.from_paths(splits.classes)
        tree = tree.restricted_to(splits.classes)
    except TaxonomyError as exc:
        raise DatasetError(f"{cfg.source}: {exc}") from None
    splits.task, splits.taxonomy = "hierarchical", tree.to_json()
    return splits


def in_evaluation_share(name: str, share: float) -> bool:
    """Whether an image kept under a content-hash name (feedback: ``<sha256 prefix>.<ext>``) belongs to the
    evaluation share: the first 32 bits of the hash below ``share``. Deterministic, the same for every reader;
    names that are not a hash never are."""
    stem = Path(name).stem[:8]
    try:
        return share > 0 and int(stem, 16) < share * 2**32 and len(stem) == 8
    except ValueError:
        return False


def add_extra_train(splits: DataSplits, root: Path, min_size: int, roots: tuple[Path, ...] = (),
                    eval_share: float = 0.0) -> DataSplits:  # fmt: skip
    """Add the images of a class-per-folder ``root`` to the training split (feedback, say), except those in the
    evaluation share (:func:`in_evaluation_share`), which are kept apart for judging models.

    Folder names are percent-decoded (``T-shirt%2Ftop`` is ``T-shirt/top``). Classes the source
    does not have are appended, so existing class indices keep their meaning; images already in
    the dataset (same content) are skipped as duplicates.
    """
    if not root.is_dir():
        raise DatasetError(f"extra training folder {root} does not exist or is not a directory")
    if splits.task == "multilabel":
        reason = "feedback gives one label per image; multi-label training needs all of them (use the CSV)"
        splits.skipped.append(Skipped(str(root), reason))
        return splits
    seen = {s.digest: s.key for s in splits.train + splits.val + splits.test if s.digest}
    candidates: list[tuple[Path, int]] = []
    for folder in class_dirs(root):
        name = unquote(folder.name)  # folder names percent-encode labels like "T-shirt/top"
        if name not in splits.classes and splits.task == "hierarchical":
            splits.skipped.append(Skipped(str(folder), f"{name!r} is not a leaf of the taxonomy"))
            continue
        if name not in splits.classes:
            splits.classes.append(name)
        images, others = images_under(folder)
        candidates += [(p, splits.classes.index(name)) for p in images if not in_evaluation_share(p.name, eval_share)]
        splits.skipped += [Skipped(str(p), unsupported(p)) for p in others]
    samples, bad = check_all(candidates, min_size, seen, roots=roots)
    splits.train += samples
    splits.skipped += bad
    log.info("added %d training images from %s", len(samples), root)
    return splits


def apply_holdout(splits: DataSplits, split_file: Path) -> DataSplits:
    """Make the test split of a recorded ``split.json`` this dataset's test split.

    Holdout images are taken out of train and val; the test images the source would have used go
    back to training. Labels are matched by class name; holdout images of classes this dataset
    lacks, or whose files are gone, are skipped and listed.
    """
    record = read_record(split_file)
    names, rows = record["classes"], record.get("test") or []
    held: list[Sample] = []
    index = {name: i for i, name in enumerate(splits.classes)}
    for key, label in rows:
        sample = sample_from_record(key, label, names, index)
        if sample is None:
            splits.skipped.append(Skipped(key, f"holdout class {names[int(label)]!r} is not in this dataset"))
        elif not key.startswith(FASHION_MNIST + ":") and not Path(key).is_file():
            splits.skipped.append(Skipped(key, "holdout image file is missing"))
        else:
            held.append(sample)
    keys = {s.key for s in held}
    splits.train = [s for s in splits.train + splits.test if s.key not in keys]
    splits.val = [s for s in splits.val if s.key not in keys]
    splits.test = held
    splits.split_origin += "+holdout"
    return splits
