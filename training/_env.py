"""Process environment defaults, applied before BentoML is imported anywhere in the project."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def configure_environment() -> None:
    """No tracking, ever; and a model store inside the checkout unless BENTOML_HOME says otherwise."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if (REPO_ROOT / "pyproject.toml").is_file():
        os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / "bentoml_home"))
