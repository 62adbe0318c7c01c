"""``train(config)``: the one way training runs (CLI, hyper-parameter search and retrain jobs).

About 360 lines on purpose: it is the story of a run read top to bottom (data, model, precision, the epoch
loop with early stopping and the time budget, calibration, the final evaluation, the report, the save and the
trackers); the pieces it calls live in their own modules (``prepare``, ``engine``, ``autotune``, ``schedule``,
``calibration``, ``report``, ``store``, ``tracking``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import autotune, drift, store
from . import calibration as calibrate
from . import data as data_sources
from . import report as reports
from .config import TrainConfig, save_config
from .data.splits import DataSplits
from .datasets import build_loaders, class_weights, set_epoch
from .distributed import DistInfo, broadcast, cleanup, init_distributed
from .early_stopping import EarlyStopping
from .engine import Execution, predict, train_one_epoch, validation_metrics, weighted_soft_cross_entropy
from .metrics import pr_curves, tune_thresholds
from .models import build_model, config_kwargs, set_backbone_trainable
from .prepare import (
    EmaStepper,
    StepCounter,
    build_optimizer,
    default_workers,
    infer_channels,
    resolve_preprocessing,
    seed_everything,
    select_device,
)
from .schedule import RunSummary, epochs_that_fit
from .tasks import MULTILABEL, TaskSpec, multilabel_loss
from .taxonomy import Taxonomy
from .tracking import RunTracker
from .transforms import Preprocessing, resolve_augment

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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------- train(config)
def train(cfg: TrainConfig, on_epoch_end: EpochCallback | None = None, splits: DataSplits | None = None) -> TrainResult:
    """Train, evaluate on the test split, write the report and (unless ``cfg.save`` is off) store.

    ``on_epoch_end`` receives each epoch's record (epoch, loss, acc, val_loss, val_acc, lr, seconds);
    it may raise to abort (e.g. ``optuna.TrialPruned``). ``splits``: the data already read from ``cfg.data``
    (a retrain job's label audit read it first), else it is read here.

    Raises:
        training.data.splits.DatasetError: the data cannot be trained on.
        training.models.ModelError: unknown architecture or unavailable weights.
    """
    info = init_distributed()
    tracker = RunTracker(cfg, cfg.run_dir) if info.is_main else None
    try:
        return _train(cfg, info, on_epoch_end, tracker, splits)
    except BaseException as exc:  # a pruned search trial, a cancelled job, a failure: the trackers say so
        if tracker is not None:
            tracker.abort(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, info: DistInfo, on_epoch_end: EpochCallback | None, tracker: RunTracker | None,
           splits: DataSplits | None) -> TrainResult:  # fmt: skip
    started = time.monotonic()
    seed_everything(cfg.seed + info.rank)
    device = select_device(cfg, info)
    run_dir = cfg.run_dir
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    splits = data_sources.load_splits(cfg.data) if splits is None else splits
    summary = splits.summary()
    if info.is_main:
        log.info("data %s: %d classes, train/val/test %d/%d/%d, imbalance %.2f, %d skipped",
                 splits.source, len(splits.classes), len(splits.train), len(splits.val), len(splits.test),
                 summary["imbalance_ratio"], len(splits.skipped))  # fmt: skip
    num_classes = len(splits.classes)
    multilabel = splits.task == MULTILABEL
    channels = infer_channels(cfg, splits)
    load = data_sources.key_loader(splits.source, channels)

    m = cfg.model
    kwargs = config_kwargs(m, num_classes, channels)
    model = build_model(m.name, pretrained=m.pretrained, weights_file=m.weights_file, **kwargs)
    pp = resolve_preprocessing(cfg, model, splits, load, channels)
    choice = None
    if info.is_main:  # measured once; every DDP rank trains the same way
        choice = autotune.choose(cfg.precision, cfg.channels_last, device, model,
                                 (channels, pp.input_size, pp.input_size), num_classes, cfg.batch_size)  # fmt: skip
    choice = broadcast(choice, info)
    rt = choice.execution(device)
    seed_everything(cfg.seed + info.rank)  # the measurement drew random numbers: start the run from the seed
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)

    pin = rt.device.type == "cuda"
    workers = default_workers(info) if cfg.data.workers is None else cfg.data.workers
    train_loader, val_loader, test_loader = build_loaders(
        cfg, splits.train, splits.val, splits.test, load, pp, workers=workers, rank=info.rank,
        world_size=info.world_size, pin_memory=pin, num_labels=num_classes if multilabel else None,
    )  # fmt: skip

    weight = class_weights(splits.train, num_classes).to(rt.device) if cfg.data.balance == "loss" else None
    aug = resolve_augment(cfg.augment)
    mixup = None
    if multilabel:
        if aug.get("mixup") or aug.get("cutmix") or cfg.data.balance != "none":
            log.info("multi-label: mixup/cutmix and data.balance are not used (labels are weighted in the loss)")
        loss_fn = multilabel_loss(cfg, splits.train, num_classes).to(rt.device)
    elif aug.get("mixup") or aug.get("cutmix"):
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
    optimizer, scheduler = build_optimizer(_unwrap(model), cfg, lr, freeze or cfg.epochs, steps)
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype is torch.float16 else None
    ema = EmaStepper(ModelEmaV3(_unwrap(model), decay=cfg.optim.ema_decay, use_warmup=True)) if cfg.optim.ema else None
    stop_metric = early_stop_metric(cfg.early_stop.metric, multilabel)
    stopper = EarlyStopping(cfg.early_stop.patience, cfg.early_stop.min_delta,
                            "min" if stop_metric == "val_loss" else "max", target=cfg.early_stop.target)  # fmt: skip
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 1
    ckpt_path = run_dir / "last.ckpt"
    fingerprint = summary["fingerprint"]

    if cfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=rt.device, weights_only=False)
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path} was made from other data (fingerprint differs); remove it or resume=false")
        if ckpt["epoch"] >= freeze:
            set_backbone_trainable(_unwrap(model), True)
            optimizer, scheduler = build_optimizer(
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
    epoch_seconds: list[float] = []  # this run's epochs, the first (warm-up) included
    stop_reason = "completed"
    for epoch in range(start_epoch, cfg.epochs + 1):
        if freeze and epoch == freeze + 1 and start_epoch <= freeze:
            log.info("unfreezing the backbone at epoch %d (lr x %g)", epoch, cfg.optim.unfreeze_lr_scale)
            set_backbone_trainable(_unwrap(model), True)
            optimizer, scheduler = build_optimizer(
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
            keep_bn_stats=cfg.optim.freeze_bn_stats,
        )  # fmt: skip
        record: dict[str, Any] = {"epoch": epoch, "loss": stats["loss"], "acc": stats["acc"],
                                  "img_per_s": stats["img_per_s"], "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
        eval_model = ema.module if ema is not None else _unwrap(model)
        decision = None
        if info.is_main:
            logits, targets = predict(eval_model, val_loader, rt, desc="val")
            record.update(validation_metrics(logits, targets))
            record["seconds"] = time.perf_counter() - t0
            is_best = stopper.step(record[stop_metric], epoch)
            if is_best:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in eval_model.state_dict().items()})
            history.append(record)
            log.info("epoch %d/%d loss %.4f acc %.4f val_loss %.4f val_acc %.4f%s lr %.2e %.0fs (%.0f img/s)%s",
                     epoch, cfg.epochs, record["loss"], record["acc"], record["val_loss"], record["val_acc"],
                     f" val_map {record['val_map']:.4f}" if "val_map" in record else "", record["lr"],
                     record["seconds"], record["img_per_s"], " *" if is_best else "")  # fmt: skip
            torch.save({"epoch": epoch, "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                        "early_stop": stopper.state_dict(), "history": history, "best_state": best_state,
                        "fingerprint": fingerprint}, ckpt_path)  # fmt: skip
            if tracker is not None:
                tracker.epoch(record)
            if on_epoch_end is not None:
                on_epoch_end(dict(record))
            epoch_seconds.append(time.perf_counter() - t0)
            if deadline is not None:
                last_epoch = epochs_that_fit(epoch, last_epoch, epoch_seconds, deadline)
            out_of_time = epoch >= last_epoch < cfg.epochs
            decision = ("target" if stopper.reached_target else "early_stop" if stopper.should_stop
                        else "time" if out_of_time else None)  # fmt: skip
        decision, last_epoch = broadcast((decision, last_epoch), info)
        if not decision and last_epoch < cfg.epochs:
            scheduler.t_initial = (last_epoch - phase_start + 1) * steps  # anneal fully by the new end
        if decision:
            stop_reason = decision
            log.info("stopping after epoch %d: %s", epoch, {
                "target": f"{stop_metric} reached the target {cfg.early_stop.target}",
                "early_stop": f"no {stop_metric} improvement for {stopper.patience} epochs",
                "time": f"max_minutes={cfg.max_minutes} reached"}[decision])  # fmt: skip
            break

    if not info.is_main:
        return TrainResult(None, {}, [], run_dir, -1)
    final = _unwrap(model)
    if best_state is not None:
        final.load_state_dict(best_state)
        log.info("restored the best weights (epoch %d, %s %.4f)", stopper.best_epoch, stop_metric,
                 stopper.best)  # fmt: skip
    run = RunSummary.of(cfg, history, stop_reason, choice, time.monotonic() - started)
    if run.note:
        log.warning("%s", run.note)
    result = _evaluate_and_save(cfg, final, splits, summary, load, pp, kwargs, rt, info, (val_loader, test_loader),
                                history, stopper.best_epoch, run)  # fmt: skip
    if tracker is not None:
        tracker.finish({"history": history, "metrics": result.metrics, "report_dir": result.report_dir,
                        "tag": result.tag, "fingerprint": summary["fingerprint"], "task": splits.task})  # fmt: skip
    return result


def _evaluate_and_save(
    cfg: TrainConfig, final: nn.Module, splits: DataSplits, summary: dict, load: Callable, pp: Preprocessing,
    kwargs: dict, rt: Execution, info: DistInfo, loaders: tuple, history: list[dict], best_epoch: int,
    run: RunSummary,
) -> TrainResult:  # fmt: skip
    """Test-split metrics, the report with its pictures, and the store entry (rank 0 only)."""
    val_loader, test_loader = loaders
    run_dir = cfg.run_dir

    val_embeddings: list[np.ndarray] = []
    val_logits, val_targets = predict(final, val_loader, rt, desc="val", embeddings=val_embeddings)
    test_logits, test_targets = predict(final, test_loader, rt, desc="test")
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    reports.plot_curves(history, report_dir / "curves.png")
    tree = Taxonomy.from_obj(splits.taxonomy) if splits.taxonomy else None
    spec = TaskSpec(splits.task, splits.classes, taxonomy=tree)
    uncalibrated = spec.activate(test_logits)
    calibration = None
    if cfg.calibrate:  # before the thresholds: they apply to the scores the model will serve
        spec.calibration = calibrate.fit(spec.multilabel, val_logits, val_targets)
    if spec.multilabel:
        spec.thresholds = tune_thresholds(val_targets, spec.activate(val_logits))
    test_scores = spec.activate(test_logits)
    if spec.calibration is not None:
        calibration = calibrate.summary(spec.calibration, uncalibrated, test_scores, test_targets, spec.multilabel)
        reports.plot_reliability(calibration, report_dir / "calibration.png")
    drift_reference = None
    if val_embeddings:  # what the drift monitor compares live traffic with (training/drift.py)
        drift_reference = drift.fit_reference(np.concatenate(val_embeddings), spec.activate(val_logits),
                                              seed=cfg.seed)  # fmt: skip
    metrics = {"test": spec.metrics(test_targets, test_scores, cfg.top_k),
               "val": spec.metrics(val_targets, spec.activate(val_logits), cfg.top_k)}  # fmt: skip
    metrics["val"].pop("confusion_matrix", None)
    keys = [s.key for s in splits.test]
    if spec.multilabel:
        reports.plot_pr_curves(pr_curves(test_targets, test_scores, splits.classes), metrics["test"],
                               report_dir / "pr_curves.png")  # fmt: skip
        reports.plot_label_samples(keys, test_targets, test_scores, spec.thresholds, splits.classes, load,
                                   report_dir / "samples.png", seed=cfg.seed)  # fmt: skip
    else:
        reports.plot_confusion(metrics["test"]["confusion_matrix"], splits.classes,
                               report_dir / "confusion_matrix.png")  # fmt: skip
        reports.plot_samples(keys, test_targets, test_scores, splits.classes, load, report_dir / "samples.png",
                             seed=cfg.seed)  # fmt: skip
    if spec.taxonomy is not None:
        reports.plot_hierarchy(metrics["test"]["hierarchy"], report_dir / "hierarchy.png")
    report = {
        "name": cfg.name, "architecture": cfg.model.name, "classes": splits.classes, **spec.metadata(),
        "best_epoch": best_epoch, "train_seconds": run.train_seconds, "run": run.to_dict(),
        "history": history, "metrics": metrics, "data": summary, "calibration": calibration,
        "drift": drift_reference.summary() if drift_reference else None,
        "preprocessing": pp.model_dump(mode="json"), "runtime": {"device": str(rt.device),
        "precision": str(rt.amp_dtype or "fp32"), "channels_last": rt.channels_last, "world_size": info.world_size},
        "report_dir": str(report_dir),
    }  # fmt: skip
    reports.write_report(report, report_dir)
    tag = None
    if cfg.save:
        bento_model = store.save_model(
            cfg.name, final, architecture=cfg.model.name, model_kwargs=kwargs, classes=splits.classes,
            preprocessing=pp, metrics=_metric_summary(metrics, best_epoch, run.train_seconds),
            config=cfg.model_dump(mode="json"), fingerprint=summary["fingerprint"],
            split=splits.split_record(), report_dir=report_dir, drift=drift_reference,
            labels={"architecture": cfg.model.name.replace("/", "_")[:63], "task": spec.kind},
            extra_metadata={**spec.metadata(), "training": run.to_dict()},
        )  # fmt: skip
        tag = str(bento_model.tag)
        report["tag"] = tag
        reports.write_report(report, report_dir)
    return TrainResult(tag, metrics, history, report_dir, best_epoch, report)


def early_stop_metric(metric: str, multilabel: bool) -> str:
    """Accuracy means mAP for multi-label models (subset accuracy is too coarse to stop on)."""
    if multilabel:
        return "val_map" if metric == "val_acc" else metric
    return "val_acc" if metric == "val_map" else metric


def _metric_summary(metrics: dict, best_epoch: int, seconds: float) -> dict:
    """What other parts read from metadata: ``metrics.test.accuracy`` (or ``.map``) and friends (no big tables)."""

    def slim(m: dict) -> dict:
        out = {k: v for k, v in m.items() if isinstance(v, int | float) or v is None}
        out.update({f"{avg}_f1": m[avg]["f1"] for avg in ("micro", "macro", "weighted") if avg in m})
        if "hierarchy" in m:
            h = m["hierarchy"]
            out.update({f"level{d}_accuracy": v["accuracy"] for d, v in h["levels"].items()})
            out["mean_mistake_distance"] = h["mean_mistake_distance"]
        return out

    return {"test": slim(metrics["test"]), "val": slim(metrics["val"]), "best_epoch": best_epoch,
            "train_seconds": round(seconds, 1)}  # fmt: skip
