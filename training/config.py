"""Training configuration: defaults, then a YAML file, then CLI overrides, validated once.

The final, validated config is saved with the model it produced (``TrainConfig.model_dump()``),
so any stored model can be retrained exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = Field(
        "fashion-mnist",
        description="'fashion-mnist', a class-per-folder directory, or a CSV manifest (path,label; "
        "path,labels with ';'-separated labels; or path and one 0/1 column per label).",
    )
    task: Literal["auto", "multiclass", "multilabel", "hierarchical"] = Field(
        "auto",
        description="auto: multi-label for a CSV with several labels per image, hierarchical when a taxonomy "
        "is given, else multi-class. hierarchical without a taxonomy reads nested class folders (animal/cat/...).",
    )
    taxonomy: str | None = Field(
        None, description="YAML/JSON class tree (nested, or child: parent) whose leaves are the labels."
    )
    label_separator: str = Field(";", min_length=1, max_length=3, description="Multi-label CSV: between labels.")
    fashion_mnist_dir: str | None = Field(None, description="Directory with the Fashion-MNIST IDX .gz files.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = 0
    classes: list[str] | None = Field(
        None, description="Expected class names; CSV rows with other labels are skipped and listed."
    )
    min_size: int = Field(8, ge=1, description="Images smaller than this (either side, px) are skipped.")
    limit_per_class: int | None = Field(None, ge=1, description="Keep at most N training images per class.")
    extra_train: list[str] = Field(
        default_factory=list,
        description="More class-per-folder roots whose images join the training split only (e.g. feedback); "
        "new class names are appended after the source's classes.",
    )
    extra_eval_share: float = Field(
        0.0, ge=0, lt=1, description="Share of the extra_train images (by content hash) kept out of training: "
        "the service's rolling evaluation set, which judges models.",
    )  # fmt: skip
    holdout: str | None = Field(
        None,
        description="A recorded split (split.json of a stored model): its test images become the test split "
        "and are kept out of training, so two models are compared on exactly the same images.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Keys (image paths) kept out of the training split: a retrain job's label audit sets it.",
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="When set, only files that resolve (links followed) under one of these folders are read; "
        "others are skipped and listed. The service sets it for retrain jobs (IMGCLF_DATA_ROOTS).",
    )
    balance: Literal["none", "loss", "sampler"] = Field(
        "none", description="Class imbalance handling: class-weighted loss or a weighted sampler."
    )
    workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes (default: 0 on <= 2 cores, else up to 4)."
    )


class ModelConfig(_Section):
    name: str = Field("scratch-cnn", description="'scratch-cnn' or any timm model name.")
    pretrained: bool = False
    weights_file: str | None = Field(None, description="Local pretrained weights (safetensors or .pth).")
    width: int = Field(32, ge=4, description="scratch-cnn: channels of the first block.")
    depth: int = Field(3, ge=1, le=6, description="scratch-cnn: number of conv blocks.")
    first_block_convs: int = Field(2, ge=1, le=2, description="scratch-cnn: convs in the full-resolution block.")
    first_width: int | None = Field(
        None, ge=4, description="scratch-cnn: channels of the full-resolution block (default: width)."
    )
    flip_tta: bool = Field(
        False, description="scratch-cnn: outside training, average each image's features with its mirror image's."
    )
    drop_rate: float = Field(0.2, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    img_size: int | None = Field(None, ge=8, description="Input size; default from the model or the data.")
    channels: Literal[1, 3] | None = Field(None, description="Input channels; scratch default from the data.")


class AugmentConfig(_Section):
    preset: Literal["none", "light", "medium", "strong"] = "light"
    hflip: float | None = Field(None, ge=0, le=1)
    rotation: float | None = Field(None, ge=0, le=180)
    color_jitter: float | None = Field(None, ge=0)
    auto_augment: Literal["none", "randaugment", "trivialaugment"] | None = None
    random_erasing: float | None = Field(None, ge=0, le=1)
    mixup: float | None = Field(None, ge=0)
    cutmix: float | None = Field(None, ge=0)
    crop_padding: int | None = Field(
        None, ge=0, description="Pad-and-crop (small images) instead of a random-resized crop."
    )
    scale_min: float | None = Field(None, gt=0, le=1, description="Lower bound of random-resized-crop scale.")
    blur: float | None = Field(None, ge=0, le=1, description="Probability of a Gaussian blur.")
    noise: float | None = Field(None, ge=0, le=1, description="Std of additive Gaussian noise (0-1 pixel scale).")


class OptimConfig(_Section):
    optimizer: str = Field("adamw", description="Any timm optimizer name (create_optimizer_v2).")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    layer_decay: float | None = Field(None, gt=0, le=1)
    warmup_epochs: int = Field(1, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(None, gt=0)
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    freeze_epochs: int = Field(0, ge=0, description="Fine-tuning: epochs training only the head.")
    unfreeze_lr_scale: float = Field(0.1, gt=0, le=1, description="LR factor once the backbone unfreezes.")
    freeze_bn_stats: bool = Field(
        False,
        description="Fine-tuning: keep the pretrained BatchNorm statistics (small or narrow datasets, e.g. "
        "grey images, can shrink a channel's variance until bf16/int8 inference no longer agrees with fp32).",
    )


class MultiLabelConfig(_Section):
    loss: Literal["bce", "asl"] = Field("bce", description="Binary cross-entropy, or the asymmetric loss (ASL).")
    pos_weight: bool = Field(True, description="bce: weigh each label's positives by its negatives/positives.")
    pos_weight_max: float = Field(10.0, ge=1, description="Cap on a label's positive weight.")
    asl_gamma_neg: float = Field(4.0, ge=0)
    asl_gamma_pos: float = Field(0.0, ge=0)
    asl_clip: float = Field(0.05, ge=0, lt=1, description="ASL: probability margin shifted off easy negatives.")


class EarlyStopConfig(_Section):
    metric: Literal["val_loss", "val_acc", "val_map"] = Field(
        "val_acc", description="val_acc follows mAP (val_map) for multi-label tasks."
    )
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)
    target: float | None = Field(
        None,
        ge=0,
        description="Stop as soon as the metric reaches this value (val_acc/val_map at least, val_loss at most): "
        "train until a stated criterion is met, with epochs as the cap.",
    )


class TrackingConfig(_Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <run dir>/tensorboard.")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking server (default: the MLFLOW_TRACKING_URI environment variable; none: off)."
    )
    mlflow_experiment: str | None = Field(None, description="MLflow experiment (default: the model name).")


class TrainConfig(_Section):
    name: str = Field("fashion-cnn", pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Model store name.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    early_stop: EarlyStopConfig = EarlyStopConfig()
    multilabel: MultiLabelConfig = MultiLabelConfig()
    tracking: TrackingConfig = TrackingConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="Stop training after this wall time.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: measured at start-up on the machine at hand (fp32 vs bf16 on CPU), the faster kept."
    )
    channels_last: Literal["auto"] | bool = Field("auto", description="auto: measured with the precision.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores).")
    seed: int = 42
    device: str = "auto"
    output_dir: str = Field("runs", description="Where reports and checkpoints go (<output_dir>/<name>/).")
    resume: bool = Field(False, description="Resume from <output_dir>/<name>/last.ckpt when present.")
    save: bool = Field(True, description="Save the trained model to the BentoML store.")
    top_k: int = Field(5, ge=1)
    calibrate: bool = Field(
        True,
        description="Fit a temperature (multi-label: per-label Platt) on the validation split; serve its scores.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.val_fraction + self.data.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction must be below 0.8")
        if self.optim.freeze_epochs >= self.epochs and self.optim.freeze_epochs > 0:
            raise ValueError(f"optim.freeze_epochs ({self.optim.freeze_epochs}) must be below epochs ({self.epochs})")
        scratch_only = [k for k in ("first_width", "flip_tta") if getattr(self.model, k)]
        scratch_only += ["first_block_convs"] if self.model.first_block_convs != 2 else []
        if self.model.name != "scratch-cnn" and scratch_only:
            raise ValueError(f"model.{', model.'.join(scratch_only)} shape scratch-cnn only, not {self.model.name}")
        if self.optim.freeze_bn_stats and not (self.model.pretrained or self.model.weights_file):
            raise ValueError(
                "optim.freeze_bn_stats keeps pretrained BatchNorm statistics, but the model starts from "
                "scratch: set model.pretrained or model.weights_file, or leave freeze_bn_stats off"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``, recursing into nested dicts."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict[str, Any]:
    """Turn ``"optim.lr=0.01"`` into ``{"optim": {"lr": 0.01}}`` (the value parsed as YAML)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=0.01)")
    dotted, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    return nested(dotted.strip(), value)


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``nested("optim.lr", 0.01)`` is ``{"optim": {"lr": 0.01}}``."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def load_config(
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    dotted: list[str] | None = None,
) -> TrainConfig:
    """Layer defaults < YAML file < ``overrides`` < ``dotted`` ("a.b=c") and validate.

    Raises:
        pydantic.ValidationError: a value is out of range or a key is unknown.
        FileNotFoundError: ``yaml_path`` does not exist.
    """
    layered: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping at the top level, found {type(loaded).__name__}")
        layered = deep_merge(layered, loaded)
    if overrides:
        layered = deep_merge(layered, overrides)
    for item in dotted or []:
        layered = deep_merge(layered, parse_override(item))
    return TrainConfig.model_validate(layered)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
