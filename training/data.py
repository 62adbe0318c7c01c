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
    multi_label_samples,
    sample_from_record,
    stratified_split,
)
from .taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLIT_DIRS = ("train", "val", "test")


# ---------------------------------------------------------------- checking files
def allowed_roots(cfg: DataConfig) -> tuple[Path, ...]:
    """``data.allowed_roots`` resolved (empty: any file may be read)."""
    return tuple(Path(r).resolve() for r in cfg.allowed_roots)


def _outside(path: Path, roots: tuple[Path, ...]) -> str | None:
    """Why ``path`` may not be read (links resolved first), or None when it lies under one of ``roots``."""
    if not roots:
        return None
    real = path.resolve()
    if any(real.is_relative_to(root) for root in roots):
        return None
    return f"outside the allowed data roots ({', '.join(map(str, roots))}): resolves to {real}; not read"


def _check_file(path: Path, min_size: int, roots: tuple[Path, ...] = ()) -> tuple[str, str | None]:
    """Return (content digest, None) for a usable image, or ("", reason) for a bad one (or one not to read)."""
    if refused := _outside(path, roots):
        return "", refused
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
    candidates: list[tuple[Path, int]], min_size: int, first_seen: dict[str, str] | None = None,
    roots: tuple[Path, ...] = (),
) -> tuple[list[Sample], list[Skipped]]:  # fmt: skip
    """Decode every candidate (in threads: Pillow releases the GIL), drop bad files and duplicates.

    ``first_seen`` (digest -> path) carries duplicate detection across calls, e.g. across splits.
    ``roots``: when given, a file that does not resolve under one of them is listed and never read.
    """
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(lambda c: _check_file(c[0], min_size, roots), candidates))
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


def scan_folder(root: Path, cfg: DataConfig) -> DataSplits:
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
        class_names = sorted({d.name for sr in split_roots.values() for d in _class_dirs(sr)})
    else:
        class_names = [d.name for d in _class_dirs(root)]
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
            images, others = _images_under(base / name)
            candidates += [(p, class_to_idx[name]) for p in images]
            skipped += [Skipped(str(p), _unsupported(p)) for p in others]
        samples, bad = _check_all(candidates, cfg.min_size, seen, roots=allowed_roots(cfg))
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
TRUE_VALUES, FALSE_VALUES = {"1", "true", "yes", "y"}, {"0", "false", "no", "n", ""}
LABEL_COLUMNS = ("label", "labels")


