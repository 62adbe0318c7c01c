"""Turning a retrain request into a training config: data roots, protected keys, the champion's recipe."""

from __future__ import annotations

import pytest

from service.errors import Forbidden, InvalidInput
from service.retraining.records import RetrainRequest
from service.retraining.requests import job_config, resolve_data
from service.settings import Settings


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "data" / "ds").mkdir(parents=True)
    return Settings(model_name="colours", data_roots=[tmp_path / "data"], feedback_dir=tmp_path / "feedback",
                    jobs_dir=tmp_path / "jobs")  # fmt: skip


def test_paths_must_stay_inside_the_data_roots(settings, tmp_path):
    roots = settings.allowed_roots()
    assert resolve_data("ds", roots) == str((tmp_path / "data" / "ds").resolve())
    assert resolve_data("fashion-mnist", roots) == "fashion-mnist"
    for escape in ("../secrets", "ds/../../secrets", "/etc", str(tmp_path)):
        with pytest.raises(Forbidden, match="outside the allowed data roots"):
            resolve_data(escape, roots)
    (tmp_path / "data" / "link").symlink_to("/etc")
    with pytest.raises(Forbidden):
        resolve_data("link", roots)
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_data("missing", roots)


def test_protected_keys_cannot_be_overridden(settings):
    for key in ("output_dir", "name", "data.source", "data", "model.weights_file", "save"):
        with pytest.raises(InvalidInput, match="set by the service"):
            job_config(RetrainRequest(overrides={key: "x"}), settings, None)


def test_invalid_overrides_say_what_is_wrong(settings):
    with pytest.raises(InvalidInput, match="optim.lr"):
        job_config(RetrainRequest(data="ds", overrides={"optim.lr": -1}), settings, None)
    with pytest.raises(InvalidInput, match="bogus"):
        job_config(RetrainRequest(data="ds", overrides={"optim.bogus": 1}), settings, None)


def test_request_fields_land_in_the_config(settings, tmp_path):
    (settings.feedback_dir / "colours" / "red").mkdir(parents=True)
    (settings.feedback_dir / "colours" / "red" / "x.png").write_bytes(b"x")
    cfg = job_config(RetrainRequest(data="ds", epochs=3, model="resnet18", overrides={"optim.lr": 0.01}),
                     settings, None)  # fmt: skip
    assert cfg.name == "colours" and cfg.epochs == 3 and cfg.model.name == "resnet18" and cfg.optim.lr == 0.01
    assert cfg.data.source.endswith("ds") and cfg.data.extra_train == [str(settings.feedback_dir / "colours")]
    assert cfg.threads == settings.retrain_threads and cfg.save and not cfg.resume
    no_feedback = job_config(RetrainRequest(data="ds", include_feedback=False), settings, None)
    assert no_feedback.data.extra_train == []


def test_odd_data_values_are_refused_with_what_is_accepted(settings):
    roots = settings.allowed_roots()
    for bad in ("ds\x00", "", "x" * 2000, "ds\n"):
        with pytest.raises(InvalidInput, match="no control characters"):
            resolve_data(bad, roots)


def test_overrides_are_bounded_as_request_fields_are(settings):
    for key, value in (("epochs", 100_000), ("batch_size", 10**6), ("model.width", 4096), ("max_minutes", 10.0**6)):
        with pytest.raises(InvalidInput, match=f"{key}={value} is out of range"):
            job_config(RetrainRequest(data="ds", overrides={key: value}), settings, None)
    assert job_config(RetrainRequest(data="ds", overrides={"epochs": 1000}), settings, None).epochs == 1000
    with pytest.raises(InvalidInput, match="set by the service"):
        job_config(RetrainRequest(overrides={"data.allowed_roots": ["/"]}), settings, None)


def test_every_file_a_job_reads_must_resolve_inside_the_data_roots(settings, tmp_path):
    """A CSV inside a root listing files elsewhere, and an image in a class folder that links out of the root: those
    files are listed as skipped and never read."""
    from conftest import colour_image

    from training.data import load_splits

    outside = tmp_path / "outside"
    (outside / "red").mkdir(parents=True)
    data = tmp_path / "data"
    for name, rgb in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        (data / "ds" / name).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            colour_image(rgb, 16, seed=i).save(data / "ds" / name / f"{i}.png")
    colour_image((220, 40, 40), 16, seed=99).save(outside / "red" / "secret.png")
    (data / "ds" / "red" / "more.png").symlink_to(outside / "red" / "secret.png")
    rows = [f"ds/red/{i}.png,red" for i in range(6)] + [f"ds/blue/{i}.png,blue" for i in range(6)]
    (data / "m.csv").write_text("path,label\n" + "\n".join([*rows, f"{outside / 'red' / 'secret.png'},red"]) + "\n")
    for source in ("ds", "m.csv"):
        cfg = job_config(RetrainRequest(data=source, include_feedback=False), settings, None)
        splits = load_splits(cfg.data)
        keys = [s.key for s in splits.train + splits.val + splits.test]
        assert not any("outside" in k or "more.png" in k for k in keys), keys
        refused = [s for s in splits.skipped if "outside the allowed data roots" in s.reason]
        assert len(refused) == 1 and refused[0].reason.endswith("not read"), splits.skipped
