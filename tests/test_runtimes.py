"""Inference runtimes against the trained tiny model: fp32 runtimes equal torch, `auto` measures every
candidate, reduced precision is judged on the recorded test split and int8 calibrated on the validation split."""

from __future__ import annotations

import numpy as np
import pytest

from service import inference
from service.inference import _split_batches, choose_runtime
from service.runtimes import build_runtime
from service.settings import Settings
from training.store import load_model
from training.transforms import EvalPreprocessor


@pytest.fixture(scope="module")
def stored(trained_model):
    return load_model(trained_model[0])


@pytest.fixture(scope="module")
def batches(stored):
    transform = EvalPreprocessor(stored.preprocessing)
    return {split: _split_batches(stored, transform, split, limit=1000, batch=8) for split in ("val", "test")}


def test_the_recorded_splits_are_read_back_as_batches(stored, batches):
    record = stored.split()
    for split, expected in (("val", record["val"]), ("test", record["test"])):
        assert sum(len(b) for b in batches[split]) == len(expected)
        assert batches[split][0].shape[1:] == (3, 32, 32) and batches[split][0].dtype == np.float32
    assert not np.array_equal(batches["val"][0], batches["test"][0])


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_fp32_runtimes_give_torch_s_scores(stored, batches, name):
    torch_rt = build_runtime("torch", stored, threads=1)
    other = build_runtime(name, stored, threads=1)
    for x in batches["test"]:
        np.testing.assert_allclose(other(x), torch_rt(x), atol=1e-4, rtol=1e-4)


def test_auto_measures_every_candidate_and_int8_is_calibrated_on_validation_images(stored, batches, monkeypatch):
    seen: dict[str, list[np.ndarray]] = {}
    real = inference.build_runtime

    def spy(name, stored_, threads, calibration=None):
        if calibration is not None:
            seen[name] = list(calibration())
        return real(name, stored_, threads, calibration=calibration)

    monkeypatch.setattr(inference, "build_runtime", spy)
    runtime, report = choose_runtime(stored, Settings(model_name="x", runtime="auto", max_batch_size=8), threads=1)
    assert set(report["candidates"]) >= {"torch", "onnx", "openvino", "openvino-int8"}
    assert report["chosen"] == runtime.name
    int8 = report["candidates"]["openvino-int8"]
    assert "agreement" in int8 and ("img_per_s" in int8 or int8["refused"].startswith("ValueError: top-1"))
    np.testing.assert_array_equal(np.concatenate(seen["openvino-int8"]), np.concatenate(batches["val"]))


def test_a_runtime_below_the_agreement_threshold_is_refused(stored):
    settings = Settings(model_name="x", runtime="openvino-int8", agreement_threshold=1.0, max_batch_size=8)
    try:
        _, report = choose_runtime(stored, settings, threads=1)
    except ValueError as exc:  # asked for by name, so its refusal is an error
        assert "agreement with fp32" in str(exc) and "< 1.0" in str(exc)
    else:
        assert report["agreement"] == 1.0  # int8 happened to agree on every test image
