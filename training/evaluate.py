"""Evaluate a stored model: on exactly the test images recorded at training time, or on new data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import report as reports
from .config import DataConfig
from .data import KeyLoader, key_loader, load_splits, recorded_samples
from .data.splits import DatasetError, Sample
from .datasets import ImageDataset, make_loader
from .engine import Execution, predict
from .metrics import pr_curves
from .store import StoredModel, load_model
from .tasks import TaskSpec
from .transforms import build_eval_transform

log = logging.getLogger(__name__)


def _recorded_samples(stored: StoredModel, split: str) -> tuple[list[Sample], KeyLoader]:
    record = stored.split()
    if record is None:
        raise DatasetError(f"{stored.tag} has no recorded split; pass --data to evaluate it on a dataset")
    load = key_loader(record["source"], stored.preprocessing.channels)
    return recorded_samples(record, split, stored.classes), load


def predict_samples(stored: StoredModel, samples: list[Sample], load: KeyLoader, batch_size: int = 256,
                    embeddings: list[np.ndarray] | None = None):  # fmt: skip
    """(scores, targets) of ``stored`` on ``samples`` with its own eval transform (multi-label: multi-hot targets);
    with ``embeddings`` (a list to fill) the penultimate-layer embeddings too, from the same pass."""
    spec = TaskSpec.from_metadata(stored.metadata)
    rt = Execution(torch.device("cpu"), channels_last=True)
    stored.model.to(memory_format=torch.channels_last)
    num_labels = len(stored.classes) if spec.multilabel else None
    dataset = ImageDataset(samples, load, build_eval_transform(stored.preprocessing), num_labels)
    loader = make_loader(dataset, batch_size, train=False, workers=1, seed=0)
    logits, targets = predict(stored.model, loader, rt, desc="evaluate", embeddings=embeddings)
    return spec.activate(logits), targets


@dataclass
class RecordPredictions:
    """One model's answers on a recorded split: per image (``keys``) its scores and target, and the metrics."""

    keys: list[str]
    classes: list[str]
    scores: np.ndarray
    targets: np.ndarray
    metrics: dict


def predictions_on_record(tag: str, record: dict, split: str = "test") -> RecordPredictions:
    """``tag`` on a recorded split (another model's, say): the promotion gate's measure.

    Raises:
        DatasetError: none of the recorded images belongs to one of the model's classes.
    """
    stored = load_model(tag)
    samples = recorded_samples(record, split, stored.classes)
    if not samples:
        raise DatasetError(f"none of the recorded {split} images has a class {tag} knows")
    scores, targets = predict_samples(stored, samples, key_loader(record["source"], stored.preprocessing.channels))
    metrics = TaskSpec.from_metadata(stored.metadata).metrics(targets, scores)
    return RecordPredictions([s.key for s in samples], list(stored.classes), scores, targets, metrics)


def evaluate_on_record(tag: str, record: dict, split: str = "test") -> dict:
    """Metrics of ``tag`` on a recorded split."""
    return predictions_on_record(tag, record, split).metrics


def evaluate_stored(
    tag: str, data: str | None = None, split: str = "test", output: Path | None = None, batch_size: int = 256
) -> dict:
    """Metrics and pictures for ``tag`` on its recorded ``split`` or on every image of ``data``.

    With ``data``, images are matched to the model's classes by folder/label name; other labels
    are skipped and listed.
    """
    stored = load_model(tag)
    channels = stored.preprocessing.channels
    if data is None:
        samples, load = _recorded_samples(stored, split)
        where = f"{tag} recorded {split} split"
    else:
        nested = stored.metadata.get("task") == "hierarchical" and not stored.metadata.get("config", {}).get(
            "data", {}
        ).get("taxonomy")
        splits = load_splits(DataConfig(source=data, classes=stored.classes, val_fraction=0.01, test_fraction=0.01,
                                        task="hierarchical" if nested else "auto"))  # fmt: skip
        samples = splits.train + splits.val + splits.test
        load = key_loader(splits.source, channels)
        where = data
    if not samples:
        raise DatasetError(f"no images to evaluate in {where}")
    scores, targets = predict_samples(stored, samples, load, batch_size)
    spec = TaskSpec.from_metadata(stored.metadata)
    metrics = spec.metrics(targets, scores)
    out = output or Path("runs") / stored.tag.replace(":", "-") / f"evaluate-{split if data is None else 'data'}"
    out.mkdir(parents=True, exist_ok=True)
    keys = [s.key for s in samples]
    if spec.multilabel:
        curves = pr_curves(targets, scores, stored.classes)
        reports.plot_pr_curves(curves, metrics, out / "pr_curves.png")
        reports.plot_label_samples(keys, targets, scores, spec.thresholds, stored.classes, load, out / "samples.png")
    else:
        reports.plot_confusion(metrics["confusion_matrix"], stored.classes, out / "confusion_matrix.png")
        reports.plot_samples(keys, targets, scores, stored.classes, load, out / "samples.png")
    report = {"tag": stored.tag, "architecture": stored.metadata["architecture"], "classes": stored.classes,
              "best_epoch": stored.metadata.get("metrics", {}).get("best_epoch", -1),
              "train_seconds": stored.metadata.get("metrics", {}).get("train_seconds"),
              "evaluated_on": where, "metrics": {"test": metrics}, "report_dir": str(out),
              "run": stored.metadata.get("training")}  # fmt: skip
    reports.write_report(report, out)
    return report
