"""Feedback: an image and its correct label, kept once (by content) as a class-per-folder dataset.

``<feedback_dir>/<model name>/<percent-encoded label>/<sha256 prefix>.<ext>``: exactly what
``data.extra_train`` reads, so the next retrain learns from it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from service.errors import InvalidInput, from_image_error
from service.retraining.registry import Registry
from training.imaging import ImageError, open_image

LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
MAX_FOLDER_NAME = 200  # bytes: file systems allow 255 for a name
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}


@dataclass
class Feedback:
    sha256: str
    label: str
    path: Path
    duplicate: bool


def write_once(path: Path, data: bytes) -> Path:
    """Keep ``data`` at ``path`` unless it is there already, atomically: a reader never sees half an image."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return path


def label_folder(label: str) -> str:
    return quote(label, safe=" -_.+()")


def save_feedback(registry: Registry, root: Path, model_name: str, data: bytes, label: str, classes: list[str],
                  allow_new: bool, max_pixels: int) -> Feedback:  # fmt: skip
    """Validate and keep one feedback image. Raises ``InvalidInput`` (or an image error) when unusable."""
    label = label.strip()
    if not LABEL.match(label) or label in (".", ".."):
        raise InvalidInput("label must be 1-100 printable characters", reason="bad_label")
    if len(label_folder(label).encode()) > MAX_FOLDER_NAME:
        raise InvalidInput(f"label is too long once kept as a folder name ({len(label_folder(label).encode())} "
                           f"bytes percent-encoded; at most {MAX_FOLDER_NAME}): use a shorter label",
                           reason="bad_label")  # fmt: skip
    if label not in classes and not allow_new:
        raise InvalidInput(f"label {label!r} is not a class of the model; known: {', '.join(classes)} "
                           "(new labels are off: IMGCLF_FEEDBACK_NEW_LABELS)", reason="unknown_label")  # fmt: skip
    try:
        img = open_image(data, max_pixels)
    except ImageError as exc:
        raise from_image_error(exc, "feedback image") from None
    sha = hashlib.sha256(data).hexdigest()
    path = root / model_name / label_folder(label) / f"{sha[:32]}{EXTENSIONS.get(img.format or '', '.img')}"
    write_once(path, data)
    new = registry.add_feedback(model_name, sha, label, str(path))
    return Feedback(sha, label, path, duplicate=not new)
