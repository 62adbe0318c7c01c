"""Checking image files before they join a dataset: readable, decodable, big enough, inside the allowed
roots, not a duplicate."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import DataConfig
from ..imaging import IMAGE_EXTENSIONS, ImageError, open_image
from .splits import Sample, Skipped


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


def check_file(path: Path, min_size: int, roots: tuple[Path, ...] = ()) -> tuple[str, str | None]:
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


def check_all(
    candidates: list[tuple[Path, int]], min_size: int, first_seen: dict[str, str] | None = None,
    roots: tuple[Path, ...] = (),
) -> tuple[list[Sample], list[Skipped]]:  # fmt: skip
    """Decode every candidate (in threads: Pillow releases the GIL), drop bad files and duplicates.

    ``first_seen`` (digest -> path) carries duplicate detection across calls, e.g. across splits.
    ``roots``: when given, a file that does not resolve under one of them is listed and never read.
    """
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(lambda c: check_file(c[0], min_size, roots), candidates))
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


def unsupported(path: Path) -> str:
    return f"unsupported file type {path.suffix or '(none)'}; accepted: {', '.join(IMAGE_EXTENSIONS)}"
