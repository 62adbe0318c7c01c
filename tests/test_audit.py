"""The data audit: constructed probabilities with labels flipped on purpose, exclusion from training, and
near-duplicates and outliers planted in generated data."""

from __future__ import annotations

import numpy as np
from PIL import Image

from training.audit import find_near_duplicates, find_outliers, find_suspects, flip_labels
from training.config import DataConfig
from training.data import load_splits
from training.data.splits import Sample


def test_confident_learning_finds_the_labels_flipped_on_purpose():
    rng = np.random.default_rng(0)
    n, classes = 600, ["a", "b", "c"]
    truth = rng.integers(0, 3, n)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), truth] = 0.9  # a model that sees the true class
    samples = [Sample(f"img{i}.png", int(y)) for i, y in enumerate(truth)]
    noisy, flipped = flip_labels(samples, 3, 0.1, seed=1)
    assert len(flipped) == 60 and all(s.label != truth[i] for i, s in enumerate(noisy) if s.key in flipped)
    suspects = find_suspects(probs, np.array([s.label for s in noisy]), [s.key for s in noisy], classes)
    found = {s.key for s in suspects}
    assert found == flipped  # every flipped label, and nothing else
    worst = suspects[0]
    assert worst.given != worst.suggested and worst.given_confidence == 0.05


def test_too_few_images_to_estimate_confusions_yield_no_suspects():
    assert find_suspects(np.eye(3)[[0, 1]], np.array([0, 1]), ["x", "y"], ["a", "b", "c"]) == []


def test_excluded_keys_stay_out_of_the_training_split(shared_folder_dataset):
    full = load_splits(DataConfig(source=str(shared_folder_dataset)))
    out = full.train[0].key
    audited = load_splits(DataConfig(source=str(shared_folder_dataset), exclude=[out]))
    assert out not in {s.key for s in audited.train} and len(audited.train) == len(full.train) - 1
    assert any(s.key == out and "label audit" in s.reason for s in audited.skipped)


def test_near_duplicates_across_splits_are_found_and_distinct_images_are_not():
    rng = np.random.default_rng(2)
    images = {f"train{i}": Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for i in range(50)}
    twin = np.asarray(images["train7"], np.int16) + rng.integers(-6, 7, (28, 28))  # re-encoded, slightly noisy
    images["test-twin"] = Image.fromarray(np.clip(twin, 0, 255).astype(np.uint8))
    images["test-other"] = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    images["val-flipped"] = images["train3"].transpose(Image.FLIP_LEFT_RIGHT)  # another view: not a duplicate
    found = find_near_duplicates([k for k in images if k.startswith("train")],
                                 [("test-twin", "test"), ("test-other", "test"), ("val-flipped", "val")],
                                 images.__getitem__)  # fmt: skip
    assert [(d.key, d.other, d.split) for d in found] == [("train7", "test-twin", "test")]
    assert found[0].similarity >= 0.99


def test_outliers_are_the_planted_far_points():
    rng = np.random.default_rng(3)
    cloud = rng.normal(size=(600, 16)) + 4.0  # normalised: a tight cone of directions
    far = -cloud[:3]  # the opposite directions
    embeddings = np.concatenate([cloud, far]).astype(np.float32)
    keys = [f"k{i}" for i in range(len(embeddings))]
    found = find_outliers(embeddings, keys, ["a"] * len(keys), k=10, reference=300)
    assert {o.key for o in found[:3]} == {"k600", "k601", "k602"} and len(found) <= 6
    assert all(o.distance > o.fence for o in found)
