"""Set-up pieces of a training run: device and precision, preprocessing, optimizer and schedule, EMA."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

import numpy as np
import torch
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from . import data as data_sources
from .config import TrainConfig
from .data.splits import DataSplits
from .distributed import DistInfo
from .models import SCRATCH
from .transforms import Preprocessing, build_eval_transform, channel_stats
from .weights import read_preprocessing

log = logging.getLogger(__name__)


def select_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """The device for this run (and the torch thread count: DDP ranks on one CPU host share its cores)."""
    if cfg.threads or info.enabled:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // info.world_size))
    if cfg.device == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_preprocessing(
    cfg: TrainConfig, model: nn.Module, splits: DataSplits, load: Callable, channels: int
) -> Preprocessing:
    """timm models: their pretrained config (size overridable). Scratch: size and stats from the data."""
    if cfg.model.weights_file and (recorded := read_preprocessing(cfg.model.weights_file)):
        return recorded.model_copy(update={"input_size": cfg.model.img_size or recorded.input_size})
    if cfg.model.name != SCRATCH:
        dc = resolve_data_config({}, model=model)
        size = cfg.model.img_size or dc["input_size"][-1]
        mean, std = tuple(dc["mean"]), tuple(dc["std"])
        if channels == 1:
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        return Preprocessing(input_size=size, channels=channels, mean=mean, std=std,
                             interpolation=dc["interpolation"], crop_pct=dc["crop_pct"])  # fmt: skip
    rng = random.Random(cfg.seed)
    probe = rng.sample(splits.train, min(256, len(splits.train)))
    images = [load(s.key) for s in probe]
    size = cfg.model.img_size or int(np.clip(np.median([min(i.size) for i in images]), 16, 96))
    to_tensor = build_eval_transform(Preprocessing(input_size=size, channels=channels, mean=(0.0,) * channels,
                                                   std=(1.0,) * channels))  # fmt: skip
    mean, std = channel_stats([to_tensor(i) for i in images])
    return Preprocessing(input_size=size, channels=channels, mean=mean, std=std, interpolation="bilinear")


def infer_channels(cfg: TrainConfig, splits: DataSplits) -> int:
    """Scratch models on all-grayscale data take one channel; everything else three."""
    if cfg.model.channels:
        return cfg.model.channels
    if cfg.model.name != SCRATCH:
        return 3
    if splits.source.startswith(data_sources.FASHION_MNIST):
        return 1
    from .imaging import open_image

    probe = random.Random(cfg.seed).sample(splits.train, min(64, len(splits.train)))
    gray = all(open_image(s.key).mode in ("L", "LA", "I", "I;16", "1") for s in probe)
    return 1 if gray else 3


def default_workers(info: DistInfo) -> int:
    """Loader processes only pay off with spare cores: on two, a worker fights the compute threads."""
    cores = (os.cpu_count() or 1) // info.world_size
    return 0 if cores <= 2 else min(4, cores // 2)


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, epochs: int, steps: int):
    o = cfg.optim
    optimizer = create_optimizer_v2(model, opt=o.optimizer, lr=lr, weight_decay=o.weight_decay,
                                    momentum=o.momentum, layer_decay=o.layer_decay)  # fmt: skip
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=min(o.warmup_epochs, max(epochs - 1, 0)),
        min_lr=o.min_lr, warmup_lr=lr * 0.01, step_on_epochs=False, updates_per_epoch=max(steps, 1),
    )  # fmt: skip
    return optimizer, scheduler


class EmaStepper:
    """Feeds the update count to timm's EMA so its decay warms up (early averages track the weights)."""

    def __init__(self, ema: ModelEmaV3):
        self.ema, self.steps = ema, 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module) -> None:
        self.steps += 1
        self.ema.update(model, step=self.steps)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        self.steps = state["steps"]


class StepCounter:
    """Advances a timm scheduler by optimizer updates (``step_update``), counting from ``start``."""

    def __init__(self, scheduler, start: int):
        self.scheduler, self.updates = scheduler, start

    def __call__(self) -> None:
        self.updates += 1
        self.scheduler.step_update(self.updates)
