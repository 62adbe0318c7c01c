"""The label audit: constructed probabilities with labels flipped on purpose, and exclusion from training."""

from __future__ import annotations

import numpy as np

from training.audit import find_suspects, flip_labels
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
