"""The promotion gate's pure decision."""

from service.retraining.gate import GatePolicy, decide, summary

POLICY = GatePolicy(tolerance=0.01, max_recall_drop=0.05)


def metrics(acc: float, recalls: dict[str, float]) -> dict:
    return {"accuracy": acc, "recall": recalls, "macro_f1": acc, "num_samples": 100}


def test_first_model_is_promoted():
    d = decide(metrics(0.5, {"a": 0.5}), None, POLICY)
    assert d.promote and "first" in d.reason


def test_within_tolerance_is_promoted():
    d = decide(metrics(0.905, {"a": 0.9, "b": 0.91}), metrics(0.91, {"a": 0.92, "b": 0.90}), POLICY)
    assert d.promote, d.reason


def test_accuracy_below_floor_is_refused():
    d = decide(metrics(0.33, {"a": 0.3, "b": 0.36}), metrics(0.95, {"a": 0.95, "b": 0.95}), POLICY)
    assert not d.promote
    assert "below the floor" in d.reason and "0.3300" in d.reason


def test_one_class_recall_drop_is_refused_even_when_accuracy_rises():
    d = decide(metrics(0.96, {"a": 0.99, "b": 0.85}), metrics(0.95, {"a": 0.95, "b": 0.95}), POLICY)
    assert not d.promote
    assert d.recall_drops == {"b": 0.1}
    assert "b -10.0 pts" in d.reason


def test_new_classes_are_not_compared_class_by_class():
    d = decide(metrics(0.95, {"a": 0.95, "new": 0.1}), metrics(0.95, {"a": 0.95}), POLICY)
    assert d.promote


def test_summary_keeps_recall_of_classes_present():
    m = {"accuracy": 0.5, "num_samples": 4, "macro": {"f1": 0.4},
         "per_class": {"a": {"recall": 1.0, "support": 2}, "b": {"recall": 0.0, "support": 0}}}  # fmt: skip
    assert summary(m)["recall"] == {"a": 1.0}
