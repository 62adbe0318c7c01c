from pathlib import Path

import bentoml
import pytest
import torch

from training import store
from training.models import build_model, model_kwargs
from training.transforms import Preprocessing


def _save(name: str, **kw):
    kwargs = model_kwargs("scratch-cnn", 3, 3, width=4, depth=1)
    model = build_model("scratch-cnn", **kwargs).eval()
    saved = store.save_model(
        name, model, architecture="scratch-cnn", model_kwargs=kwargs, classes=["a", "b", "c"],
        preprocessing=Preprocessing(input_size=16), metrics={"test": {"accuracy": 0.5, "auc": None}},
        config={"x": 1, "y": None}, fingerprint="f" * 64, split={"test": [["k", 0]]}, **kw,
    )  # fmt: skip
    return model, saved


def test_round_trip_gives_identical_outputs():
    model, saved = _save("roundtrip")
    loaded = store.load_model(str(saved.tag))
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded.model(x))
    meta = loaded.metadata
    assert meta["classes"] == ["a", "b", "c"] and meta["architecture"] == "scratch-cnn"
    assert meta["metrics"]["test"]["accuracy"] == 0.5 and "auc" not in meta["metrics"]["test"]
    assert meta["preprocessing"]["input_size"] == 16
    assert set(meta["versions"]) >= {"torch", "timm", "bentoml"}
    assert loaded.split() == {"test": [["k", 0]]}
    assert (Path(saved.path) / "config.yaml").is_file()


def test_missing_model_is_a_store_error():
    with pytest.raises(store.StoreError, match="not in the model store"):
        store.load_model("no-such-model:abc")


def test_failed_save_leaves_nothing_behind(monkeypatch):
    before = {str(m.tag) for m in bentoml.models.list()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _save("halfway")
    assert {str(m.tag) for m in bentoml.models.list()} == before
    assert not store.exists("halfway")


def test_damaged_weights_are_reported():
    _, saved = _save("damaged")
    (Path(saved.path) / store.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(store.StoreError, match="damaged or incomplete"):
        store.load_model(str(saved.tag))


def test_versions_newest_first():
    _save("versions")
    _, second = _save("versions")
    assert str(store.list_versions("versions")[0].tag) == str(second.tag)
