"""Calibration on constructed scores (never on what a toy model happened to learn), and what training keeps."""

from __future__ import annotations

import numpy as np

from training.calibration import (
    Calibration,
    confidence_and_correct,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
)
from training.metrics import softmax
from training.tasks import TaskSpec


def overconfident(n: int = 4000, classes: int = 5, scale: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z), logits reported as scale * z: a model overconfident by ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, classes)) * 1.5
    p = softmax(z)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return z * scale, labels


def test_temperature_scaling_finds_the_overconfidence_and_lowers_the_ece():
    logits, labels = overconfident()
    temperature = fit_temperature(logits[:2000], labels[:2000])
    assert 3.0 < temperature < 5.5  # the scale the logits were inflated by
    before = expected_calibration_error(*confidence_and_correct(softmax(logits[2000:]), labels[2000:], False))
    after = expected_calibration_error(
        *confidence_and_correct(softmax(logits[2000:] / temperature), labels[2000:], False)
    )
    assert after < before / 3 and after < 0.03
    assert (softmax(logits / temperature).argmax(1) == logits.argmax(1)).all()  # decisions do not change


def test_platt_scaling_per_label_keeps_the_ranking_and_fits_each_label():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, 3))
    targets = (rng.random((3000, 3)) < 1 / (1 + np.exp(-z))).astype(int)
    targets[:, 2] = 0  # a label never seen: keeps the identity
    slopes, intercepts = fit_platt(z * 3 + 1, targets)
    np.testing.assert_allclose(slopes[:2], 1 / 3, rtol=0.2)
    assert slopes[2] == 1 and intercepts[2] == 0 and (slopes > 0).all()


def test_a_task_serves_calibrated_scores_and_keeps_the_calibration_in_its_metadata():
    spec = TaskSpec("multiclass", ["a", "b", "c"], calibration=Calibration("temperature", temperature=2.0))
    logits = np.array([[4.0, 0.0, -2.0]])
    np.testing.assert_allclose(spec.activate(logits), softmax(logits / 2))
    again = TaskSpec.from_metadata({"classes": ["a", "b", "c"], **spec.metadata()})
    np.testing.assert_allclose(again.activate(logits), spec.activate(logits))
    platt = Calibration("platt", slopes=np.array([0.5, 2.0]), intercepts=np.array([0.0, -1.0]))
    ml = TaskSpec("multilabel", ["x", "y"], np.array([0.5, 0.5]), calibration=platt)
    restored = TaskSpec.from_metadata({"classes": ["x", "y"], **ml.metadata()})
    np.testing.assert_allclose(restored.activate(np.array([[2.0, 1.0]])), 1 / (1 + np.exp(-np.array([[1.0, 1.0]]))))


def test_training_stores_the_calibration_and_reports_its_effect(trained_model):
    from training.store import load_model

    tag, result = trained_model
    cal = result.report["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    assert 0 <= cal["test_ece_before"] <= 1 and 0 <= cal["test_ece_after"] <= 1
    assert (result.report_dir / "calibration.png").is_file()
    stored = load_model(tag).metadata["calibration"]
    assert stored["method"] == "temperature" and abs(stored["temperature"] - cal["temperature"]) < 1e-5
