"""Turning a retrain request into a training config: data roots, protected keys, the champion's recipe."""

from __future__ import annotations

import pytest

from service.errors import Forbidden, InvalidInput
from service.retrain import job_config, resolve_data
from service.schemas import RetrainRequest
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
