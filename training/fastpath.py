"""A fast path for small-image datasets: decode everything once, augment whole batches on tensors.

Per-image transforms cost ~150 us of Python per sample, as much as a small CNN's training step on
28-px images. When every augmentation asked for can run on batches (pad-and-crop, flips, random
erasing; mixup/cutmix already do), and the decoded split fits in memory, the loader below serves
normalised batches straight from one uint8 tensor. Identical preprocessing to the eval transform:
images are resized exactly as :func:`build_eval_transform` does, then normalised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torchvision.transforms import v2

from .data.splits import Sample
from .transforms import Preprocessing, build_eval_transform

log = logging.getLogger(__name__)

BATCH_AUGMENTS = {"crop_padding", "hflip", "random_erasing", "mixup", "cutmix"}
MAX_BYTES = 2 * 1024**3


def supports(aug: dict, n_samples: int, pp: Preprocessing) -> bool:
    """True when every requested augmentation has a batch form and the split fits in memory."""
    active = {k for k, v in aug.items() if v}
    if "crop_padding" in aug:
        active.discard("scale_min")  # pad-and-crop replaces the random-resized crop
    return active <= BATCH_AUGMENTS and n_samples * pp.channels * pp.input_size**2 <= MAX_BYTES


def decode_all(samples: Sequence[Sample], load: Callable, pp: Preprocessing) -> torch.Tensor:
    """Every sample resized like the eval transform, as one uint8 (N, C, H, W) tensor."""
    eval_tf = build_eval_transform(pp)
    geometry = v2.Compose([t for t in eval_tf.transforms if isinstance(t, v2.Resize | v2.CenterCrop)]
                          + [v2.PILToTensor()])  # fmt: skip
    out = torch.empty((len(samples), pp.channels, pp.input_size, pp.input_size), dtype=torch.uint8)
    for i, s in enumerate(samples):
        out[i] = geometry(load(s.key))
    return out


class TensorBatchLoader:
    """Iterates (images, labels) batches from pre-decoded uint8 images, augmenting on the batch."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        pp: Preprocessing,
        batch_size: int,
        *,
        train: bool,
        aug: dict | None = None,
        seed: int = 0,
        sample_weights: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(pp.mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(pp.std).view(1, -1, 1, 1) * 255
        self.batch_size, self.train, self.aug = batch_size, train, aug or {}
        self.seed, self.epoch = seed, 0
        self.sample_weights = sample_weights
        self.rank, self.world_size = rank, world_size
        self.drop_last = train and len(images) > batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if not self.train:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.sample_weights is not None:
            idx = torch.multinomial(self.sample_weights, n, replacement=True, generator=g)
        else:
            idx = torch.randperm(n, generator=g)
        per_rank = n // self.world_size
        return idx[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:
        n = len(self.images) // (self.world_size if self.train else 1)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = (self.images[sel].float() - self.mean) / self.std
            if self.train:
                x = self._augment(x, g)
            yield x, self.labels[sel]

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        pad = self.aug.get("crop_padding") or 0
        if pad:
            x = pad_crop(x, pad, g)
        if self.aug.get("hflip"):
            flip = torch.rand(len(x), generator=g) < self.aug["hflip"]
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.aug.get("random_erasing"):
            x = random_erase(x, self.aug["random_erasing"], g)
        return x


def pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad (zero = the mean after normalisation) by ``pad`` and crop back at random offsets."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (len(x),), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (len(x),), generator=g)
    out = torch.empty_like(x)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            m = (oy == dy) & (ox == dx)
            if m.any():
                out[m] = padded[m, :, dy : dy + h, dx : dx + w]
    return out


def random_erase(x: torch.Tensor, p: float, g: torch.Generator, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
    """Zero a random rectangle (area ``scale``, aspect ``ratio``) in each image with probability ``p``."""
    _, _, h, w = x.shape
    x = x.clone()
    hit = (torch.rand(len(x), generator=g) < p).nonzero().flatten().tolist()
    for i in hit:
        area = h * w * float(torch.empty(1).uniform_(*scale, generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)))
        eh, ew = min(h, round(math.sqrt(area * aspect))), min(w, round(math.sqrt(area / aspect)))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=g))
        x[i, :, top : top + eh, left : left + ew] = 0
    return x
