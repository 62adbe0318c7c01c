"""``train(config)``: the one way training runs (CLI, hyper-parameter search and retrain jobs)."""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import data as data_sources
from . import report as reports
from . import store
from .config import TrainConfig, save_config
from .datasets import build_loaders, class_weights, set_epoch
from .distributed import DistInfo, broadcast, cleanup, init_distributed
from .early_stopping import EarlyStopping
from .engine import Runtime, loss_and_accuracy, predict, train_one_epoch, weighted_soft_cross_entropy
from .metrics import classification_metrics, softmax
from .models import SCRATCH, build_model, model_kwargs, set_backbone_trainable
from .splits import DataSplits
from .transforms import Preprocessing, build_eval_transform, channel_stats, resolve_augment
from .weights import read_preprocessing

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    tag: str | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    report_dir: Path
    best_epoch: int
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- set-up helpers
def select_runtime(cfg: TrainConfig, info: DistInfo) -> Runtime:
    if cfg.device == "auto":
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return Runtime(device=device, amp_dtype=dtype, channels_last=cfg.channels_last)


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


def _optimizer_and_scheduler(model: nn.Module, cfg: TrainConfig, lr: float, epochs: int, steps: int):
    o = cfg.optim
    optimizer = create_optimizer_v2(model, opt=o.optimizer, lr=lr, weight_decay=o.weight_decay,
                                    momentum=o.momentum, layer_decay=o.layer_decay)  # fmt: skip
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=min(o.warmup_epochs, max(epochs - 1, 0)),
        min_lr=o.min_lr, warmup_lr=lr * 0.01, step_on_epochs=False, updates_per_epoch=max(steps, 1),
    )  # fmt: skip
    return optimizer, scheduler


