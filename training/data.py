"""Data sources behind one interface: class-per-folder trees, CSV manifests and Fashion-MNIST.

:func:`load_splits` turns a :class:`~training.config.DataConfig` into :class:`DataSplits` (plain
data: keys, labels, classes, what was skipped and why). Reading pixels is :func:`make_loader`'s job.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image

from .config import DataConfig
from .imaging import IMAGE_EXTENSIONS, ImageError, decode_image, open_image
from .splits import (
    DatasetError,
    DataSplits,
    Sample,
    Skipped,
    cap_per_class,
    check_trainable,
    stratified_split,
)

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLIT_DIRS = ("train", "val", "test")


# ---------------------------------------------------------------- checking files
def _check_file(path: Path, min_size: int) -> tuple[str, str | None]:
    """Return (content digest, None) for a usable image, or ("", reason) for a bad one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", f"unreadable: {exc.strerror or exc}"
    try:
        img = open_image(data)
    except ImageError as exc:
        return "", str(exc)
    if min(img.size) < min_size:
        return "", f"too small: {img.width}x{img.height}, need at least {min_size} px a side"
    return hashlib.sha1(data).hexdigest(), None


def _check_all(
    candidates: list[tuple[Path, int]], min_size: int, first_seen: dict[str, str] | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """Decode every candidate (in threads: Pillow releases the GIL), drop bad files and duplicates.

    ``first_seen`` (digest -> path) carries duplicate detection across calls, e.g. across splits.
    """
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(lambda c: _check_file(c[0], min_size), candidates))
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    first_seen = {} if first_seen is None else first_seen
    for (path, label), (digest, problem) in zip(candidates, results, strict=True):
        if problem:
            skipped.append(Skipped(str(path), problem))
        elif digest in first_seen:
            skipped.append(Skipped(str(path), f"duplicate of {first_seen[digest]}"))
        else:
            first_seen[digest] = str(path)
            samples.append(Sample(str(path), label, digest))
    return samples, skipped


# ---------------------------------------------------------------- class-per-folder
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> tuple[list[Path], list[Path]]:
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


