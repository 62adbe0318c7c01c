"""Reading splits back into images: the one reader that training, evaluation, the promotion gate and the
predictor's agreement and calibration checks all use.

A split is recorded with each stored model (``split.json``: its source, classes and each split's
``(key, label)`` pairs); a key is a file path or ``fashion-mnist:<split>:<index>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from ..imaging import decode_image
from .fashion_mnist import FASHION_MNIST, fashion_mnist_arrays, find_fashion_mnist
from .splits import DatasetError, Sample, sample_from_record


class KeyLoader:
    """A picklable function from a sample key to an ``L``/``RGB`` image."""

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


def key_loader(source: str, channels: int) -> KeyLoader:
    """The loader for keys of a dataset read from ``source`` (``fashion-mnist:<dir>`` names its folder)."""
    return KeyLoader(channels, source.split(":", 1)[1] if source.startswith(FASHION_MNIST + ":") else None)


def read_record(path: Path) -> dict[str, Any]:
    """A recorded ``split.json``. Raises :class:`DatasetError` when it cannot be read."""
    try:
        record = json.loads(path.read_text())
        record["source"], record["classes"]  # noqa: B018 - the fields every reader needs
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a readable split record: {exc}") from None
    return record


def recorded_samples(record: dict[str, Any], split: str, classes: list[str]) -> list[Sample]:
    """The recorded ``split`` relabelled into ``classes`` by name (images of classes not in it dropped)."""
    index = {name: i for i, name in enumerate(classes)}
    return [s for k, y in record.get(split) or () if (s := sample_from_record(k, y, record["classes"], index))]
