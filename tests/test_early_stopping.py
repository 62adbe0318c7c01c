import pytest

from training.early_stopping import EarlyStopping


def test_stops_after_patience_without_improvement():
    es = EarlyStopping(patience=2, mode="max")
    assert es.step(0.5, 1) and es.step(0.6, 2)
    assert not es.step(0.6, 3) and not es.should_stop
    assert not es.step(0.55, 4) and es.should_stop
    assert (es.best, es.best_epoch) == (0.6, 2)


def test_min_delta_and_min_mode():
    es = EarlyStopping(patience=1, min_delta=0.1, mode="min")
    es.step(1.0, 1)
    assert not es.step(0.95, 2) and es.should_stop
    es2 = EarlyStopping(patience=1, min_delta=0.1, mode="min")
    es2.step(1.0, 1)
    assert es2.step(0.85, 2) and es2.bad_epochs == 0


def test_state_round_trip():
    es = EarlyStopping(patience=3)
    for i, v in enumerate([0.1, 0.3, 0.2]):
        es.step(v, i)
    restored = EarlyStopping(patience=3)
    restored.load_state_dict(es.state_dict())
    assert restored.state_dict() == es.state_dict()


def test_invalid_settings():
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError):
        EarlyStopping(mode="up")


def test_target_is_a_stated_criterion_in_either_direction():
    es = EarlyStopping(patience=5, mode="max", target=0.9)
    es.step(0.85, 1)
    assert not es.reached_target
    es.step(0.9, 2)
    assert es.reached_target and not es.should_stop
    loss = EarlyStopping(patience=5, mode="min", target=0.2)
    loss.step(0.3, 1)
    assert not loss.reached_target
    loss.step(0.19, 2)
    assert loss.reached_target
    assert not EarlyStopping(patience=5).reached_target  # no target: never
