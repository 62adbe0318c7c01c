"""The only module that writes to (and reads models from) the BentoML model store.

A stored model is self-sufficient: weights (safetensors), architecture and constructor arguments,
classes, preprocessing, training config, metrics, dataset fingerprint, test split, library versions
and the evaluation report with its pictures. :func:`load_model` needs nothing but the store.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import bentoml
import safetensors.torch
import timm
import torch
import torchvision
import yaml
from torch import nn

from .drift import DRIFT_FILE, DriftReference
from .models import build_model
from .stored import REPORT_DIR, SAMPLES_DIR, SPLIT_FILE, StoredModel
from .transforms import Preprocessing

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
MODULE = "imgclf.training"


class StoreError(LookupError):
    """A model that is not in the store, or is not one of ours / is damaged."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "timm": timm.__version__,
        "bentoml": bentoml.__version__,
    }


def save_model(
    name: str,
    model: nn.Module,
    *,
    architecture: str,
    model_kwargs: dict[str, Any],
    classes: list[str],
    preprocessing: Preprocessing,
    metrics: dict[str, Any],
    config: dict[str, Any],
    fingerprint: str,
    split: dict[str, Any] | None = None,
    report_dir: Path | None = None,
    labels: dict[str, str] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    drift: DriftReference | None = None,
    samples: list[Path] | None = None,
) -> bentoml.Model:
    """Write a new version of ``name`` to the store, atomically (``samples``: unlabelled representative images
    kept with it, see :meth:`StoredModel.sample_images`).

    BentoML builds the version in a temporary folder and moves it into the store only when this
    block completes, so a failure part-way leaves no half-written model behind.
    """
    unwrapped = model.module if hasattr(model, "module") else model
    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in unwrapped.state_dict().items()}  # fmt: skip
    metadata = {
        "architecture": architecture,
        "model_kwargs": model_kwargs,
        "classes": list(classes),
        "num_classes": len(classes),
        "preprocessing": preprocessing.model_dump(mode="json"),
        "metrics": metrics,
        "config": config,
        "dataset_fingerprint": fingerprint,
        "versions": library_versions(),
        "task": "multiclass",
        **(extra_metadata or {}),
    }
    with bentoml.models.create(
        name, module=MODULE, labels=labels or {}, metadata=_without_none(metadata), context=_context()
    ) as bento_model:
        out = Path(bento_model.path)
        safetensors.torch.save_file(state, str(out / WEIGHTS_FILE), metadata={"architecture": architecture})
        (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        if split is not None:
            (out / SPLIT_FILE).write_text(json.dumps(split))
        if report_dir is not None and report_dir.is_dir():
            shutil.copytree(report_dir, out / REPORT_DIR)
        if drift is not None:
            drift.save(out / DRIFT_FILE)
        if samples:
            (out / SAMPLES_DIR).mkdir()
            for i, path in enumerate(samples):
                shutil.copyfile(path, out / SAMPLES_DIR / f"{i:04d}{path.suffix.lower()}")
    log.info("saved %s to the model store", bento_model.tag)
    return get(str(bento_model.tag))  # the stored copy (the object above points at the build folder)


def _without_none(value: Any) -> Any:
    """BentoML metadata refuses None: drop None entries (absent means unknown)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def _context() -> Any:
    from bentoml._internal.models.model import ModelContext

    return ModelContext(framework_name="torch", framework_versions=library_versions())


def get(tag: str) -> bentoml.Model:
    """Look a model up by ``name`` or ``name:version``. Raises :class:`StoreError` when absent."""
    try:
        bento_model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise StoreError(f"model {tag!r} is not in the model store (see `bentoml models list`)") from None
    if bento_model.info.module != MODULE:
        raise StoreError(f"model {tag!r} was not saved by this project (module {bento_model.info.module!r})")
    return bento_model


def exists(name: str) -> bool:
    try:
        return any(m.info.module == MODULE for m in bentoml.models.list(name))
    except bentoml.exceptions.NotFound:
        return False


def list_versions(name: str) -> list[bentoml.Model]:
    """Every stored version of ``name``, newest first."""
    try:
        models = [m for m in bentoml.models.list(name) if m.info.module == MODULE]
    except bentoml.exceptions.NotFound:
        return []
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def read_split(tag: str) -> dict[str, Any] | None:
    """The split recorded with ``tag`` (no weights loaded), or None when it recorded none."""
    f = Path(get(tag).path) / SPLIT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def load_model(tag: str, device: str | torch.device = "cpu") -> StoredModel:
    """Rebuild the network from its stored architecture and load its weights (strictly).

    Raises:
        StoreError: the model is absent, not ours, or its files are missing or damaged.
    """
    bento_model = get(tag)
    meta = dict(bento_model.info.metadata)
    path = Path(bento_model.path)
    try:
        model = build_model(meta["architecture"], **meta["model_kwargs"])
        state = safetensors.torch.load_file(str(path / WEIGHTS_FILE), device=str(device))
        model.load_state_dict(state, strict=True)
    except (KeyError, OSError, RuntimeError, safetensors.SafetensorError) as exc:
        raise StoreError(f"model {bento_model.tag} is damaged or incomplete: {exc}") from exc
    model.to(device).eval()
    return StoredModel(
        tag=str(bento_model.tag),
        model=model,
        classes=list(meta["classes"]),
        preprocessing=Preprocessing.model_validate(meta["preprocessing"]),
        metadata=meta,
        path=path,
        created=bento_model.info.creation_time.isoformat(),
    )
