"""torch ``Dataset`` over samples, and the DataLoaders built from splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from . import fastpath
from .data.splits import Sample
from .tasks import multi_hot
from .transforms import Preprocessing, build_eval_transform, build_train_transform, resolve_augment

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Samples read by ``load`` (key -> PIL image) and passed through ``transform``.

    Targets are class indices, or multi-hot vectors when ``num_labels`` is given (multi-label data).
    """

    def __init__(self, samples: Sequence[Sample], load: Callable[[str], Image.Image], transform: Callable,
                 num_labels: int | None = None):  # fmt: skip
        self.samples = list(samples)
        self.load = load
        self.transform = transform
        self.targets = multi_hot(self.samples, num_labels) if num_labels else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample = self.samples[index]
        target = self.targets[index] if self.targets is not None else sample.label
        return self.transform(self.load(sample.key)), target


def targets_of(samples: Sequence[Sample], num_labels: int | None) -> torch.Tensor:
    """Class indices (N,), or multi-hot (N, L) when ``num_labels`` is given."""
    return multi_hot(samples, num_labels) if num_labels else torch.tensor([s.label for s in samples])


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
    num_labels: int | None = None,
) -> tuple[Iterable, Iterable, Iterable]:
    """Train/val/test loaders: the in-memory batch-augmenting fast path when the config allows it.

    ``num_labels`` (multi-label data) makes targets multi-hot; class balancing is then the loss's job.
    """
    aug = resolve_augment(cfg.augment)
    balance_sampler = cfg.data.balance == "sampler" and not num_labels
    if fastpath.supports(aug, len(train) + len(val) + len(test), pp):
        log.info("fast path: %d images decoded once, augmented on batches", len(train) + len(val) + len(test))

        def tensors(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
            return fastpath.decode_all(samples, load, pp), targets_of(samples, num_labels)

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
        ImageDataset(train, load, build_train_transform(pp, cfg.augment), num_labels), cfg.batch_size, train=True,
        workers=workers, seed=cfg.seed, balance_sampler=balance_sampler, distributed=world_size > 1,
        pin_memory=pin_memory,
    )  # fmt: skip
    eval_loaders = [make_loader(ImageDataset(split, load, eval_tf, num_labels), cfg.batch_size * 2, train=False,
                                workers=workers, seed=cfg.seed, pin_memory=pin_memory)
                    for split in (val, test)]  # fmt: skip
    return train_loader, *eval_loaders


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Reshuffle per epoch, for whichever loader kind (DistributedSampler or the fast path)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)
