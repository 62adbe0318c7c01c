"""Training package: data sources, models, the training loop, evaluation and the model store.

``from training import train`` works as before, but nothing heavy is imported until it is asked for: the
serving side imports ``training.imaging``, ``training.transforms`` and ``training.data`` without loading
BentoML (the model store) or matplotlib (the report).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._env import configure_environment

configure_environment()

if TYPE_CHECKING:
    from .config import TrainConfig, load_config
    from .pipeline import TrainResult, train
    from .store import StoredModel, load_model

_LAZY = {
    "TrainConfig": "config", "load_config": "config", "TrainResult": "pipeline", "train": "pipeline",
    "StoredModel": "store", "load_model": "store",
}  # fmt: skip
__all__ = ["StoredModel", "TrainConfig", "TrainResult", "load_config", "load_model", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
