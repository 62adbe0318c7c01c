"""Retraining: a request becomes a training config; a job trains it, gates it and maybe promotes it.

``python -m service.retraining.job JOB_ID`` is the job process (started by the local backend, or as the
container command of a Kubernetes Job). It runs the one ``train(config)`` of the training package,
then evaluates challenger and champion with the same code on the champion's recorded test split,
records the gate's decision, and promotes when it passes and the request asked for it. Workers
watching the registry pick the new champion up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.edge.schemas import RetrainRequest
from service.errors import Forbidden, InvalidInput
from service.retraining import gate
from service.retraining.registry import Registry
from service.settings import Settings
from training import store
from training._env import REPO_ROOT
from training.config import TrainConfig, deep_merge, load_config, nested
from training.data import FASHION_MNIST
from training.evaluate import evaluate_on_record

log = logging.getLogger(__name__)

# Set by the service, never by a request: paths the job writes or reads outside the data roots.
PROTECTED_KEYS = ("name", "output_dir", "save", "resume", "threads", "device", "data.source", "data.extra_train",
                  "data.holdout", "data.fashion_mnist_dir", "data.taxonomy", "data.allowed_roots",
                  "model.weights_file")  # fmt: skip
# What a request may ask of the training config, request fields and overrides alike: (config key, low, high).
BOUNDS = (("epochs", 1, 1000), ("batch_size", 1, 1024), ("model.width", 4, 256), ("model.depth", 1, 6),
          ("model.img_size", 8, 1024), ("max_minutes", 0, 24 * 60), ("early_stop.patience", 1, 1000),
          ("data.limit_per_class", 1, 10**7), ("top_k", 1, 100))  # fmt: skip


class JobCancelled(Exception):
    pass


# ---------------------------------------------------------------- request -> config
def resolve_data(value: str, roots: list[Path]) -> str:
    """``fashion-mnist``, or a folder/CSV inside one of ``roots`` (``..`` and symlinks resolved first)."""
    if value == FASHION_MNIST:
        return value
    if not value or len(value) > 1024 or any(ord(c) < 32 for c in value):
        raise InvalidInput("data must be 1-1024 characters with no control characters (NUL included): "
                           "'fashion-mnist', or a folder or CSV under a data root", reason="bad_data")  # fmt: skip
    path = Path(value)
    path = (path if path.is_absolute() else roots[0] / path).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise Forbidden(f"data {value!r} is outside the allowed data roots ({', '.join(map(str, roots))}); "
                        "copy the dataset under one of them", reason="path_not_allowed")  # fmt: skip
    if not path.exists():
        raise InvalidInput(f"data {value!r} does not exist (looked at {path}); give 'fashion-mnist', a "
                           "class-per-folder directory or a CSV manifest", reason="data_not_found")  # fmt: skip
    return str(path)


def _dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if any(key == p or key.startswith(p + ".") for p in PROTECTED_KEYS) or key in ("data", "model"):
            raise InvalidInput(f"override {key!r} is set by the service and cannot be changed; protected: "
                               f"{', '.join(PROTECTED_KEYS)}", reason="protected_override")  # fmt: skip
        out = deep_merge(out, nested(key, value))
    return out


def base_config(settings: Settings, champion: str | None) -> dict[str, Any]:
    """The champion's own training config, else ``configs/<name>.yaml``, else the defaults."""
    if champion:
        return dict(store.get(champion).info.metadata.get("config", {}))
    path = REPO_ROOT / "configs" / f"{settings.model_name}.yaml"
    return load_config(path).model_dump(mode="json") if path.is_file() else {}


def job_config(req: RetrainRequest, settings: Settings, champion: str | None) -> TrainConfig:
    """The validated config a job will train. Raises ``InvalidInput``/``Forbidden`` for a bad request."""
    layered = base_config(settings, champion)
    layered = deep_merge(layered, _dotted(req.overrides))
    data: dict[str, Any] = {"extra_train": [], "holdout": None}
    if req.data is not None:
        data["source"] = resolve_data(req.data, settings.allowed_roots())
    feedback = settings.feedback_dir / settings.model_name
    if req.include_feedback and feedback.is_dir() and any(feedback.iterdir()):
        data["extra_train"] = [str(feedback)]
    if champion and store.read_split(champion) is not None:
        data["holdout"] = str(Path(store.get(champion).path) / store.SPLIT_FILE)
    data["allowed_roots"] = [str(root) for root in settings.allowed_roots()]  # every file the job reads
    fixed: dict[str, Any] = {"name": settings.model_name, "data": data, "save": True, "resume": False,
                             "threads": settings.retrain_threads, "output_dir": str(settings.jobs_dir)}  # fmt: skip
    if req.model:
        fixed["model"] = {"name": req.model}
    if req.epochs:
        fixed["epochs"] = req.epochs
    try:
        cfg = TrainConfig.model_validate(deep_merge(layered, fixed))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"the resulting training config is invalid: {problems}", reason="bad_config") from None
    check_bounds(cfg)
    return cfg


