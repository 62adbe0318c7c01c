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


# ---------------------------------------------------------------- multi-label and hierarchical data
SHAPES = ("circle", "square", "triangle")


def shape_image(shape: str, rgb: tuple[int, int, int], size: int = 32, seed: int = 0) -> Image.Image:
    """A ``shape`` filled with ``rgb`` at a random place and size on a noisy grey background."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    arr = np.clip(128 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    r = int(rng.integers(size // 4, size // 2 - 1))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    return img


def make_multilabel_dataset(root: Path, per_combo: int = 6, size: int = 32, seed: int = 0,
                            flags: bool = False) -> Path:  # fmt: skip
    """Coloured shapes where colour and shape are independent labels; returns the CSV manifest.

    ``flags``: one 0/1 column per label instead of a ``labels`` column with ``;`` between labels.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    labels = [*COLOURS, *SHAPES]
    rows = ["path," + ",".join(labels) if flags else "path,labels"]
    n = 0
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for i in range(per_combo):
                name = f"images/{colour}-{shape}-{i:02d}.png"
                shape_image(shape, rgb, size, seed=seed + n).save(root / name)
                n += 1
                on = {colour, shape}
                rows.append(f"{name}," + (",".join("1" if x in on else "0" for x in labels) if flags
                                          else f"{colour};{shape}"))  # fmt: skip
    csv_path = root / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


TREE = {
    "warm": {"red": (220, 40, 40), "yellow": (230, 210, 40)},
    "cool": {"blue": (40, 60, 220), "green": (40, 200, 60)},
}


def make_tree_dataset(root: Path, per_leaf: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Nested class folders, two levels: warm/{red,yellow}, cool/{blue,green}."""
    n = 0
    for family, leaves in TREE.items():
        for leaf, rgb in leaves.items():
            (root / family / leaf).mkdir(parents=True, exist_ok=True)
            for i in range(per_leaf):
                colour_image(rgb, size, seed=seed + n).save(root / family / leaf / f"{i:03d}.png")
                n += 1
    return root
