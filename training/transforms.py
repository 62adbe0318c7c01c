"""Preprocessing that travels with the model, and the train/eval transforms built from it.

:class:`Preprocessing` is saved in the model store; serving builds its transform with
:func:`build_eval_transform` from that record, so training and serving cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from .config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """Everything needed to turn a decoded image into the model's input tensor."""

    input_size: int = Field(..., ge=8, description="Square side of the model input, px.")
    channels: Literal[1, 3] = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop_pct: float = Field(1.0, gt=0, le=1, description="Resize to size/crop_pct, then centre-crop.")

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode(name)


def build_eval_transform(pp: Preprocessing) -> v2.Compose:
    """Resize the short side to ``input_size / crop_pct``, centre-crop, scale to [0, 1], normalise."""
    resize: list[nn.Module]
    if pp.crop_pct >= 1.0:
        resize = [v2.Resize((pp.input_size, pp.input_size), interpolation=_interp(pp.interpolation), antialias=True)]
    else:
        resize = [
            v2.Resize(pp.resize_size, interpolation=_interp(pp.interpolation), antialias=True),
            v2.CenterCrop(pp.input_size),
        ]
    return v2.Compose([*resize, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pp.mean, pp.std)])


# preset -> defaults; explicit AugmentConfig fields override them
PRESETS: dict[str, dict] = {
    "none": {},
    "light": {"scale_min": 0.7, "hflip": 0.5},
    "medium": {"scale_min": 0.35, "hflip": 0.5, "color_jitter": 0.2, "auto_augment": "trivialaugment",
               "random_erasing": 0.25},
    "strong": {"scale_min": 0.08, "hflip": 0.5, "color_jitter": 0.3, "auto_augment": "randaugment",
               "random_erasing": 0.25, "mixup": 0.2, "cutmix": 1.0},
}  # fmt: skip


def resolve_augment(cfg: AugmentConfig) -> dict:
    """The preset's values with every explicitly set field of ``cfg`` on top."""
    values = dict(PRESETS[cfg.preset])
    values.update({k: v for k, v in cfg.model_dump(exclude={"preset"}).items() if v is not None})
    return values


def build_train_transform(pp: Preprocessing, cfg: AugmentConfig) -> v2.Compose:
    """Random-resized crop, flips, rotation, colour, auto-augment, blur, then normalise and erase."""
    aug = resolve_augment(cfg)
    if cfg.preset == "none" and len(aug) == 0:
        return build_eval_transform(pp)
    ops: list[nn.Module]
    if aug.get("crop_padding") is not None:
        ops = [
            v2.Resize((pp.input_size, pp.input_size), interpolation=_interp(pp.interpolation), antialias=True),
            v2.RandomCrop(pp.input_size, padding=aug["crop_padding"], padding_mode="reflect"),
        ]
    else:
        ops = [
            v2.RandomResizedCrop(
                pp.input_size,
                scale=(aug.get("scale_min", 1.0), 1.0),
                interpolation=_interp(pp.interpolation),
                antialias=True,
            )
        ]
    if aug.get("hflip"):
        ops.append(v2.RandomHorizontalFlip(aug["hflip"]))
    if aug.get("rotation"):
        ops.append(v2.RandomRotation(aug["rotation"]))
    if aug.get("color_jitter"):
        j = aug["color_jitter"]
        ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j if pp.channels == 3 else 0))
    auto = aug.get("auto_augment", "none")
    if auto == "randaugment":
        ops.append(v2.RandAugment(interpolation=_interp(pp.interpolation)))
    elif auto == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=_interp(pp.interpolation)))
    if aug.get("blur"):
        ops.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.5))], p=aug["blur"]))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if aug.get("noise"):
        ops.append(v2.GaussianNoise(sigma=aug["noise"], clip=True))
    ops.append(v2.Normalize(pp.mean, pp.std))
    if aug.get("random_erasing"):
        ops.append(v2.RandomErasing(p=aug["random_erasing"], value=0))
    return v2.Compose(ops)


def channel_stats(images: Sequence[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of float images in [0, 1] (C, H, W), for scratch models."""
    flat = torch.cat([img.flatten(1) for img in images], dim=1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}  # fmt: skip


class EvalPreprocessor:
    """:func:`build_eval_transform` without the per-op dispatch: one PIL resample, then one NumPy pass.

    Gives the same array as the torchvision transform on a PIL image (resize, centre crop, to float,
    normalise) in a fraction of the time; serving uses it on its hot path. Two shortcuts keep it fast:
    the centre crop is folded into the resample (``box``: only the pixels kept are computed, at the
    same scale and centres, so a pixel differs from resize-then-crop by at most one 8-bit level, from
    fixed-point rounding), and the uint8 image goes to the normalised float32 CHW array in one pass.
    ``tests/test_transforms.py`` holds the two to each other.
    """

    def __init__(self, pp: Preprocessing):
        self.pp = pp
        self.filter = _PIL_FILTERS[pp.interpolation]
        self.scale = (1.0 / (255.0 * np.asarray(pp.std, dtype=np.float32))).reshape(-1, 1, 1)
        self.offset = (np.asarray(pp.mean, dtype=np.float32) / np.asarray(pp.std, dtype=np.float32)).reshape(-1, 1, 1)

    def _resized(self, img: Image.Image) -> Image.Image:
        size = self.pp.input_size
        if self.pp.crop_pct >= 1.0:
            return img if img.size == (size, size) else img.resize((size, size), self.filter)
        short = self.pp.resize_size
        w, h = img.size
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        if (new_w, new_h) == img.size:
            return img.crop((left, top, left + size, top + size))
        sx, sy = w / new_w, h / new_h  # the crop, in the source's coordinates
        return img.resize((size, size), self.filter, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))

    def __call__(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(self._resized(img))
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out = np.multiply(chw, self.scale, out=np.empty(chw.shape, np.float32))  # C order, from uint8 at once
        out -= self.offset
        return out
