"""A model loaded from the store, as plain data (no BentoML here: the predictor imports this, the store fills it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .drift import DRIFT_FILE, DriftReference
from .transforms import Preprocessing

SPLIT_FILE = "split.json"
SAMPLES_DIR = "samples"  # unlabelled representative images stored with a model that has no recorded split
REPORT_DIR = "report"
# The report's pictures, in the order a reader wants them (each present only when it applies to the task).
REPORT_PICTURES = ("curves.png", "confusion_matrix.png", "samples.png", "pr_curves.png", "hierarchy.png",
                   "calibration.png", "audit.png")  # fmt: skip


@dataclass
class StoredModel:
    """A model loaded from the store: the network (eval mode) and everything needed to feed it."""

    tag: str
    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    path: Path
    created: str = ""  # ISO 8601 creation time in the store

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        pp = self.preprocessing
        return (pp.channels, pp.input_size, pp.input_size)

    def split(self) -> dict[str, Any] | None:
        f = self.path / SPLIT_FILE
        return json.loads(f.read_text()) if f.is_file() else None

    def sample_images(self) -> list[Path]:
        """Unlabelled images stored with the model (``import-weights --samples``): representative inputs on which
        a reduced-precision runtime's decisions are compared with fp32, and int8 is calibrated."""
        folder = self.path / SAMPLES_DIR
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def drift_reference(self) -> DriftReference | None:
        """What the drift monitor compares live embeddings with (models trained before it have none)."""
        f = self.path / DRIFT_FILE
        return DriftReference.load(f) if f.is_file() else None
