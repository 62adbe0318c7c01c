"""Shared fixtures: a temporary model store for the whole session, and generated image datasets."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports BentoML: a throw-away store (removed when the run ends: every run would otherwise
# leave ~40 MB of models in /tmp), and no tracking.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="imgclf-test-store-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
# Servers under test run one worker unless a test asks for more (the default, one a core, starts a process
# per core for every server a test starts).
os.environ.setdefault("IMGCLF_WORKERS", "1")

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


# A toy model: small, fast, on generated images (what it learns is never asserted on; see LEARNED).
TOY = ["batch_size=8", "model.width=8", "model.depth=2", "data.workers=0", "data.val_fraction=0.2",
       "data.test_fraction=0.25", "model.img_size=32"]  # fmt: skip
# A toy model trained to a stated criterion rather than for a number of epochs: every validation image
# right (early_stop.target), epochs only a cap. Tests that need a model that knows its classes use it and
# check the criterion (``train_to_criterion``), so they hold whatever the processor's arithmetic.
LEARNED = ["epochs=40", "optim.lr=0.01", "early_stop.target=1.0", "early_stop.patience=40", "precision=fp32"]
# Toy holdouts have 4 images a class, so one image is 25 points of a class's recall: a gate that judges a
# challenger trained to the same criterion as its champion allows for that, and still refuses a model
# whose answers are wrong (a model that learned permuted labels scores about 0 against a champion near 1).
TOY_GATE = {"IMGCLF_GATE_TOLERANCE": "0.34", "IMGCLF_GATE_MAX_RECALL_DROP": "0.5"}


def train_to_criterion(cfg):
    """``train(cfg)`` for a config with ``early_stop.target``, failing loudly if the criterion was not met."""
    from training import train

    result = train(cfg)
    metric = "val_map" if "val_map" in result.history[-1] else "val_acc"
    best = max(h[metric] for h in result.history)
    assert best >= cfg.early_stop.target, (f"{cfg.name} did not learn its toy data: best {metric} {best} < "
                                           f"{cfg.early_stop.target} after {len(result.history)} epochs")  # fmt: skip
    return result


def permuted_labels_csv(data: Path, folder: str, out: str) -> Path:
    """A CSV of ``folder``'s images with every class renamed to the next one: a model that learns it is always wrong."""
    rows = sorted((p.relative_to(data), p.parent.name) for p in (data / folder).glob("*/*.png"))
    classes = sorted({label for _, label in rows})
    shift = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    (data / out).write_text("path,label\n" + "".join(f"{path},{shift[label]}\n" for path, label in rows))
    return data / out


def stored_top1(tag: str, data: bytes) -> str:
    """What the stored model itself predicts for an encoded image (the reference a server must match)."""
    import torch

    from training.imaging import decode_image
    from training.store import load_model
    from training.transforms import EvalPreprocessor

    stored = load_model(tag)
    x = EvalPreprocessor(stored.preprocessing)(decode_image(data, stored.preprocessing.channels))
    with torch.no_grad():
        logits = stored.model.eval()(torch.as_tensor(x, dtype=torch.float32)[None])
    return stored.classes[int(logits.argmax())]


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


def loaded_worker(trained_model):
    """Settings for serving ``trained_model`` in-process (torch, small limits) and its worker, model loaded."""
    from service.serving import build_worker
    from service.settings import Settings

    tag, _ = trained_model
    settings = Settings(model_name=tag.split(":")[0], model_tag=tag, runtime="torch", max_batch_size=8,
                        max_latency_ms=5, max_upload_bytes=200_000, max_pixels=4_000_000,
                        max_batch_images=4)  # fmt: skip
    worker = build_worker(settings)
    worker.follower.load()
    return settings, worker


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


def queued_job(job_id: str):
    """A job record as the registry returns a new one (for backends that only read it)."""
    from service.retraining.records import Job

    return Job(id=job_id, model_name="m", status="queued", backend="kubernetes", request={}, config={},
               created_at="2026-01-01T00:00:00+00:00")  # fmt: skip
