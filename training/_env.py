"""Process environment defaults, applied before BentoML is imported anywhere in the project."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def bentoml_home() -> Path:
    """The model store folder: ``$BENTOML_HOME`` (set by :func:`configure_environment` in a checkout), else
    BentoML's own default."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def configure_environment() -> None:
    """No tracking, ever; a model store inside the checkout unless BENTOML_HOME says otherwise; and every
    library cache (ONNX Runtime, matplotlib, anything following XDG) under the store's ``cache/`` folder,
    so a pod with a read-only root file system and no writable home needs only its own directories."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if (REPO_ROOT / "pyproject.toml").is_file():
        os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / "bentoml_home"))
    home = bentoml_home()
    os.environ.setdefault("XDG_CACHE_HOME", str(home / "cache"))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "cache" / "matplotlib"))