def _epochs_that_fit(epoch: int, last: int, first: int, loop_start: float, deadline: float) -> int:
    """The last epoch that can still finish before ``deadline``, at the pace measured so far."""
    now = time.monotonic()
    per_epoch = (now - loop_start) / (epoch - first + 1)
    fit = epoch + int((deadline - now) // per_epoch)
    if fit < last:
        log.info("time budget: %d more epoch(s) fit; the schedule now ends at epoch %d", max(fit - epoch, 0), fit)
    return max(epoch, min(last, fit))


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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------- train(config)
def train(cfg: TrainConfig, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train, evaluate on the test split, write the report and (unless ``cfg.save`` is off) store.

    ``on_epoch_end`` receives each epoch's record (epoch, loss, acc, val_loss, val_acc, lr, seconds);
    it may raise to abort (e.g. ``optuna.TrialPruned``).

    Raises:
        training.splits.DatasetError: the data cannot be trained on.
        training.models.ModelError: unknown architecture or unavailable weights.
    """
    info = init_distributed()
    try:
        return _train(cfg, info, on_epoch_end)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, info: DistInfo, on_epoch_end: EpochCallback | None) -> TrainResult:
    started = time.monotonic()
    seed_everything(cfg.seed + info.rank)
    if cfg.threads or info.enabled:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // info.world_size))
    rt = select_runtime(cfg, info)
    run_dir = cfg.run_dir
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    splits = data_sources.load_splits(cfg.data)
    summary = splits.summary()
    if info.is_main:
        log.info("data %s: %d classes, train/val/test %d/%d/%d, imbalance %.2f, %d skipped",
                 splits.source, len(splits.classes), len(splits.train), len(splits.val), len(splits.test),
                 summary["imbalance_ratio"], len(splits.skipped))  # fmt: skip
    num_classes = len(splits.classes)
    channels = infer_channels(cfg, splits)
    load = data_sources.make_loader(splits, channels)

    m = cfg.model
    kwargs = model_kwargs(m.name, num_classes, channels, m.width, m.depth, m.drop_rate, m.drop_path_rate)
    model = build_model(m.name, pretrained=m.pretrained, weights_file=m.weights_file, **kwargs)
    pp = resolve_preprocessing(cfg, model, splits, load, channels)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)

    pin = rt.device.type == "cuda"
    workers = default_workers(info) if cfg.data.workers is None else cfg.data.workers
    train_loader, val_loader, test_loader = build_loaders(
        cfg, splits.train, splits.val, splits.test, load, pp, workers=workers, rank=info.rank,
        world_size=info.world_size, pin_memory=pin,
    )  # fmt: skip

    weight = class_weights(splits.train, num_classes).to(rt.device) if cfg.data.balance == "loss" else None
    aug = resolve_augment(cfg.augment)
    mixup = None
    if aug.get("mixup") or aug.get("cutmix"):
        mixup = Mixup(mixup_alpha=aug.get("mixup", 0.0), cutmix_alpha=aug.get("cutmix", 0.0),
                      label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)  # fmt: skip

        def loss_fn(logits, target):
            return weighted_soft_cross_entropy(logits, target, weight)
    else:
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)

    freeze = cfg.optim.freeze_epochs
    if freeze:
        set_backbone_trainable(model, False)
    if info.enabled:
        model = DistributedDataParallel(model, find_unused_parameters=bool(freeze))
    steps = len(train_loader)
    lr = cfg.optim.lr
    optimizer, scheduler = _optimizer_and_scheduler(_unwrap(model), cfg, lr, freeze or cfg.epochs, steps)
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype is torch.float16 else None
    ema = EmaStepper(ModelEmaV3(_unwrap(model), decay=cfg.optim.ema_decay, use_warmup=True)) if cfg.optim.ema else None
    stopper = EarlyStopping(cfg.early_stop.patience, cfg.early_stop.min_delta,
                            "max" if cfg.early_stop.metric == "val_acc" else "min")  # fmt: skip
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 1
    ckpt_path = run_dir / "last.ckpt"
    fingerprint = splits.fingerprint()

    if cfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=rt.device, weights_only=False)
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path} was made from other data (fingerprint differs); remove it or resume=false")
        if ckpt["epoch"] >= freeze:
            set_backbone_trainable(_unwrap(model), True)
            optimizer, scheduler = _optimizer_and_scheduler(
                _unwrap(model), cfg, lr * (cfg.optim.unfreeze_lr_scale if freeze else 1.0),
                cfg.epochs - freeze, steps)  # fmt: skip
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        stopper.load_state_dict(ckpt["early_stop"])
        history, best_state = ckpt["history"], ckpt["best_state"]
        start_epoch = ckpt["epoch"] + 1
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else None
    phase_start = freeze + 1 if freeze and start_epoch > freeze else 1
    last_epoch = cfg.epochs  # a time budget may bring it forward, the schedule annealing sooner
    loop_start = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs + 1):
        if freeze and epoch == freeze + 1 and start_epoch <= freeze:
            log.info("unfreezing the backbone at epoch %d (lr x %g)", epoch, cfg.optim.unfreeze_lr_scale)
            set_backbone_trainable(_unwrap(model), True)
            optimizer, scheduler = _optimizer_and_scheduler(
                _unwrap(model), cfg, lr * cfg.optim.unfreeze_lr_scale, cfg.epochs - freeze, steps
            )
            phase_start = epoch
        set_epoch(train_loader, epoch)
        t0 = time.perf_counter()
        step_base = (epoch - phase_start) * steps
        stats = train_one_epoch(
            model, train_loader, optimizer, loss_fn, rt, scaler=scaler, mixup=mixup,
            clip_grad=cfg.optim.clip_grad, ema=ema, on_step=StepCounter(scheduler, step_base),
            deadline=deadline, desc=f"epoch {epoch}/{cfg.epochs}", progress=info.is_main,
        )  # fmt: skip
        record: dict[str, Any] = {"epoch": epoch, "loss": stats["loss"], "acc": stats["acc"],
                                  "img_per_s": stats["img_per_s"], "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
        eval_model = ema.module if ema is not None else _unwrap(model)
        decision = None
        if info.is_main:
            logits, targets = predict(eval_model, val_loader, rt, desc="val")
            record["val_loss"], record["val_acc"] = loss_and_accuracy(logits, targets)
            record["seconds"] = time.perf_counter() - t0
            is_best = stopper.step(record[cfg.early_stop.metric], epoch)
            if is_best:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in eval_model.state_dict().items()})
            history.append(record)
            log.info("epoch %d/%d loss %.4f acc %.4f val_loss %.4f val_acc %.4f lr %.2e %.0fs (%.0f img/s)%s",
                     epoch, cfg.epochs, record["loss"], record["acc"], record["val_loss"], record["val_acc"],
                     record["lr"], record["seconds"], record["img_per_s"], " *" if is_best else "")  # fmt: skip
            torch.save({"epoch": epoch, "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                        "early_stop": stopper.state_dict(), "history": history, "best_state": best_state,
                        "fingerprint": fingerprint}, ckpt_path)  # fmt: skip
            if on_epoch_end is not None:
                on_epoch_end(dict(record))
            if deadline is not None:
                last_epoch = _epochs_that_fit(epoch, last_epoch, start_epoch, loop_start, deadline)
            out_of_time = epoch >= last_epoch < cfg.epochs
            decision = "early_stop" if stopper.should_stop else "time" if out_of_time else None
        decision, last_epoch = broadcast((decision, last_epoch), info)
        if not decision and last_epoch < cfg.epochs:
            scheduler.t_initial = (last_epoch - phase_start + 1) * steps  # anneal fully by the new end
        if decision:
            log.info("stopping after epoch %d: %s", epoch,
                     f"no {cfg.early_stop.metric} improvement for {stopper.patience} epochs"
                     if decision == "early_stop" else f"max_minutes={cfg.max_minutes} reached")  # fmt: skip
            break

    if not info.is_main:
        return TrainResult(None, {}, [], run_dir, -1)
    final = _unwrap(model)
    if best_state is not None:
        final.load_state_dict(best_state)
        log.info("restored the best weights (epoch %d, %s %.4f)", stopper.best_epoch, cfg.early_stop.metric,
                 stopper.best)  # fmt: skip
    train_seconds = time.monotonic() - started

    val_logits, val_targets = predict(final, val_loader, rt, desc="val")
    test_logits, test_targets = predict(final, test_loader, rt, desc="test")
    test_probs = softmax(test_logits)
    metrics = {
        "test": classification_metrics(test_targets, test_probs, splits.classes, cfg.top_k),
        "val": {k: v for k, v in classification_metrics(val_targets, softmax(val_logits), splits.classes,
                                                        cfg.top_k).items() if k != "confusion_matrix"},
    }  # fmt: skip
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    reports.plot_curves(history, report_dir / "curves.png")
    reports.plot_confusion(metrics["test"]["confusion_matrix"], splits.classes, report_dir / "confusion_matrix.png")
    reports.plot_samples([s.key for s in splits.test], test_targets, test_probs, splits.classes, load,
                         report_dir / "samples.png", seed=cfg.seed)  # fmt: skip
    report = {
        "name": cfg.name, "architecture": m.name, "classes": splits.classes, "best_epoch": stopper.best_epoch,
        "train_seconds": train_seconds, "history": history, "metrics": metrics, "data": summary,
        "preprocessing": pp.model_dump(mode="json"), "runtime": {"device": str(rt.device),
        "precision": str(rt.amp_dtype or "fp32"), "channels_last": rt.channels_last, "world_size": info.world_size},
        "report_dir": str(report_dir),
    }  # fmt: skip
    reports.write_report(report, report_dir)
    tag = None
    if cfg.save:
        bento_model = store.save_model(
            cfg.name, final, architecture=m.name, model_kwargs=kwargs, classes=splits.classes,
            preprocessing=pp, metrics=_metric_summary(metrics, stopper.best_epoch, train_seconds),
            config=cfg.model_dump(mode="json"), fingerprint=summary["fingerprint"],
            split=splits.split_record(), report_dir=report_dir,
            labels={"architecture": m.name.replace("/", "_")[:63]},
        )  # fmt: skip
        tag = str(bento_model.tag)
        report["tag"] = tag
        reports.write_report(report, report_dir)
    return TrainResult(tag, metrics, history, report_dir, stopper.best_epoch, report)


def _metric_summary(metrics: dict, best_epoch: int, seconds: float) -> dict:
    """What other parts read from metadata: ``metrics.test.accuracy`` and friends (no big tables)."""

    def slim(m: dict) -> dict:
        out = {k: v for k, v in m.items() if isinstance(v, int | float) or v is None}
        out.update({f"{avg}_f1": m[avg]["f1"] for avg in ("macro", "weighted")})
        return out

    return {"test": slim(metrics["test"]), "val": slim(metrics["val"]), "best_epoch": best_epoch,
            "train_seconds": round(seconds, 1)}  # fmt: skip
