"""torch ``Dataset`` over samples, and the DataLoaders built from splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from . import fastpath
from .splits import Sample
from .transforms import Preprocessing, build_eval_transform, build_train_transform, resolve_augment

log = logging.getLogger(__name__)


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


def build_loaders(
    cfg,
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample],
    load: Callable,
    pp: Preprocessing,
    *,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[Iterable, Iterable, Iterable]:
    """Train/val/test loaders: the in-memory batch-augmenting fast path when the config allows it."""
    aug = resolve_augment(cfg.augment)
    balance_sampler = cfg.data.balance == "sampler"
    if fastpath.supports(aug, len(train) + len(val) + len(test), pp):
        log.info("fast path: %d images decoded once, augmented on batches", len(train) + len(val) + len(test))

        def tensors(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
            return fastpath.decode_all(samples, load, pp), torch.tensor([s.label for s in samples])

        weights = None
        if balance_sampler:
            w = class_weights(train, max(s.label for s in train) + 1)
            weights = torch.tensor([float(w[s.label]) for s in train])
        loaders = [fastpath.TensorBatchLoader(*tensors(train), pp, cfg.batch_size, train=True, aug=aug,
                                              seed=cfg.seed, sample_weights=weights, rank=rank,
                                              world_size=world_size)]  # fmt: skip
        loaders += [fastpath.TensorBatchLoader(*tensors(split), pp, cfg.batch_size * 2, train=False)
                    for split in (val, test)]  # fmt: skip
        return tuple(loaders)
    eval_tf = build_eval_transform(pp)
    train_loader = make_loader(
        ImageDataset(train, load, build_train_transform(pp, cfg.augment)), cfg.batch_size, train=True,
        workers=workers, seed=cfg.seed, balance_sampler=balance_sampler, distributed=world_size > 1,
        pin_memory=pin_memory,
    )  # fmt: skip
    eval_loaders = [make_loader(ImageDataset(split, load, eval_tf), cfg.batch_size * 2, train=False,
                                workers=workers, seed=cfg.seed, pin_memory=pin_memory)
                    for split in (val, test)]  # fmt: skip
    return train_loader, *eval_loaders


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Reshuffle per epoch, for whichever loader kind (DistributedSampler or the fast path)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)
