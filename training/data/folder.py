"""Reader: class-per-folder trees (``root/<class>/...`` or ``root/{train,val,test}/<class>/...``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import DataConfig
from ..imaging import IMAGE_EXTENSIONS
from .files import allowed_roots, check_all, unsupported
from .splits import SPLIT_DIRS, DatasetError, DataSplits, Sample, Skipped, fill_missing_splits, split_generated

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- class-per-folder
def class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files under ``folder`` (recursively): (image-extension files, other files)."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def _leaf_dirs(base: Path) -> tuple[list[str], list[Skipped]]:
    """Nested class folders: the folders holding images with no image folder below them, as relative
    paths (``animal/cat``); images directly in an inner folder are listed as skipped."""
    with_images: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(base).as_posix()
        if rel != "." and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            with_images.add(rel)
    inner = {p for p in with_images if any(q.startswith(p + "/") for q in with_images)}
    skipped = [Skipped(str(base / p), f"images directly in {p!r}, which has class folders below it; move them "
                                      "into a leaf folder") for p in sorted(inner)]  # fmt: skip
    return sorted(with_images - inner), skipped


def read_folder(root: Path, cfg: DataConfig) -> DataSplits:
    """Scan ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``.

    A hierarchical task without a taxonomy file reads nested classes: ``root/animal/cat/...`` is the
    leaf class ``animal/cat`` under ``animal``.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a directory")
    nested = cfg.task == "hierarchical" and not cfg.taxonomy
    split_roots = {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}
    if "train" not in split_roots:
        split_roots = {}
    unknown: list[Skipped] = []
    if nested:
        found = [_leaf_dirs(base) for base in (split_roots.values() or [root])]
        class_names = sorted({leaf for leaves, _ in found for leaf in leaves})
        unknown += [s for _, bad in found for s in bad]
    elif split_roots:
        class_names = sorted({d.name for sr in split_roots.values() for d in class_dirs(sr)})
    else:
        class_names = [d.name for d in class_dirs(root)]
    if cfg.classes is not None:
        unknown += [Skipped(str(root / name), f"unknown label {name!r}; known: {', '.join(cfg.classes)}")
                    for name in class_names if name not in cfg.classes]  # fmt: skip
        class_names = list(cfg.classes)
    class_to_idx = {name: i for i, name in enumerate(class_names)}

    seen: dict[str, str] = {}

    def collect(base: Path) -> tuple[list[Sample], list[Skipped]]:
        candidates: list[tuple[Path, int]] = []
        skipped: list[Skipped] = []
        for name in class_names:
            if not (base / name).is_dir():
                continue
            images, others = images_under(base / name)
            candidates += [(p, class_to_idx[name]) for p in images]
            skipped += [Skipped(str(p), unsupported(p)) for p in others]
        samples, bad = check_all(candidates, cfg.min_size, seen, roots=allowed_roots(cfg))
        return samples, skipped + bad

    if split_roots:
        parts: dict[str, list[Sample]] = {}
        skipped: list[Skipped] = []
        for name in SPLIT_DIRS:
            parts[name], bad = collect(split_roots[name]) if name in split_roots else ([], [])
            skipped += bad
        splits = DataSplits(str(root), class_names, parts["train"], parts["val"], parts["test"], unknown + skipped)
        return fill_missing_splits(splits, cfg)
    samples, skipped = collect(root)
    return split_generated(DataSplits(str(root), class_names, samples, [], [], unknown + skipped, "generated"), cfg)
