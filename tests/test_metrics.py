import numpy as np

from training.metrics import classification_metrics, softmax


def test_perfect_and_imperfect_predictions():
    targets = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    m = classification_metrics(targets, probs, ["a", "b", "c"], top_k=5)
    assert m["accuracy"] == 0.75
    assert m["top2_accuracy"] == 0.75
    assert m["per_class"]["c"]["recall"] == 0.5 and m["per_class"]["a"]["precision"] == 0.5
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert 0.5 < m["roc_auc_ovr"] <= 1.0
    assert set(m["macro"]) == {"precision", "recall", "f1"}


def test_absent_classes_and_single_class_targets():
    probs = softmax(np.random.default_rng(0).normal(size=(5, 4)))
    m = classification_metrics(np.zeros(5, dtype=int), probs, list("wxyz"))
    assert m["roc_auc_ovr"] is None
    assert m["per_class"]["z"]["support"] == 0


def test_binary_auc():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = classification_metrics(np.array([0, 1, 1]), probs, ["no", "yes"])
    assert m["roc_auc_ovr"] == 1.0 and "top2_accuracy" not in m