def scan_folder(root: Path, cfg: DataConfig) -> DataSplits:
    """Scan ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a directory")
    split_roots = {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}
    if "train" in split_roots:
        class_names = sorted({d.name for sr in split_roots.values() for d in _class_dirs(sr)})
    else:
        split_roots = {}
        class_names = [d.name for d in _class_dirs(root)]
    unknown: list[Skipped] = []
    if cfg.classes is not None:
        unknown = [Skipped(str(root / name), f"unknown label {name!r}; known: {', '.join(cfg.classes)}")
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
            images, others = _images_under(base / name)
            candidates += [(p, class_to_idx[name]) for p in images]
            skipped += [Skipped(str(p), _unsupported(p)) for p in others]
        samples, bad = _check_all(candidates, cfg.min_size, seen)
        return samples, skipped + bad

    if split_roots:
        parts: dict[str, list[Sample]] = {}
        skipped: list[Skipped] = []
        for name in SPLIT_DIRS:
            parts[name], bad = collect(split_roots[name]) if name in split_roots else ([], [])
            skipped += bad
        splits = DataSplits(str(root), class_names, parts["train"], parts["val"], parts["test"], unknown + skipped)
        return _fill_missing_splits(splits, cfg)
    samples, skipped = collect(root)
    return _split(DataSplits(str(root), class_names, samples, [], [], unknown + skipped, "generated"), cfg)


def _unsupported(path: Path) -> str:
    return f"unsupported file type {path.suffix or '(none)'}; accepted: {', '.join(IMAGE_EXTENSIONS)}"


def _split(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    splits.train, splits.val, splits.test = stratified_split(
        splits.train, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
    )
    return splits


def _fill_missing_splits(splits: DataSplits, cfg: DataConfig) -> DataSplits:
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


# ---------------------------------------------------------------- CSV manifest
def read_manifest(csv_path: Path, cfg: DataConfig) -> DataSplits:
    """Read ``path,label[,split]`` rows (header optional; paths relative to the CSV)."""
    if not csv_path.is_file():
        raise DatasetError(f"CSV manifest {csv_path} does not exist")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    else:
        header = ["path", "label", "split"][: max((len(r) for r in rows), default=2)]
    if "path" not in header or "label" not in header:
        raise DatasetError(f"{csv_path}: expected columns path,label[,split]; found {','.join(header)}")
    ip, il = header.index("path"), header.index("label")
    isplit = header.index("split") if "split" in header else None

    skipped: list[Skipped] = []
    entries: list[tuple[Path, str, str | None]] = []
    for lineno, row in enumerate(rows, start=2 if header else 1):
        if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
            skipped.append(Skipped(f"{csv_path}:{lineno}", "row needs a path and a label"))
            continue
        path = (csv_path.parent / row[ip].strip()).resolve()
        label = row[il].strip()
        split = row[isplit].strip().lower() if isplit is not None and len(row) > isplit else None
        if cfg.classes is not None and label not in cfg.classes:
            skipped.append(Skipped(str(path), f"unknown label {label!r}; known: {', '.join(cfg.classes)}"))
        elif not path.is_file():
            skipped.append(Skipped(str(path), f"missing file (row {lineno} of {csv_path.name})"))
        elif split not in (None, "", *SPLIT_DIRS):
            skipped.append(Skipped(str(path), f"unknown split {split!r}; use train, val or test"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(str(path), _unsupported(path)))
        else:
            entries.append((path, label, split or None))

    class_names = list(cfg.classes) if cfg.classes else sorted({label for _, label, _ in entries})
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples, bad = _check_all([(p, class_to_idx[lab]) for p, lab, _ in entries], cfg.min_size)
    split_of = {str(p): s for p, _, s in entries}
    splits = DataSplits(str(csv_path), class_names, [], [], [], skipped + bad)
    if any(split_of.values()):
        for s in samples:
            getattr(splits, split_of[s.key] or "train").append(s)
        return _fill_missing_splits(splits, cfg)
    splits.train = samples
    splits.split_origin = "generated"
    return _split(splits, cfg)


# ---------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(directory: str | None) -> Path:
    candidates = [Path(directory)] if directory else [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if (d / "train-images-idx3-ubyte.gz").is_file():
            return d
    raise DatasetError(
        f"Fashion-MNIST IDX files not found in {', '.join(map(str, candidates))}. Install Debian's package "
        "(sudo apt-get install dataset-fashion-mnist) or set data.fashion_mnist_dir to a folder holding "
        "train-images-idx3-ubyte.gz and the other three files."
    )


@lru_cache(maxsize=2)
def fashion_mnist_arrays(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    d = Path(directory)
    return {
        split: (_read_idx(d / f"{prefix}-images-idx3-ubyte.gz"), _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz"))
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
    directory = find_fashion_mnist(cfg.fashion_mnist_dir)
    arrays = fashion_mnist_arrays(str(directory))
    samples = {
        split: [Sample(f"{FASHION_MNIST}:{split}:{i}", int(y)) for i, y in enumerate(labels)]
        for split, (_, labels) in arrays.items()
    }
    train, val, _ = stratified_split(samples["train"], cfg.val_fraction, 1e-9, cfg.split_seed)
    splits = DataSplits(f"{FASHION_MNIST}:{directory}", list(FASHION_MNIST_CLASSES), train, val, samples["test"])
    splits.split_origin = "given+generated"
    return splits


# ---------------------------------------------------------------- entry points
def load_splits(cfg: DataConfig) -> DataSplits:
    """Load and check the configured source. Raises :class:`DatasetError` when it cannot train."""
    if cfg.source == FASHION_MNIST:
        splits = load_fashion_mnist(cfg)
    elif cfg.source.lower().endswith(".csv"):
        splits = read_manifest(Path(cfg.source), cfg)
    else:
        splits = scan_folder(Path(cfg.source), cfg)
    if cfg.limit_per_class:
        n = cfg.limit_per_class
        splits.train = cap_per_class(splits.train, n, cfg.split_seed)
        splits.val = cap_per_class(splits.val, max(1, n // 4), cfg.split_seed)
        splits.test = cap_per_class(splits.test, max(1, n // 4), cfg.split_seed)
    for root in cfg.extra_train:
        add_extra_train(splits, Path(root), cfg.min_size)
    if cfg.holdout:
        apply_holdout(splits, Path(cfg.holdout))
    for s in splits.skipped:
        log.warning("skipped %s: %s", s.key, s.reason)
    check_trainable(splits, cfg.source)
    return splits


def add_extra_train(splits: DataSplits, root: Path, min_size: int) -> DataSplits:
    """Add the images of a class-per-folder ``root`` to the training split (feedback, say).

    Folder names are percent-decoded (``T-shirt%2Ftop`` is ``T-shirt/top``). Classes the source
    does not have are appended, so existing class indices keep their meaning; images already in
    the dataset (same content) are skipped as duplicates.
    """
    if not root.is_dir():
        raise DatasetError(f"extra training folder {root} does not exist or is not a directory")
    seen = {s.digest: s.key for s in splits.train + splits.val + splits.test if s.digest}
    candidates: list[tuple[Path, int]] = []
    for folder in _class_dirs(root):
        name = unquote(folder.name)  # folder names percent-encode labels like "T-shirt/top"
        if name not in splits.classes:
            splits.classes.append(name)
        images, others = _images_under(folder)
        candidates += [(p, splits.classes.index(name)) for p in images]
        splits.skipped += [Skipped(str(p), _unsupported(p)) for p in others]
    samples, bad = _check_all(candidates, min_size, seen)
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
    try:
        record = json.loads(split_file.read_text())
        names, rows = record["classes"], record["test"]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"holdout {split_file} is not a readable split record: {exc}") from None
    held: list[Sample] = []
    for key, label in rows:
        name = names[int(label)]
        if name not in splits.classes:
            splits.skipped.append(Skipped(key, f"holdout class {name!r} is not in this dataset"))
        elif not key.startswith(FASHION_MNIST + ":") and not Path(key).is_file():
            splits.skipped.append(Skipped(key, "holdout image file is missing"))
        else:
            held.append(Sample(key, splits.classes.index(name)))
    keys = {s.key for s in held}
    splits.train = [s for s in splits.train + splits.test if s.key not in keys]
    splits.val = [s for s in splits.val if s.key not in keys]
    splits.test = held
    splits.split_origin += "+holdout"
    return splits


def make_loader(splits: DataSplits, channels: int) -> Callable[[str], Image.Image]:
    """A picklable function that turns one of ``splits``' keys into an ``L``/``RGB`` image."""
    fmnist_dir = splits.source.split(":", 1)[1] if splits.source.startswith(FASHION_MNIST + ":") else None
    return KeyLoader(channels, fmnist_dir)


class KeyLoader:
    def __init__(self, channels: int, fashion_mnist_dir: str | None = None):
        self.channels = channels
        self.fashion_mnist_dir = fashion_mnist_dir

    def __call__(self, key: str) -> Image.Image:
        if key.startswith(FASHION_MNIST + ":"):
            _, split, idx = key.split(":")
            directory = self.fashion_mnist_dir or str(find_fashion_mnist(None))
            img = Image.fromarray(fashion_mnist_arrays(directory)[split][0][int(idx)], mode="L")
            return img if self.channels == 1 else img.convert("RGB")
        return decode_image(key, self.channels)
