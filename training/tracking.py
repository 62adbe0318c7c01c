"""Where a run shows up besides its report: TensorBoard always (event files in ``<run dir>/tensorboard``), and
MLflow when a tracking server is configured (``tracking.mlflow_uri`` or ``MLFLOW_TRACKING_URI``).

Tracking never stops training: a sink that fails says so in a warning and training goes on. The MLflow run is
written at the end from the run's own records (its parameters, every epoch's metrics with their step, the
report's pictures and JSON, the stored model as a registered model version), so an MLflow server that was
down during training still gets the whole run if it is back by the end; per-epoch metrics also go out as the
epochs finish, for watching a run live.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .stored import REPORT_PICTURES

log = logging.getLogger(__name__)
# MLflow's client retries a failing call 7 times with a backoff of minutes by default: a server that is down
# would stall training. Ours retry a few times, quickly (the environment can still say otherwise).
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}  # fmt: skip
RETRIES = 3


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; lists as their text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, name + ".")
        else:
            out[name] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
    return out


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a metric set (``test``: accuracy, macro F1...), leaving tables and per-class maps out."""
    out = {
        f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for avg in ("micro", "macro", "weighted"):
        if isinstance(metrics.get(avg), dict) and "f1" in metrics[avg]:
            out[f"{prefix}{avg}_f1"] = float(metrics[avg]["f1"])
    return out


def retrying(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, tried ``RETRIES`` times a second or two apart; re-raises the last failure."""
    for attempt in range(RETRIES):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - a tracking server's failures are all alike to us
            if attempt == RETRIES - 1:
                raise
            log.info("%s failed (%s); retrying", what, exc)
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- TensorBoard
class TensorBoardSink:
    """Event files: per-epoch scalars, the final test metrics, the report's pictures, and the config as
    hyper-parameters (TensorBoard's HParams view compares runs, search trials included, side by side)."""

    SCALARS = {"loss": "train/loss", "acc": "train/accuracy", "lr": "train/lr", "img_per_s": "train/img_per_s",
               "seconds": "train/epoch_seconds"}  # fmt: skip

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            name = self.SCALARS.get(key) or (f"val/{key.removeprefix('val_')}" if key.startswith("val_") else key)
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def hparams(self, cfg: TrainConfig, results: dict[str, float]) -> None:
        """The config as hyper-parameters with the run's results: the HParams view's row for this run."""
        hparams = {k: v for k, v in flat(cfg.model_dump(mode="json")).items()
                   if v is not None and k not in ("output_dir", "data.allowed_roots")}  # fmt: skip
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in results.items()}, run_name="hparams")
        self.writer.close()

    def abort(self, cfg: TrainConfig, history: list[dict[str, Any]]) -> None:
        """A run that stopped early (a pruned trial, say) still gets its row, with its last validation result."""
        last = history[-1] if history else {}
        names = {"val_acc": "val_accuracy", "val_map": "val_map"}  # as finish() names them
        self.hparams(cfg, {name: float(last[key]) for key, name in names.items() if key in last})

    def finish(self, cfg: TrainConfig, metrics: dict[str, Any], report_dir: Path, steps: int) -> None:
        from PIL import Image

        test = scalar_metrics(metrics.get("test", {}), "test/")
        for name, value in test.items():
            self.writer.add_scalar(name, value, steps)
        for picture in REPORT_PICTURES:
            if (report_dir / picture).is_file():
                image = np.asarray(Image.open(report_dir / picture).convert("RGB"))
                self.writer.add_image(f"report/{picture.removesuffix('.png')}", image, steps, dataformats="HWC")
        val = metrics.get("val", {})
        primary = "map" if "map" in val else "accuracy"
        results = {f"val_{primary}": float(val.get(primary, 0.0))} if val else {}
        self.hparams(cfg, results | {k.replace("/", "_"): v for k, v in test.items()})


# ---------------------------------------------------------------- MLflow
class MlflowSink:
    """One MLflow run per training run, in the experiment named after the model (or ``mlflow_experiment``)."""

    def __init__(self, uri: str, experiment: str, run_name: str):
        self.client = mlflow_client(uri)
        self.experiment, self.run_name = experiment, run_name
        self.run_id: str | None = None
        self.logged_epochs: set[int] = set()
        self.live = True  # off after a failure: the epochs are all sent at the end

    def _run(self) -> str:
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
        return self.run_id

    def _log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, stamp = int(record["epoch"]), int(time.time() * 1000)
        values = [Metric(k, float(v), stamp, step) for k, v in record.items()
                  if k != "epoch" and isinstance(v, int | float)]  # fmt: skip
        self.client.log_batch(self._run(), metrics=values)
        self.logged_epochs.add(step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.live:
            return
        try:
            self._log_epoch(record)  # live, best effort: finish() sends what is missing
        except Exception as exc:  # noqa: BLE001
            self.live = False
            log.warning("MLflow: epoch %s not logged (%s); the epochs are sent at the end", record.get("epoch"), exc)

    def finish(self, cfg: TrainConfig, result: dict[str, Any]) -> None:
        retrying("MLflow: logging the run", lambda: self._finish(cfg, result))

    def _finish(self, cfg: TrainConfig, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        from .mlflow_models import TAG_KEY, register_version

        run_id = self._run()
        for record in result["history"]:
            if int(record["epoch"]) not in self.logged_epochs:
                self._log_epoch(record)
        params = [Param(k, str(v)[:6000]) for k, v in flat(cfg.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        stamp = int(time.time() * 1000)
        final = scalar_metrics(result["metrics"].get("test", {}), "test_")
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in final.items()])
        self.client.set_tag(run_id, "dataset_fingerprint", result["fingerprint"])
        self.client.set_tag(run_id, "imgclf.task", result["task"])
        self.client.log_artifacts(run_id, str(result["report_dir"]), "report")
        if result.get("tag"):
            self.client.set_tag(run_id, TAG_KEY, result["tag"])
            register_version(self.client, cfg.name, result["tag"], run_id)
        self.client.set_terminated(run_id, "FINISHED")

    def abort(self, reason: str) -> None:
        if self.run_id is not None:
            self.client.set_tag(self.run_id, "imgclf.stopped", reason[:5000])
            self.client.set_terminated(self.run_id, "KILLED")


def mlflow_client(uri: str) -> Any:
    for key, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def mlflow_uri(cfg: TrainConfig) -> str | None:
    return cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


class RunTracker:
    """The sinks of one run (rank 0 only); each failure is a warning, never the end of training."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg = cfg
        self.tensorboard: TensorBoardSink | None = None
        self.mlflow: MlflowSink | None = None
        self.history: list[dict[str, Any]] = []
        if cfg.tracking.tensorboard:
            self.tensorboard = self._guard("TensorBoard", lambda: TensorBoardSink(run_dir / "tensorboard"))
        if uri := mlflow_uri(cfg):
            experiment = cfg.tracking.mlflow_experiment or cfg.name
            self.mlflow = self._guard("MLflow", lambda: MlflowSink(uri, experiment, run_dir.name))

    @staticmethod
    def _guard(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: %s (training goes on without it)", what, exc)
            return None

    def epoch(self, record: dict[str, Any]) -> None:
        self.history.append(dict(record))
        tensorboard = self.tensorboard
        if tensorboard is not None:
            self._guard("TensorBoard", lambda: tensorboard.epoch(record))
        if self.mlflow is not None:
            self.mlflow.epoch(record)

    def finish(self, result: dict[str, Any]) -> None:
        """``result``: history, metrics, report_dir, tag (None when not stored), fingerprint and task."""
        tensorboard, mlflow = self.tensorboard, self.mlflow
        if tensorboard is not None:
            steps = len(result["history"])
            self._guard(
                "TensorBoard", lambda: tensorboard.finish(self.cfg, result["metrics"], result["report_dir"], steps)
            )
        if mlflow is not None:
            self._guard("MLflow (the report and the store keep everything)", lambda: mlflow.finish(self.cfg, result))

    def abort(self, reason: str) -> None:
        """The run ended without a result (pruned, cancelled, failed): close what was opened, saying why."""
        tensorboard, mlflow = self.tensorboard, self.mlflow
        if tensorboard is not None:
            self._guard("TensorBoard", lambda: tensorboard.abort(self.cfg, self.history))
        if mlflow is not None:
            self._guard("MLflow", lambda: mlflow.abort(reason))
