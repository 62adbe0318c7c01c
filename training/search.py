"""Hyper-parameter search with Optuna over the same ``train(config)`` everything else uses."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from .config import TrainConfig, deep_merge, save_config
from .pipeline import train

log = logging.getLogger(__name__)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """The searched space, as config overrides."""
    return {
        "optim": {
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        },
        "augment": {"preset": trial.suggest_categorical("augment", ["none", "light", "medium"])},
        "model": {"drop_rate": trial.suggest_float("drop_rate", 0.0, 0.5)},
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
    }


def run_search(
    base: TrainConfig,
    trials: int = 10,
    sampler: str = "tpe",
    timeout: float | None = None,
    best_config: Path | None = None,
) -> dict[str, Any]:
    """Run ``trials`` trainings (not saved to the store), pruning poor ones by validation accuracy (mAP
    for multi-label data).

    Writes the best trial's full config as YAML (train it with ``train --config``) and returns a
    summary: best value, params, config path and every trial's outcome.
    """
    search_dir = Path(base.output_dir) / f"{base.name}-search"
    search_dir.mkdir(parents=True, exist_ok=True)
    chosen = (
        optuna.samplers.TPESampler(seed=base.seed)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=base.seed)
    )
    study = optuna.create_study(direction="maximize", sampler=chosen,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))  # fmt: skip
    configs: dict[int, TrainConfig] = {}

    def objective(trial: optuna.Trial) -> float:
        overrides = deep_merge(suggest(trial), {"save": False, "name": f"{base.name}-trial{trial.number}",
                                                "output_dir": str(search_dir)})  # fmt: skip
        cfg = TrainConfig.model_validate(deep_merge(base.model_dump(), overrides))
        configs[trial.number] = cfg

        def report(record: dict[str, Any]) -> None:
            key = "val_map" if "val_map" in record else "val_acc"
            trial.report(record[key], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"{key} {record[key]:.4f} at epoch {record['epoch']}")

        result = train(cfg, on_epoch_end=report)
        val = result.metrics["val"]
        return float(val["map"] if "map" in val else val["accuracy"])

    study.optimize(objective, n_trials=trials, timeout=timeout, catch=())
    best = study.best_trial
    winner = configs[best.number].model_copy(update={"name": base.name, "output_dir": base.output_dir,
                                                     "save": True})  # fmt: skip
    path = best_config or search_dir / "best.yaml"
    save_config(winner, path)
    log.info("best trial %d: validation %.4f %s -> %s", best.number, best.value, best.params, path)
    return {
        "best_value": best.value,
        "best_params": best.params,
        "best_config": str(path),
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} for t in study.trials
        ],  # fmt: skip
    }
