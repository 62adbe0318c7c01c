"""Fashion-MNIST mosaics: a real multi-label dataset, built offline from the Debian package.

Each image is a 2x2 grid (56x56 px) with one to four of its cells holding a Fashion-MNIST garment
(the others blank); its labels are the classes shown. Training mosaics are cut from the training
images and test mosaics from the test images, so no garment appears on both sides. The result is
PNG files and a CSV manifest (``path,labels,split``) that ``data.source`` reads as multi-label.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .data import FASHION_MNIST_CLASSES, fashion_mnist_arrays, find_fashion_mnist

log = logging.getLogger(__name__)

TILE = 28
MANIFEST = "labels.csv"


def mosaic(images: np.ndarray, cells: list[int]) -> np.ndarray:
    """A 56x56 uint8 image with ``images[i]`` placed in cell ``cells[i]`` (0..3, row-major)."""
    out = np.zeros((2 * TILE, 2 * TILE), np.uint8)
    for img, cell in zip(images, cells, strict=True):
        r, c = divmod(cell, 2)
        out[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = img
    return out


def make_mosaics(out: Path, n_train: int = 12000, n_test: int = 2000, seed: int = 0,
                 fashion_mnist_dir: str | None = None) -> Path:  # fmt: skip
    """Write ``n_train`` + ``n_test`` mosaics under ``out`` and return the manifest's path.

    Already-written datasets with the same sizes are kept (the manifest is written last).
    """
    manifest = out / MANIFEST
    if manifest.is_file() and len(manifest.read_text().splitlines()) == n_train + n_test + 1:
        log.info("%s already holds %d mosaics", out, n_train + n_test)
        return manifest
    arrays = fashion_mnist_arrays(str(find_fashion_mnist(fashion_mnist_dir)))
    rng = np.random.default_rng(seed)
    rows = ["path,labels,split"]
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = arrays[split]
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k = int(rng.integers(1, 5))
            picks = rng.choice(len(images), size=k, replace=False)
            cells = rng.choice(4, size=k, replace=False).tolist()
            name = f"{split}/{i:05d}.png"
            Image.fromarray(mosaic(images[picks], cells), "L").save(out / name, optimize=False)
            classes = sorted({FASHION_MNIST_CLASSES[int(y)] for y in labels[picks]})
            rows.append(f"{name},{';'.join(classes)},{split}")
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(manifest)
    log.info("wrote %d mosaics and %s", n_train + n_test, manifest)
    return manifest
