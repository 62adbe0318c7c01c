"""Data: readers for each source kind (``folder``, ``manifest``, ``fashion_mnist``), the split records they
fill (``splits``), one dataset assembled from the configured source (``assemble``), and reading a recorded
split back into images (``recorded``)."""

from .assemble import add_extra_train, apply_holdout, in_evaluation_share, load_splits, set_taxonomy
from .fashion_mnist import FASHION_MNIST, FASHION_MNIST_CLASSES, fashion_mnist_arrays, find_fashion_mnist
from .files import allowed_roots
from .folder import read_folder
from .manifest import read_manifest
from .recorded import KeyLoader, key_loader, read_record, recorded_samples
from .splits import DatasetError, DataSplits, Sample, Skipped

__all__ = [
    "FASHION_MNIST", "FASHION_MNIST_CLASSES", "DataSplits", "DatasetError", "KeyLoader", "Sample", "Skipped",
    "add_extra_train", "allowed_roots", "apply_holdout", "fashion_mnist_arrays", "find_fashion_mnist", "load_splits",
    "in_evaluation_share",
    "key_loader", "read_folder", "read_record", "recorded_samples", "read_manifest", "set_taxonomy",
]  # fmt: skip
