"""Reader: Fashion-MNIST from Debian's IDX files (``dataset-fashion-mnist``), never downloaded."""

from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .splits import DatasetError, DataSplits, Sample, stratified_split

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


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
