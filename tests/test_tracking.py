"""Experiment tracking: TensorBoard event files read back, and a real MLflow server (started here on
localhost) receiving a training run, its model version, and the loop's decisions as aliases and tags."""

from __future__ import annotations

import pytest
from conftest import TOY
from mlflow_server import mlflow_server

from harness.server import free_port
from service.retraining.mirror import MlflowMirror
from service.retraining.registry import Registry
from training import load_config, train
from training.mlflow_models import TAG_KEY, version_of
from training.tracking import mlflow_client


@pytest.fixture(scope="module")
def mlflow_url():
    with mlflow_server() as url:
        yield url


def tiny(tmp_path, data, name: str, *extra: str):
    return load_config(dotted=[f"data.source={data}", f"output_dir={tmp_path}", f"name={name}", "epochs=2",
                               "tracking.mlflow_uri=", *TOY, *extra])  # fmt: skip


def test_every_run_writes_tensorboard_events_that_read_back(tmp_path, shared_folder_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, shared_folder_dataset, "colours-tb", "save=false"))
    events = EventAccumulator(str(result.report_dir.parent / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for scalar in ("train/loss", "train/accuracy", "train/lr", "train/img_per_s", "val/loss", "val/acc"):
        assert [e.step for e in events.Scalars(scalar)][:2] == [1, 2], scalar
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(result.metrics["test"]["accuracy"])
    assert {"report/confusion_matrix", "report/samples", "report/curves"} <= set(tags["images"])
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    hparams = EventAccumulator(str(result.report_dir.parent / "tensorboard" / "hparams")).Reload()
    content = hparams.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.width"].number_value == 8 and start.hparams["epochs"].number_value == 2


def test_a_training_run_is_an_mlflow_run_with_its_model_version(tmp_path, shared_folder_dataset, mlflow_url):
    result = train(tiny(tmp_path, shared_folder_dataset, "colours-tracked", f"tracking.mlflow_uri={mlflow_url}"))
    client = mlflow_client(mlflow_url)
    experiment = client.get_experiment_by_name("colours-tracked")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags[TAG_KEY] == result.tag
    assert run.data.tags["dataset_fingerprint"] == result.report["data"]["fingerprint"]
    assert run.data.params["model.width"] == "8" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.json", "report/confusion_matrix.png", "report/samples.png"} <= report
    version = client.get_model_version("colours-tracked", version_of(client, "colours-tracked", result.tag))
    assert version.run_id == run.info.run_id and version.tags[TAG_KEY] == result.tag


def test_an_mlflow_server_that_is_down_does_not_stop_training(tmp_path, shared_folder_dataset, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = train(tiny(tmp_path, shared_folder_dataset, "colours-down", "save=false", f"tracking.mlflow_uri={down}"))
    assert result.metrics["test"]["accuracy"] >= 0 and (result.report_dir / "report.json").is_file()


def test_the_loop_s_decisions_move_the_aliases_and_wait_while_mlflow_is_down(tmp_path, shared_folder_dataset,
                                                                             mlflow_url, monkeypatch):  # fmt: skip
    name = "colours-mirrored"
    first = train(tiny(tmp_path / "a", shared_folder_dataset, name)).tag  # trained without MLflow
    second = train(tiny(tmp_path / "b", shared_folder_dataset, name, "seed=7")).tag
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.ensure_champion(name, first)
    registry.promote(name, second, "promoted: accuracy 1.0 vs champion 0.9", job_id="job1",
                     challenger={"accuracy": 1.0}, champion={"accuracy": 0.9})  # fmt: skip

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = MlflowMirror(f"http://127.0.0.1:{free_port()}", registry, name)
    assert down.flush() == 0 and len(registry.unmirrored_events(name)) == 2  # kept for later: nothing lost

    mirror = MlflowMirror(mlflow_url, registry, name)
    assert mirror.flush() == 2 and registry.unmirrored_events(name) == []
    client = mlflow_client(mlflow_url)
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags[TAG_KEY] == second and champion.tags["gate_decision"] == "promoted"
    assert client.get_model_version_by_alias(name, "challenger").version == champion.version

    registry.rollback(name, "misbehaves")
    assert mirror.flush() == 1
    assert client.get_model_version_by_alias(name, "champion").tags[TAG_KEY] == first
