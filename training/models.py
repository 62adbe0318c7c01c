"""One factory for every architecture: the scratch CNN family and any timm model by name."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import nn

if TYPE_CHECKING:
    from training.config import ModelConfig

log = logging.getLogger(__name__)

SCRATCH = "scratch-cnn"


class ModelError(ValueError):
    """An unknown architecture, or pretrained weights that cannot be had."""


class ScratchCNN(nn.Module):
    """conv-BN-ReLU x2 + max-pool blocks, channels doubling per block, then pooled dropout + linear.

    Small enough to train on two CPU cores in minutes; ``width`` and ``depth`` scale it.
    The full-resolution block costs the most memory traffic: ``first_width`` gives it fewer channels than
    ``width`` (the later blocks keep ``width * 2**i``), ``first_block_convs=1`` one conv instead of two.
    ``flip_tta`` makes the model, outside training, average the feature maps of each image and of its
    mirror image: one forward pass of twice the batch, built into the graph every runtime exports, so
    evaluation and serving answer alike (+0.15 points of Fashion-MNIST test accuracy for the default recipe).
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32, depth: int = 3, drop_rate: float = 0.2,
                 first_block_convs: int = 2, first_width: int | None = None, flip_tta: bool = False):  # fmt: skip
        super().__init__()
        self.flip_tta = flip_tta
        layers: list[nn.Module] = []
        c_in = in_chans
        for i in range(depth):
            c_out = (first_width or width) if i == 0 else width * 2**i
            for _ in range(first_block_convs if i == 0 else 2):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]  # fmt: skip
                c_in = c_out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            if drop_rate:
                layers.append(nn.Dropout2d(drop_rate / 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(c_in, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.flip_tta:
            return self.features(x)
        n = x.shape[0]
        both = self.features(torch.cat([x, x.flip(3)]))
        return (both[:n] + both[n:].flip(3)) / 2

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.classifier(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def forward_with_embedding(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penultimate-layer embedding) in one pass: timm's ``forward_features`` then ``forward_head``
    with and without ``pre_logits`` (the pooled features the classifier reads). A network without that
    split gives its logits as its embedding."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(x)
        return model.forward_head(features), model.forward_head(features, pre_logits=True).flatten(1)
    logits = model(x)
    return logits, logits


class WithEmbedding(nn.Module):
    """What the serving runtimes export: ``(N, classes + embedding)``, the logits first, so one graph gives
    the answer and what the drift monitor watches (``InferenceRuntime.with_embedding`` takes them apart)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, embedding = forward_with_embedding(self.model, x)
        return torch.cat([logits, embedding.to(logits.dtype)], dim=1)


def model_kwargs(
    name: str,
    num_classes: int,
    in_chans: int,
    width: int = 32,
    depth: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    first_block_convs: int = 2,
    first_width: int | None = None,
    flip_tta: bool = False,
) -> dict[str, Any]:
    """The constructor arguments that, with ``name``, rebuild the architecture (stored with the model)."""
    if name == SCRATCH:
        kw = {"num_classes": num_classes, "in_chans": in_chans, "width": width, "depth": depth, "drop_rate": drop_rate}
        if first_block_convs != 2:
            kw["first_block_convs"] = first_block_convs
        if first_width and first_width != width:
            kw["first_width"] = first_width
        if flip_tta:
            kw["flip_tta"] = True
        return kw
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    return kwargs


def config_kwargs(m: ModelConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """``model_kwargs`` from a config's ``model`` section."""
    return model_kwargs(m.name, num_classes, in_chans, m.width, m.depth, m.drop_rate, m.drop_path_rate,
                        m.first_block_convs, m.first_width, m.flip_tta)  # fmt: skip


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights_file: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``scratch-cnn`` or any timm model, optionally with pretrained weights.

    Pretrained weights come from ``weights_file`` when given (timm's ``pretrained_cfg_overlay``;
    a classifier of another size is dropped), else from timm's own hub mechanism, which needs
    the network.

    Raises:
        ModelError: unknown name, missing weights file, or weights that cannot be fetched.
    """
    if name == SCRATCH:
        if pretrained or weights_file:
            raise ModelError("scratch-cnn has no pretrained weights; use a timm model name for fine-tuning")
        return ScratchCNN(num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ModelError(
            f"unknown model {name!r}: use 'scratch-cnn' or a timm model name"
            + (f" (similar: {', '.join(close)})" if close else "")
        )
    create_kwargs: dict[str, Any] = dict(kwargs)
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise ModelError(
                f"weights file {path} does not exist (import them with `python -m training import-weights`)"
            )
        create_kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **create_kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained and not weights_file:
            raise ModelError(
                f"could not fetch pretrained weights for {name} ({type(exc).__name__}: {exc}). Offline? "
                "Import local weights with `python -m training import-weights` and pass model.weights_file."
            ) from exc
        raise


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        raise ModelError(f"{type(model).__name__} exposes no classifier head to fine-tune")
    return list(head.parameters())


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the classifier head."""
    head = {id(p) for p in classifier_parameters(model)}
    for p in model.parameters():
        p.requires_grad = trainable or id(p) in head


def train_mode(model: nn.Module, keep_bn_stats: bool = False) -> nn.Module:
    """``model.train()``, except batch norms whose weights are frozen (or all, ``keep_bn_stats``) keep their
    running statistics.

    Fine-tuning a frozen backbone must not re-estimate its ImageNet statistics from a few small batches.
    """
    model.train()
    for module in model.modules():
        frozen = keep_bn_stats or (getattr(module, "weight", None) is not None and not module.weight.requires_grad)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()
    return model
