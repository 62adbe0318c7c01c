"""The time budget: the pace is measured after the warm-up epoch, and a cut schedule is said out loud."""

import time

from training import load_config
from training.autotune import PrecisionChoice
from training.schedule import RunSummary, epochs_that_fit


def test_the_warm_up_epoch_alone_never_shortens_the_schedule():
    assert epochs_that_fit(1, 11, [1000.0], time.monotonic() + 10) == 11


def test_the_pace_leaves_the_first_epoch_out():
    # a slow first epoch (60 s) and then 10 s epochs, 45 s left: 4 more fit, not 1
    assert epochs_that_fit(2, 11, [60.0, 10.0], time.monotonic() + 45) == 6
    assert epochs_that_fit(2, 5, [60.0, 10.0], time.monotonic() + 1000) == 5  # never past the plan
    assert epochs_that_fit(3, 11, [60.0, 10.0, 10.0], time.monotonic() - 1) == 3  # never before now


def test_the_log_says_the_end_the_run_keeps(caplog):
    caplog.set_level("INFO", "training.schedule")
    assert epochs_that_fit(7, 7, [40.0, 45.0], time.monotonic() - 5) == 7  # the last epoch ran past the budget
    assert not caplog.records  # nothing left to shorten: no "now ends at epoch 6" after epoch 7
    assert epochs_that_fit(3, 11, [60.0, 10.0, 10.0], time.monotonic() - 1) == 3
    assert caplog.messages == ["time budget: 0 more epoch(s) fit at 10 s an epoch; the schedule now ends at epoch 3"]


def test_only_a_time_cut_leaves_a_note():
    cfg = load_config(dotted=["epochs=11", "max_minutes=5"])
    choice = PrecisionChoice("fp32", False, measured=False)
    history = [{}] * 2
    cut = RunSummary.of(cfg, history, "time", choice, 290.0)
    assert cut.note.startswith("schedule shortened from 11 to 2 epochs by max_minutes=5; expected accuracy is lower")
    for stopped in ("completed", "target", "early_stop"):
        assert RunSummary.of(cfg, history, stopped, choice, 1.0).note == ""
