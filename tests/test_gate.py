"""The promotion gate's pure decision."""

import numpy as np

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


# ---------------------------------------------------------------- the statistical gate, on constructed predictions
def paired_results(n: int, challenger_only: int, champion_only: int, both: int) -> tuple:
    """Per-image correctness of two models: ``both`` right together, ``*_only`` right alone, the rest wrong."""
    import numpy as np

    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both : both + challenger_only] = True
    b[both + challenger_only : both + challenger_only + champion_only] = True
    return a, b


def test_a_difference_inside_the_noise_is_not_called_a_regression():
    from service.retraining.stats import compare_accuracy

    a, b = paired_results(2000, challenger_only=100, champion_only=104, both=1700)
    paired = compare_accuracy(a, b)
    assert paired.ci_low < -0.01 < 0 < paired.ci_high and paired.p_value > 0.5
    d = decide(metrics(a.mean(), {"a": 0.9}), metrics(b.mean(), {"a": 0.9}), POLICY, paired)
    print(d.reason)
    assert d.promote and "within the noise" in d.reason and "95% CI" in d.reason and "regression" not in d.reason


def test_a_real_regression_is_refused_with_its_interval():
    from service.retraining.stats import compare_accuracy

    a, b = paired_results(2000, challenger_only=40, champion_only=160, both=1700)
    paired = compare_accuracy(a, b)
    assert paired.difference == -0.06 and paired.ci_high < 0 and paired.p_value < 1e-9
    d = decide(metrics(a.mean(), {"a": 0.9}), metrics(b.mean(), {"a": 0.9}), POLICY, paired)
    print(d.reason)
    assert not d.promote and "worse than the champion with confidence" in d.reason
    assert f"{paired.ci_low:+.4f} to {paired.ci_high:+.4f}" in d.reason and d.paired == paired


def test_not_worse_with_confidence_passes_and_says_so():
    from service.retraining.stats import compare_accuracy

    a, b = paired_results(10_000, challenger_only=200, champion_only=210, both=9000)
    paired = compare_accuracy(a, b)
    assert paired.ci_low >= -0.01
    d = decide(metrics(a.mean(), {"a": 0.9}), metrics(b.mean(), {"a": 0.9}), POLICY, paired)
    assert d.promote and "with 95% confidence" in d.reason


def test_the_map_difference_of_multilabel_models_is_bootstrapped():
    import numpy as np

    from service.retraining.stats import compare_map

    rng = np.random.default_rng(0)
    targets = (rng.random((400, 4)) < 0.3).astype(int)
    good = targets * 0.8 + rng.random((400, 4)) * 0.3  # ranks the positives first
    noise = rng.random((400, 4))
    worse = compare_map(noise, good, targets)
    assert worse.difference < -0.3 and worse.ci_high < 0
    same = compare_map(good, good, targets)
    assert same.difference == 0 and same.ci_low <= 0 <= same.ci_high


def test_the_rolling_evaluation_set_refuses_a_challenger_it_finds_worse():
    from service.retraining import stats

    champion = {"task": "multiclass", "primary": "accuracy", "per_label": "recall", "accuracy": 0.90,
                "recall": {"a": 0.9, "b": 0.9}}  # fmt: skip
    holdout_ok = stats.compare_accuracy(np.ones(1000, bool), np.ones(1000, bool))
    worse = stats.compare_accuracy(np.arange(400) % 10 < 6, np.arange(400) % 10 < 9)  # 60% vs 90% on new images
    decision = decide(dict(champion), champion, GatePolicy(), holdout_ok, worse)
    assert not decision.promote and "rolling evaluation set" in decision.reason and decision.evaluation == worse
    print(decision.reason)
    same = stats.compare_accuracy(np.arange(400) % 10 < 9, np.arange(400) % 10 < 9)
    kept = decide(dict(champion), champion, GatePolicy(), holdout_ok, same)
    assert kept.promote and "on the rolling evaluation set: accuracy difference +0.0000" in kept.reason
