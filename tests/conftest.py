"""Shared fixtures: a temporary model store for the whole session, and generated image datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports BentoML: a throw-away store, and no tracking.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="imgclf-test-store-")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colour_image(rgb: tuple[int, int, int], size: int = 32, seed: int = 0) -> Image.Image:
    """A noisy image dominated by ``rgb``: trivially learnable, different bytes for every seed."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_folder_dataset(root: Path, per_class: int = 12, size: int = 32, fmt: str = "png", seed: int = 0) -> Path:
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(rgb, size, seed=seed + c * 1000 + i).save(root / name / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def shared_folder_dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("shared") / "colours", per_class=16)


@pytest.fixture(scope="session")
def trained_model(shared_folder_dataset, tmp_path_factory):
    """A tiny scratch CNN really trained on the colours dataset into the session store: (tag, result)."""
    from training import load_config, train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(dotted=[f"data.source={shared_folder_dataset}", f"output_dir={out}", "name=colours-served",
                              "epochs=2", "batch_size=8", "model.width=8", "model.depth=2", "data.workers=0",
                              "data.val_fraction=0.2", "data.test_fraction=0.25", "model.img_size=32"])  # fmt: skip
    result = train(cfg)
    return result.tag, result


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()
