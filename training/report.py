"""The evaluation report on disk: JSON plus PNG pictures (curves, confusion matrix, samples)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

log = logging.getLogger(__name__)


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    ax_loss.set(title="Loss", xlabel="epoch")
    ax_acc.plot(epochs, [h["acc"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], marker="o", label="val")
    if history and "val_map" in history[0]:
        ax_acc.plot(epochs, [h["val_map"] for h in history], marker="s", label="val mAP")
    ax_acc.set(title="Accuracy" + (" (subset) and mAP" if history and "val_map" in history[0] else ""),
               xlabel="epoch", ylim=(0, 1))  # fmt: skip
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_audit(suspects: Sequence, duplicates: Sequence, outliers: Sequence, load: Callable[[str], Image.Image],
               path: Path, per_row: int = 8) -> None:  # fmt: skip
    """The data audit's worst findings, a block of rows each: label suspects (the given label and what the model
    sees), near-duplicate pairs across splits (side by side), outliers."""
    cells: list[tuple[str, str, str]] = []  # (key, title, colour)
    blocks = [[(s.key, f"given {s.given[:12]} {s.given_confidence:.2f}\nlooks {s.suggested[:12]}", "red")
               for s in suspects],
              [cell for d in duplicates for cell in ((d.key, f"train\n{d.similarity:.3f}", "purple"),
                                                     (d.other, f"{d.split}\n(its twin)", "purple"))],
              [(o.key, f"{o.label[:12]}\noutlier {o.distance:.2f}", "darkorange") for o in outliers]]  # fmt: skip
    for block in blocks:
        if block:
            cells += block + [("", "", "")] * (-len(block) % per_row)  # each kind starts a row
    rows = max(1, (len(cells) + per_row - 1) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(1.7 * per_row, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (key, title, colour) in zip(axes.ravel(), cells, strict=False):
        if key:
            img = load(key)
            ax.imshow(img, cmap="gray" if img.mode == "L" else None)
            ax.set_title(title, fontsize=7, color=colour)
    fig.suptitle("Data audit, worst first: probably mislabelled (red), near-duplicates across splits (purple), "
                 "outliers (orange)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(calibration: dict, path: Path) -> None:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for when, marker in (("before", "o"), ("after", "s")):
        bins, value, name = calibration[f"bins_{when}"], calibration[f"test_ece_{when}"], when
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker,
                label=f"{name} (ECE {value:.3f})")  # fmt: skip
    ax.set(title="Reliability on the test split", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> None:
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    n = len(classes)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (row-normalised; counts shown)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(
    keys: Sequence[str],
    targets: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    load: Callable[[str], Image.Image],
    path: Path,
    n_each: int = 8,
    seed: int = 0,
) -> None:
    """A grid of test images: a row of right predictions and a row of wrong ones."""
    preds = probs.argmax(1)
    rng = np.random.default_rng(seed)
    right = np.flatnonzero(preds == targets)
    wrong = np.flatnonzero(preds != targets)
    rows = [("right", rng.permutation(right)[:n_each]), ("wrong", rng.permutation(wrong)[:n_each])]
    fig, axes = plt.subplots(2, n_each, figsize=(1.6 * n_each, 4.2), squeeze=False)
    for r, (kind, idx) in enumerate(rows):
        for c in range(n_each):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(idx):
                continue
            i = int(idx[c])
            img = load(keys[i])
            ax.imshow(img, cmap="gray" if img.mode == "L" else None)
            colour = "green" if kind == "right" else "red"
            ax.set_title(f"{classes[preds[i]][:12]} {probs[i, preds[i]]:.2f}\n(true {classes[targets[i]][:12]})",
                         fontsize=7, color=colour)  # fmt: skip
    fig.suptitle("Sample test predictions: right (top), wrong (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pr_curves(curves: dict[str, tuple], metrics: dict, path: Path) -> None:
    """Precision-recall curve per label, its AP in the legend and its threshold's operating point."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, (precision, recall) in curves.items():
        m = metrics["per_label"][name]
        (line,) = ax.plot(recall, precision, label=f"{name[:18]} AP {m['ap']:.3f}")
        ax.plot([m["recall"]], [m["precision"]], "o", color=line.get_color())
    ax.set(title=f"Precision-recall per label (mAP {metrics['map']:.3f}; dots: tuned thresholds)",
           xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_label_samples(
    keys: Sequence[str], targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, classes: Sequence[str],
    load: Callable[[str], Image.Image], path: Path, n: int = 8, seed: int = 0,
) -> None:  # fmt: skip
    """Test images with their predicted label sets (green: the whole set right, red: not)."""
    pred = scores >= thresholds[None, :]
    idx = np.random.default_rng(seed).permutation(len(keys))[:n]
    fig, axes = plt.subplots(1, max(1, len(idx)), figsize=(1.9 * max(1, len(idx)), 2.6), squeeze=False)
    for ax, i in zip(axes[0], idx, strict=False):
        ax.axis("off")
        img = load(keys[i])
        ax.imshow(img, cmap="gray" if img.mode == "L" else None)
        names = [classes[j][:10] for j in np.flatnonzero(pred[i])] or ["(none)"]
        right = bool((pred[i] == targets[i].astype(bool)).all())
        ax.set_title("\n".join(names), fontsize=7, color="green" if right else "red")
    fig.suptitle("Sample test predictions (labels at or above their thresholds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_hierarchy(h: dict, path: Path) -> None:
    """Accuracy per tree level, and wrong predictions by their distance in the tree."""
    fig, (ax_lv, ax_d) = plt.subplots(1, 2, figsize=(9, 3.6))
    levels = [int(d) for d in h["levels"]]
    ax_lv.bar(levels, [h["levels"][str(d)]["accuracy"] for d in levels], color="tab:blue")
    ax_lv.set(title="Accuracy per level", xlabel="depth (1 = top)", ylim=(0, 1), xticks=levels)
    dists = [int(d) for d in h["mistakes"]]
    ax_d.bar(dists, [h["mistakes"][str(d)] for d in dists], color="tab:red")
    ax_d.set(title="Mistakes by tree distance (2 = sibling)", xlabel="edges between true and predicted leaf",
             xticks=dists)  # fmt: skip
    for ax in (ax_lv, ax_d):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def format_summary(report: dict) -> str:
    """A human-readable summary of the report for the terminal; a run cut short by its time budget ends saying so."""
    test = report["metrics"]["test"]
    body = _format_multilabel(report, test) if "map" in test else _format_multiclass(report, test)
    cal = report.get("calibration")
    if cal:
        how = f"temperature {cal['temperature']:.3f}" if cal["method"] == "temperature" else "per-label Platt"
        body += f"\ncalibration  {how}: test ECE {cal['test_ece_before']:.4f} -> {cal['test_ece_after']:.4f}"
    return body + "".join(f"\n{line}" for line in run_lines(report.get("run")))


def run_lines(run: dict | None) -> list[str]:
    """How the run went: epochs, why it stopped, time and precision; the shortened-schedule warning last."""
    if not run:
        return []
    p = run.get("precision") or {}
    rates = ", ".join(f"{k} {v:.0f}" for k, v in p.get("rates", {}).items())
    layout = " channels-last" if p.get("channels_last") else ""
    lines = [f"run          {run['epochs_run']} of {run['epochs_planned']} epochs ({run['stopped']}) in "
             f"{run['train_seconds']:.0f}s; {p.get('precision', '?')}{layout}"
             + (f" (measured img/s: {rates})" if rates else "")]  # fmt: skip
    if run.get("note"):
        lines.append(f"NOTE         {run['note']}")
    return lines


def _format_multiclass(report: dict, test: dict) -> str:
    lines = [
        f"model        {report.get('tag', '(not saved)')}",
        f"architecture {report['architecture']}  classes {len(report['classes'])}  best epoch {report['best_epoch']}"
        + (f"  train time {report['train_seconds']:.0f}s" if report.get("train_seconds") else ""),
        f"test         accuracy {test['accuracy']:.4f}"
        + "".join(f"  {k} {v:.4f}" for k, v in test.items() if k.startswith("top") and k.endswith("_accuracy"))
        + f"  macro-F1 {test['macro']['f1']:.4f}"
        + (f"  ROC-AUC {test['roc_auc_ovr']:.4f}" if test.get("roc_auc_ovr") is not None else ""),
        f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]
    for name, m in test["per_class"].items():
        lines.append(f"{name[:20]:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}")
    if "hierarchy" in test:
        h = test["hierarchy"]
        lines.append("levels       " + "  ".join(f"depth {d} acc {v['accuracy']:.4f}" for d, v in h["levels"].items()))
        if h["mean_mistake_distance"] is not None:
            lines.append(f"mistakes     by tree distance {h['mistakes']}, mean {h['mean_mistake_distance']:.2f}")
    lines.append(f"report       {report.get('report_dir', '')}")
    return "\n".join(lines)


def _format_multilabel(report: dict, test: dict) -> str:
    lines = [
        f"model        {report.get('tag', '(not saved)')}",
        f"architecture {report['architecture']}  labels {len(report['classes'])}  best epoch {report['best_epoch']}",
        f"test         mAP {test['map']:.4f}  micro-F1 {test['micro']['f1']:.4f}  macro-F1 {test['macro']['f1']:.4f}"
        f"  subset accuracy {test['subset_accuracy']:.4f}  Hamming loss {test['hamming_loss']:.4f}",
        f"{'label':<20} {'AP':>6} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8} {'threshold':>9}",
    ]
    for name, m in test["per_label"].items():
        ap = f"{m['ap']:.3f}" if m["ap"] is not None else "-"
        lines.append(f"{name[:20]:<20} {ap:>6} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                     f"{m['support']:>8} {m['threshold']:>9.3f}")  # fmt: skip
    lines.append(f"report       {report.get('report_dir', '')}")
    return "\n".join(lines)