def _csv_layout(rows: list[list[str]], csv_path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """(lower-cased header, data rows, 0/1 label column names): header optional for ``path,label[,split]``."""
    first = [c.strip() for c in rows[0]] if rows else []
    if not first or first[0].lower() != "path":
        return ["path", "label", "split"][: max((len(r) for r in rows), default=2)], rows, []
    header = [c.lower() for c in first]
    if any(c in header for c in LABEL_COLUMNS):
        return header, rows[1:], []
    flags = [name for name, low in zip(first, header, strict=True) if low not in ("path", "split")]
    if not flags:
        raise DatasetError(
            f"{csv_path}: expected columns path,label[,split], path,labels[,split] (labels separated by ';') "
            f"or path and one 0/1 column per label; found {','.join(first)}"
        )
    return header, rows[1:], flags


def read_manifest(csv_path: Path, cfg: DataConfig) -> DataSplits:
    """Read a CSV manifest (header optional for ``path,label[,split]``; paths relative to the CSV).

    Multi-label: a ``labels`` column with ``data.label_separator``-separated labels (an empty cell is
    an image with none of them), or a header ``path,<label>,<label>,...`` with 0/1 cells.
    """
    if not csv_path.is_file():
        raise DatasetError(f"CSV manifest {csv_path} does not exist")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    n_rows = len(rows)
    header, rows, flags = _csv_layout(rows, csv_path)
    ip = header.index("path")
    il = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    isplit = header.index("split") if "split" in header else None
    sep = cfg.label_separator
    multi = bool(flags) or (il is not None and header[il] == "labels") or cfg.task == "multilabel" or (
        cfg.task == "auto" and il is not None and any(len(r) > il and sep in r[il] for r in rows))  # fmt: skip
    if multi and cfg.task in ("multiclass", "hierarchical"):
        raise DatasetError(f"{csv_path} gives several labels per image, but data.task is {cfg.task}; "
                           "set data.task to multilabel or auto")  # fmt: skip
    flag_cols = [header.index(f.lower()) for f in flags]

    skipped: list[Skipped] = []
    entries: list[tuple[Path, list[str], str | None]] = []
    for lineno, row in enumerate(rows, start=1 + n_rows - len(rows)):
        cells = [c.strip() for c in row] + [""] * len(header)
        where = f"{csv_path}:{lineno}"
        if not cells[ip]:
            skipped.append(Skipped(where, "row has no path"))
            continue
        if flags:
            values = [cells[c].lower() for c in flag_cols]
            bad = [f"{f}={v!r}" for f, v in zip(flags, values, strict=True) if v not in TRUE_VALUES | FALSE_VALUES]
            if bad:
                skipped.append(Skipped(where, f"label cells must be 0 or 1, found {', '.join(bad)}"))
                continue
            names = [f for f, v in zip(flags, values, strict=True) if v in TRUE_VALUES]
        elif multi:
            names = list(dict.fromkeys(x.strip() for x in cells[il].split(sep) if x.strip()))
        elif not cells[il]:
            skipped.append(Skipped(where, "row needs a path and a label"))
            continue
        else:
            names = [cells[il]]
        path = (csv_path.parent / cells[ip]).resolve()
        split = cells[isplit].lower() if isplit is not None else None
        unknown = [n for n in names if cfg.classes is not None and n not in cfg.classes]
        if unknown:
            skipped.append(Skipped(str(path), f"unknown label {unknown[0]!r}; known: {', '.join(cfg.classes or [])}"))
        elif not path.is_file():
            skipped.append(Skipped(str(path), f"missing file (row {lineno} of {csv_path.name})"))
        elif split not in (None, "", *SPLIT_DIRS):
            skipped.append(Skipped(str(path), f"unknown split {split!r}; use train, val or test"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(str(path), _unsupported(path)))
        else:
            entries.append((path, names, split or None))

    if cfg.classes:
        class_names = list(cfg.classes)
    elif flags:
        class_names = list(flags)
    else:
        class_names = sorted({n for _, names, _ in entries for n in names})
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples, bad = _check_all([(p, class_to_idx[names[0]] if names else -1) for p, names, _ in entries], cfg.min_size,
                              roots=allowed_roots(cfg))  # fmt: skip
    if multi:
        labels_of = {str(p): tuple(class_to_idx[n] for n in names) for p, names, _ in entries}
        samples = multi_label_samples((s.key, labels_of[s.key], s.digest) for s in samples)
    split_of = {str(p): s for p, _, s in entries}
    task = "multilabel" if multi else "multiclass"
    splits = DataSplits(str(csv_path), class_names, [], [], [], skipped + bad, task=task)
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
        add_extra_train(splits, Path(root), cfg.min_size, allowed_roots(cfg))
    if cfg.holdout:
        apply_holdout(splits, Path(cfg.holdout))
    for s in splits.skipped:
        log.warning("skipped %s: %s", s.key, s.reason)
    check_trainable(splits, cfg.source)
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


def add_extra_train(splits: DataSplits, root: Path, min_size: int, roots: tuple[Path, ...] = ()) -> DataSplits:
    """Add the images of a class-per-folder ``root`` to the training split (feedback, say).

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
    for folder in _class_dirs(root):
        name = unquote(folder.name)  # folder names percent-encode labels like "T-shirt/top"
        if name not in splits.classes and splits.task == "hierarchical":
            splits.skipped.append(Skipped(str(folder), f"{name!r} is not a leaf of the taxonomy"))
            continue
        if name not in splits.classes:
            splits.classes.append(name)
        images, others = _images_under(folder)
        candidates += [(p, splits.classes.index(name)) for p in images]
        splits.skipped += [Skipped(str(p), _unsupported(p)) for p in others]
    samples, bad = _check_all(candidates, min_size, seen, roots=roots)
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
