"""torch ``Dataset`` over samples, and the DataLoaders built from splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from .splits import Sample


class ImageDataset(Dataset):
    """Samples read by ``load`` (key -> PIL image) and passed through ``transform``."""

    def __init__(self, samples: Sequence[Sample], load: Callable[[str], Image.Image], transform: Callable):
        self.samples = list(samples)
        self.load = load
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(self.load(sample.key)), sample.label


def class_weights(samples: Sequence[Sample], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = Counter(s.label for s in samples)
    w = torch.tensor([1.0 / counts[i] if counts.get(i) else 0.0 for i in range(num_classes)])
    return w * (w > 0).sum() / w.sum()


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    train: bool,
    workers: int,
    seed: int,
    balance_sampler: bool = False,
    distributed: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    sampler = None
    if train and distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
    elif train and balance_sampler:
        num_classes = max(s.label for s in dataset.samples) + 1
        w = class_weights(dataset.samples, num_classes)
        sampler = WeightedRandomSampler(
            [float(w[s.label]) for s in dataset.samples], num_samples=len(dataset),
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=train and len(dataset) > batch_size,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed) if train else None,
    )
