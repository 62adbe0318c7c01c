"""One epoch of training and one pass of evaluation; nothing else."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .models import forward_with_embedding, train_mode


@dataclass
class Execution:
    """Where and how tensors run: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


def weighted_soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets (mixup/cutmix), each class's term scaled by ``weight``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    per_class = -target * logp
    if weight is not None:
        per_class = per_class * weight
    return per_class.sum(dim=-1).mean()


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled or not sys.stderr.isatty():
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rt: Execution,
    *,
    scaler: torch.amp.GradScaler | None = None,
    mixup: Callable | None = None,
    clip_grad: float | None = None,
    ema: nn.Module | None = None,
    on_step: Callable[[], None] | None = None,
    deadline: float | None = None,
    desc: str = "train",
    progress: bool = True,
    keep_bn_stats: bool = False,
) -> dict[str, float]:
    """Train for one pass over ``loader``; return mean loss, accuracy (on hard labels) and images/s.

    ``deadline`` (a ``time.monotonic()`` value) ends the epoch early, for time-boxed runs;
    ``keep_bn_stats`` leaves every batch norm's running statistics as they are.
    """
    train_mode(model, keep_bn_stats)
    total_loss = correct = seen = 0.0
    start = time.perf_counter()
    for x, y in _progress(loader, len(loader), desc, progress):
        x, y = rt.to_input(x), y.to(rt.device, non_blocking=True)
        hard = y
        if mixup is not None and len(x) % 2 == 0:
            x, y = mixup(x, y)
        with rt.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model)
        if on_step is not None:
            on_step()
        n = len(hard)
        total_loss += float(loss.detach()) * n
        if hard.ndim == 2:  # multi-hot targets: the image's whole label set right at the 0.5 threshold
            correct += float(((logits > 0) == hard.bool()).all(1).sum())
        else:
            correct += float((logits.argmax(1) == hard).sum())
        seen += n
        if deadline is not None and time.monotonic() > deadline:
            break
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "img_per_s": seen / max(elapsed, 1e-9)}


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    rt: Execution,
    desc: str = "eval",
    progress: bool = True,
    embeddings: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``loader``: (logits as float32 (N, C), targets (N,)); with ``embeddings`` (a list to
    fill) the penultimate-layer embedding of every batch is appended to it, from the same pass."""
    model.eval()
    outs, targets = [], []
    for x, y in _progress(loader, len(loader), desc, progress):
        with rt.autocast():
            if embeddings is None:
                logits = model(rt.to_input(x))
            else:
                logits, embedding = forward_with_embedding(model, rt.to_input(x))
                embeddings.append(embedding.float().cpu().numpy())
        outs.append(logits.float().cpu())
        targets.append(y)
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy(), torch.cat(targets).numpy()


def validation_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """``val_loss`` and ``val_acc``; for multi-hot targets also ``val_map`` (acc is then subset accuracy at 0.5)."""
    if len(targets) == 0:
        return {"val_loss": float("nan"), "val_acc": float("nan")}
    t_logits = torch.from_numpy(logits)
    t_targets = torch.from_numpy(targets)
    if t_targets.ndim == 2:
        from .metrics import multilabel_metrics, sigmoid

        m = multilabel_metrics(targets, sigmoid(logits), [str(i) for i in range(targets.shape[1])],
                               [0.5] * targets.shape[1])  # fmt: skip
        return {"val_loss": float(F.binary_cross_entropy_with_logits(t_logits, t_targets.float())),
                "val_acc": m["subset_accuracy"], "val_map": m["map"]}  # fmt: skip
    loss = float(F.cross_entropy(t_logits, t_targets))
    return {"val_loss": loss, "val_acc": float((t_logits.argmax(1) == t_targets).float().mean())}
