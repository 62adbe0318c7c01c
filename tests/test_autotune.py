"""precision=auto / channels_last=auto for training: measured on the machine at hand, never assumed."""

import pytest
import torch

from training import autotune
from training.models import build_model, model_kwargs

CPU = torch.device("cpu")


def tiny():
    return build_model("scratch-cnn", **model_kwargs("scratch-cnn", 3, 1, 4, 1))


def test_candidates_follow_the_config_and_the_processor():
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autotune.candidates("fp32", True, CPU) == [("fp32", True)]
    assert autotune.candidates("fp32", "auto", CPU) == [("fp32", False), ("fp32", True)]
    auto = autotune.candidates("auto", False, CPU)
    assert auto == ([("fp32", False), ("bf16", False)] if bf16 else [("fp32", False)])


def test_a_single_candidate_is_taken_as_configured_without_measuring():
    choice = autotune.choose("fp32", False, CPU, tiny(), (1, 12, 12), 3, 8)
    assert (choice.precision, choice.channels_last, choice.measured, choice.rates) == ("fp32", False, False, {})
    assert choice.execution(CPU).amp_dtype is None


def test_auto_measures_every_candidate_and_keeps_the_fastest():
    choice = autotune.choose("auto", "auto", CPU, tiny(), (1, 12, 12), 3, 8)
    expected = {f"{p}{'+cl' if cl else ''}" for p, cl in autotune.candidates("auto", "auto", CPU)}
    assert choice.measured and set(choice.rates) == expected and all(r > 0 for r in choice.rates.values())
    best = max(choice.rates, key=choice.rates.get)
    assert f"{choice.precision}{'+cl' if choice.channels_last else ''}" == best
    assert choice.to_dict()["rates"] == choice.rates and "img/s" in choice.describe()


def test_measuring_leaves_the_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    autotune.choose("auto", "auto", CPU, model, (1, 12, 12), 3, 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_on_a_cpu_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="use bf16 or fp32 on CPU"):
        autotune.choose("fp16", False, CPU, tiny(), (1, 12, 12), 3, 8)


def test_the_processor_is_named_with_its_bf16_flags():
    text = autotune.cpu_description()
    assert text and text.endswith("]")


class _Scripted:
    """A stand-in trial whose rounds measure the rates it is given, in order."""

    def __init__(self, *rates: float, seconds: float = 0.0):
        self.rates, self.seconds, self.calls = list(rates), seconds, 0

    def step(self) -> None:
        pass

    def rate(self, steps: int) -> float:
        import time

        time.sleep(self.seconds)
        self.calls += 1
        return self.rates.pop(0)


def test_candidates_are_timed_in_interleaved_rounds_and_each_keeps_its_best():
    # One disturbed moment (the first round of "b") must not hand the choice to the slower candidate.
    trials = {"a": _Scripted(1000, 1100, 1050), "b": _Scripted(500, 2000, 1900)}
    assert autotune.measure(trials, rounds=3) == {"a": 1100, "b": 2000}


def test_slow_candidates_are_measured_once():
    trials = {"a": _Scripted(10, 10, 10, seconds=0.05), "b": _Scripted(20, 20, 20, seconds=0.05)}
    autotune.measure(trials, rounds=3, budget_s=0.05)
    assert trials["a"].calls == trials["b"].calls == 1
