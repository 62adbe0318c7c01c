"""Reader: CSV manifests (``path,label[,split]``; multi-label ``path,labels`` or one 0/1 column per label)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..config import DataConfig
from ..imaging import IMAGE_EXTENSIONS
from .files import allowed_roots, check_all, unsupported
from .splits import (
    SPLIT_DIRS,
    DatasetError,
    DataSplits,
    Skipped,
    fill_missing_splits,
    multi_label_samples,
    split_generated,
)

log = logging.getLogger(__name__)


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
            skipped.append(Skipped(str(path), unsupported(path)))
        else:
            entries.append((path, names, split or None))

    if cfg.classes:
        class_names = list(cfg.classes)
    elif flags:
        class_names = list(flags)
    else:
        class_names = sorted({n for _, names, _ in entries for n in names})
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples, bad = check_all([(p, class_to_idx[names[0]] if names else -1) for p, names, _ in entries], cfg.min_size,
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
        return fill_missing_splits(splits, cfg)
    splits.train = samples
    splits.split_origin = "generated"
    return split_generated(splits, cfg)
