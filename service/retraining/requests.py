"""A retrain request becomes the training config a job will run (validated, bounded, its paths confined to
the data roots), built against the champion it was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.errors import Forbidden, InvalidInput
from service.retraining.records import RetrainRequest
from service.settings import Settings
from training import store
from training._env import REPO_ROOT
from training.config import TrainConfig, deep_merge, load_config, nested
from training.data import FASHION_MNIST
from training.stored import SPLIT_FILE

# Set by the service, never by a request: paths the job writes or reads outside the data roots.
PROTECTED_KEYS = ("name", "output_dir", "save", "resume", "threads", "device", "data.source", "data.extra_train",
                  "data.extra_eval_share", "data.holdout", "data.exclude", "data.fashion_mnist_dir", "data.taxonomy",
                  "data.allowed_roots", "model.weights_file", "tracking")  # fmt: skip
# What a request may ask of the training config, request fields and overrides alike: (config key, low, high).
BOUNDS = (("epochs", 1, 1000), ("batch_size", 1, 1024), ("model.width", 4, 256), ("model.depth", 1, 6),
          ("model.img_size", 8, 1024), ("max_minutes", 0, 24 * 60), ("early_stop.patience", 1, 1000),
          ("data.limit_per_class", 1, 10**7), ("top_k", 1, 100))  # fmt: skip


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
    data: dict[str, Any] = {"extra_train": [], "holdout": None, "exclude": [],  # this job's audit decides anew
                            "extra_eval_share": settings.evaluation_share}  # fmt: skip
    if req.data is not None:
        data["source"] = resolve_data(req.data, settings.allowed_roots())
    feedback = settings.feedback_dir / settings.model_name
    if req.include_feedback and feedback.is_dir() and any(feedback.iterdir()):
        data["extra_train"] = [str(feedback)]
    if champion and (split := Path(store.get(champion).path) / SPLIT_FILE).is_file():
        data["holdout"] = str(split)  # the champion's test split: kept out of training, judged on
    data["allowed_roots"] = [str(root) for root in settings.allowed_roots()]  # every file the job reads
    # Tracking as the service says: TensorBoard in the job's folder, MLflow where the service's MLflow is.
    tracking = {"tensorboard": True, "mlflow_uri": settings.mlflow_tracking_uri, "mlflow_experiment": None}
    fixed: dict[str, Any] = {"name": settings.model_name, "data": data, "save": True, "resume": False,
                             "tracking": tracking,
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
