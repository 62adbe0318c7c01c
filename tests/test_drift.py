"""The drift test on constructed embeddings (seeded Gaussians: no model, so nothing here depends on what a
network learned): its calibrated false-alarm rate, its power on a real shift, the stored reference and the
serving monitor's window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.inference.drift import DriftMonitor
from training.drift import MIN_IMAGES, DriftReference, class_shift, fit_reference
from training.models import ScratchCNN, WithEmbedding, forward_with_embedding

DIM, CLASSES = 64, 5


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, scores): a Gaussian cloud (moved by ``shift`` along every dimension) and softmax scores."""
    emb = rng.normal(size=(n, DIM)).astype(np.float32) + shift
    logits = emb[:, :CLASSES] * 2
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return emb, scores


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    ref = fit_reference(*draw(np.random.default_rng(0), 3000), window=100, alpha=0.01, seed=0)
    assert ref is not None
    return ref


def test_false_alarm_rate_is_what_was_calibrated(reference):
    """Fresh windows from the reference's own distribution: about alpha of them (1%) raise the alarm."""
    rng = np.random.default_rng(1)
    alarms = sum(reference.statistic(reference.project(draw(rng, reference.window)[0])) > reference.threshold
                 for _ in range(300))  # fmt: skip
    assert alarms <= 12, f"{alarms}/300 false alarms at alpha=0.01"  # binomial(300, 0.01) > 12: p < 1e-4


def test_a_real_shift_is_detected(reference):
    rng = np.random.default_rng(2)
    for shift in (0.5, 1.0):
        stat = reference.statistic(reference.project(draw(rng, reference.window, shift)[0]))
        assert stat > 3 * reference.threshold
        assert reference.p_value(stat) < reference.alpha


def test_reference_round_trips_through_its_file(reference, tmp_path):
    reference.save(tmp_path / "drift.npz")
    loaded = DriftReference.load(tmp_path / "drift.npz")
    assert loaded.threshold == reference.threshold and loaded.window == reference.window
    window = reference.project(draw(np.random.default_rng(3), reference.window)[0])
    assert loaded.statistic(window) == pytest.approx(reference.statistic(window))
    assert loaded.summary() == reference.summary()


def test_small_validation_split_gives_no_reference_or_a_smaller_window():
    rng = np.random.default_rng(4)
    assert fit_reference(*draw(rng, MIN_IMAGES - 1)) is None
    small = fit_reference(*draw(rng, 100), window=200)
    assert small is not None and small.window == 25 and len(small.reference) == 50


def test_class_shift_is_total_variation():
    assert class_shift(np.array([0.5, 0.5]), np.array([0, 1, 0, 1])) == 0
    assert class_shift(np.array([0.5, 0.5]), np.array([0, 0, 0, 0])) == pytest.approx(0.5)


def test_monitor_is_quiet_until_full_then_tests_the_latest_window(reference):
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(reference, sample=1.0)
    emb, scores = draw(rng, reference.window - 1)
    monitor.observe(emb, scores)
    status = monitor.check()
    assert (status.images, status.detected, status.score, status.p_value) == (reference.window - 1, False, 0, 1)
    monitor.observe(*draw(rng, 1))
    status = monitor.check()
    assert status.images == reference.window and status.score < 2
    assert status.mean_confidence == pytest.approx(float(scores.max(1).mean()), abs=0.05)
    monitor.observe(*draw(rng, 3 * reference.window, shift=1.0))  # more than a window: only the latest count
    shifted = monitor.check()
    assert shifted.detected and shifted.score > 3 and shifted.images == reference.window
    assert monitor.status == shifted


def test_monitor_samples_the_requested_share(reference):
    monitor = DriftMonitor(reference, sample=0.25, seed=0)
    rng = np.random.default_rng(6)
    for _ in range(10):
        monitor.observe(*draw(rng, 20))
    assert 30 <= monitor.check().images <= 70  # 200 images at 25%: binomial mean 50


def test_embedding_is_what_the_classifier_reads():
    """The exported graph's extra columns are the pooled features the linear head maps to the logits."""
    torch.manual_seed(0)
    model = ScratchCNN(num_classes=4, in_chans=1, width=8, depth=2).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        logits, embedding = forward_with_embedding(model, x)
        both = WithEmbedding(model)(x)
    assert embedding.shape == (3, model.num_features)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(model.classifier(embedding), logits)
    torch.testing.assert_close(both, torch.cat([logits, embedding], 1))