def check_bounds(cfg: TrainConfig) -> None:
    """Refuse a job config past :data:`BOUNDS` (from a request field or an override alike)."""
    for key, low, high in BOUNDS:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not low <= value <= high:
            raise InvalidInput(f"{key}={value} is out of range for a retrain job: {low} to {high}",
                               reason="bad_config")  # fmt: skip


# ---------------------------------------------------------------- the gate
def judge(registry: Registry, settings: Settings, model_name: str, challenger: str, job: dict) -> dict[str, Any]:
    """Evaluate ``challenger`` against the champion on the same holdout; record and maybe promote."""
    champion = registry.champion(model_name)
    policy = gate.GatePolicy(settings.gate_tolerance, settings.gate_max_recall_drop)
    holdout = (store.read_split(champion) if champion else None) or store.read_split(challenger)
    if holdout is None or not holdout.get("test"):
        raise RuntimeError(f"no holdout to judge {challenger} on: neither model recorded a test split")
    challenger_m = gate.summary(evaluate_on_record(challenger, holdout))
    champion_m = gate.summary(evaluate_on_record(champion, holdout)) if champion else None
    decision = gate.decide(challenger_m, champion_m, policy)
    out = decision.to_dict() | {"holdout": f"{champion or challenger} test split ({len(holdout['test'])} images)",
                                "champion_tag": champion, "challenger_tag": challenger, "promoted": False}  # fmt: skip
    if not decision.promote:
        registry.refuse(model_name, challenger, decision.reason, challenger=challenger_m, champion=champion_m,
                        job_id=job["id"])  # fmt: skip
    elif job["request"].get("auto_promote", True):
        registry.promote(model_name, challenger, decision.reason, challenger=challenger_m, champion=champion_m,
                         job_id=job["id"])  # fmt: skip
        out["promoted"] = True
    else:
        out["reason"] += "; auto_promote is off: promote it with POST /models/promote"
    log.info("gate: %s", out["reason"])
    return out


# ---------------------------------------------------------------- the job process
def job_train_config(job: dict[str, Any], settings: Settings) -> TrainConfig:
    output_dir = str(settings.jobs_dir / job["id"])
    return TrainConfig.model_validate(job["config"]).model_copy(update={"output_dir": output_dir})


def run_helper_rank(job_id: str, registry: Registry, settings: Settings) -> str:
    """A torchrun rank other than 0: train alongside rank 0, which alone records progress and decides."""
    from training import train

    train(job_train_config(registry.job(job_id), settings))
    return "succeeded"


def run_job(job_id: str, registry: Registry, settings: Settings) -> str:
    """Run one queued job to its end; returns the final status. Never raises for a training failure."""
    from training import train  # heavy: only in the job process

    if not registry.start_job(job_id, pid=os.getpid(), host=socket.gethostname()):
        log.warning("job %s is no longer queued; nothing to do", job_id)
        return registry.job(job_id)["status"]
    job = registry.job(job_id)
    cfg = job_train_config(job, settings)

    def on_signal(signum: int, _frame: Any) -> None:
        raise JobCancelled(f"stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    history: list[dict] = []

    def on_epoch_end(record: dict[str, Any]) -> None:
        history.append({k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
        if registry.heartbeat(job_id, {"epoch": record["epoch"], "epochs": cfg.epochs, "history": history}):
            raise JobCancelled("cancel requested")

    try:
        result = train(cfg, on_epoch_end=on_epoch_end)
        decision = judge(registry, settings, job["model_name"], result.tag, job)
        registry.finish_job(job_id, "succeeded", result_tag=result.tag, decision=decision)
        return "succeeded"
    except JobCancelled as exc:
        log.warning("job %s cancelled: %s", job_id, exc)
        registry.finish_job(job_id, "cancelled", error=str(exc))
        return "cancelled"
    except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason, the champion untouched
        traceback.print_exc()
        registry.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m service.retraining.job JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)  # fmt: skip
    from service.settings import get_settings

    settings = get_settings()
    if settings.retrain_nice:
        os.nice(settings.retrain_nice)
    import torch

    torch.set_num_threads(settings.retrain_threads)
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun when a Job trains on several GPUs
    run = run_job if rank == 0 else run_helper_rank
    status = run(argv[0], Registry(settings.database_url, settings.database_timeout_seconds), settings)
    return 0 if status in ("succeeded", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
