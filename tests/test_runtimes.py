"""Inference runtimes against the trained tiny model: fp32 runtimes equal torch, `auto` measures every
candidate, reduced precision is judged on the recorded test split and int8 calibrated on the validation split.

ONNX Runtime and OpenVINO run in a child process, as they do in the service (its worker processes): OpenVINO
leaves state behind in the process that built it (a signal stack of its own on the calling thread), and the
pytest process once crashed (SIGSEGV) in a later training test after building them in-process.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from service.inference.selection import split_batches as read_split_batches
from training.store import load_model
from training.transforms import EvalPreprocessor


def in_child(fn, *args) -> Any:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=600)


def split_batches(tag: str, split: str) -> list[np.ndarray]:
    stored = load_model(tag)
    return read_split_batches(stored, EvalPreprocessor(stored.preprocessing), split, limit=1000, batch=8)


# ---------------------------------------------------------------- run in the child
def fp32_max_difference(tag: str, name: str) -> float:
    from service.inference.runtimes import build_runtime

    stored = load_model(tag)
    reference, other = build_runtime("torch", stored, threads=1), build_runtime(name, stored, threads=1)
    differences = []
    for x in split_batches(tag, "test"):
        (logits, embedding), (ref_logits, ref_embedding) = other.with_embedding(x), reference.with_embedding(x)
        assert logits.shape == (len(x), len(stored.classes)) and embedding.shape == ref_embedding.shape
        np.testing.assert_array_equal(other(x), logits)
        differences += [np.abs(logits - ref_logits).max(), np.abs(embedding - ref_embedding).max()]
    return float(max(differences))


def auto_choice(tag: str) -> dict[str, Any]:
    from service.inference import selection as inference
    from service.settings import Settings

    calibrated: dict[str, np.ndarray] = {}
    real = inference.build_runtime

    def spy(name, stored, threads, calibration=None):
        if calibration is not None:
            calibrated[name] = np.concatenate(list(calibration()))
        return real(name, stored, threads, calibration=calibration)

    inference.build_runtime = spy
    runtime, report = inference.choose_runtime(
        load_model(tag), Settings(model_name="x", max_batch_size=8).inference(), 1
    )
    return {"runtime": runtime.name, "report": report, "int8_calibration": calibrated.get("openvino-int8")}


def named_int8_with_a_perfect_bar(tag: str) -> dict[str, Any]:
    from service.inference.selection import choose_runtime
    from service.settings import Settings

    settings = Settings(model_name="x", runtime="openvino-int8", agreement_threshold=1.0, max_batch_size=8)
    try:
        return {"report": choose_runtime(load_model(tag), settings.inference(), threads=1)[1]}
    except ValueError as exc:  # asked for by name, so its refusal is an error
        return {"error": str(exc)}


def auto_report(tag: str) -> dict[str, Any]:
    from service.inference.selection import choose_runtime
    from service.settings import Settings

    return choose_runtime(load_model(tag), Settings(model_name="x", max_batch_size=8).inference(), 1)[1]


def lone_image_runtimes(tag: str) -> dict[str, Any]:
    from service.inference import build_classifier
    from service.inference.options import InferenceOptions

    out = {}
    x = split_batches(tag, "test")[0][:1]
    for name in ("onnx", "torch"):
        options = InferenceOptions(runtime=name, max_batch_size=4, threads=1, lone_threads=2, drift_sample=0)
        clf = build_classifier(load_model(tag), options)
        agrees = np.allclose(clf.infer_alone(x), clf.infer(x), atol=1e-5)  # the lone runtime vs the shared one
        out[name] = {"lone": clf.lone and clf.lone.name, "report": clf.runtime_report.get("lone_image_threads"),
                     "agrees": bool(agrees), "timed": clf.runtime_report.get("lone_image")}  # fmt: skip
        out[f"{name} batches"] = {"report": clf.runtime_report["batch"], "limit": clf.batch_limit}
    return out


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def mirrored_model(shared_folder_dataset, tmp_path_factory) -> str:
    """The default recipe's architecture options (a narrower first block, the mirror average), trained briefly."""
    from training import load_config, train

    cfg = load_config(dotted=[f"data.source={shared_folder_dataset}", f"output_dir={tmp_path_factory.mktemp('runs')}",
                              "name=colours-mirrored", "epochs=1", "batch_size=8", "model.width=8", "model.depth=2",
                              "model.first_width=4", "model.flip_tta=true", "data.workers=0", "data.val_fraction=0.2",
                              "data.test_fraction=0.25", "model.img_size=32"])  # fmt: skip
    return train(cfg).tag


@pytest.fixture(scope="module")
def same_padded_model(shared_folder_dataset, tmp_path_factory) -> str:
    """A TF-ported timm network ("same" padding: an explicit Pad before each strided convolution), trained briefly."""
    from training import load_config, train

    cfg = load_config(dotted=[f"data.source={shared_folder_dataset}", f"output_dir={tmp_path_factory.mktemp('runs')}",
                              "name=colours-same-padded", "model.name=tf_mobilenetv3_small_minimal_100", "epochs=1",
                              "batch_size=8", "data.workers=0", "data.val_fraction=0.2", "data.test_fraction=0.25",
                              "model.img_size=32"])  # fmt: skip
    return train(cfg).tag


def pads_before_and_after(tag: str, name: str, work: str) -> tuple[int, int]:
    """Pad operations in the exported graph, and in what the runtime runs of it after its own optimisation."""
    import onnx
    import onnxruntime as ort
    import openvino as ov

    from service.inference.runtimes import export_onnx, export_openvino, read_openvino

    stored = load_model(tag)
    if name == "onnx":
        path, optimized = export_onnx(stored), f"{work}/optimized.onnx"
        opts = ort.SessionOptions()  # every graph optimisation, as the service's sessions
        opts.optimized_model_filepath = optimized
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return tuple([n.op_type for n in onnx.load(p).graph.node].count("Pad") for p in (str(path), optimized))
    core, xml = ov.Core(), export_openvino(stored)
    exported = [op.get_type_name() for op in core.read_model(str(xml)).get_ops()]
    compiled = core.compile_model(read_openvino(core, xml, stored.input_shape), "CPU")
    ran = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()]
    return exported.count("Pad"), ran.count("Pad")


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_same_padding_folds_into_the_convolutions(same_padded_model, name, tmp_path):
    exported, ran = in_child(pads_before_and_after, same_padded_model, name, str(tmp_path))
    assert exported > 0 and ran == 0
    assert in_child(fp32_max_difference, same_padded_model, name) < 1e-4


def test_the_recorded_splits_are_read_back_as_batches(trained_model):
    tag = trained_model[0]
    record = load_model(tag).split()
    batches = {split: split_batches(tag, split) for split in ("val", "test")}
    for split in ("val", "test"):
        assert sum(len(b) for b in batches[split]) == len(record[split])
        assert batches[split][0].shape[1:] == (3, 32, 32) and batches[split][0].dtype == np.float32
    assert not np.array_equal(batches["val"][0], batches["test"][0])


@pytest.mark.parametrize("name", ["onnx", "openvino", pytest.param("torch-cuda", marks=needs_cuda)])
def test_fp32_runtimes_give_torch_s_logits_and_embeddings(trained_model, name):
    assert in_child(fp32_max_difference, trained_model[0], name) < 1e-4


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_the_mirror_average_is_in_the_exported_graph(mirrored_model, name):
    kwargs = load_model(mirrored_model).metadata["model_kwargs"]  # stored, so the runtimes rebuild the same graph
    assert kwargs["first_width"] == 4 and kwargs["flip_tta"] is True
    assert in_child(fp32_max_difference, mirrored_model, name) < 1e-4


def test_a_lone_image_runs_on_every_core_where_the_runtime_has_its_own_threads_and_that_is_faster(trained_model):
    got = in_child(lone_image_runtimes, trained_model[0])
    onnx, timed = got["onnx"], got["onnx"].pop("timed")
    assert set(timed["ms"]) == {"shared", "lone"} and timed["why"]  # both timed at load, the verdict explained
    if timed["kept"]:  # which way it goes depends on the processor: not asserted
        assert onnx == {"lone": "onnx", "report": 2, "agrees": True}  # a second session, two threads
    else:
        assert onnx == {"lone": None, "report": None, "agrees": True}  # a lone image on the worker's own runtime
    assert got["torch"]["lone"] is None and got["torch"]["timed"] is None  # torch's threads: one setting a process
    for name in ("onnx", "torch"):  # each size timed at load, and the batch limit chosen from them (not asserted:
        batches = got[f"{name} batches"]  # which size is cheapest depends on the processor)
        assert set(batches["report"]["ms_per_image"]) == {"1", "2", "4"}
        assert batches["limit"] == batches["report"]["limit"] in (1, 2, 4) and batches["report"]["why"]


@needs_cuda
def test_auto_on_a_gpu_measures_the_cuda_runtimes_and_gates_fp16_and_bf16(trained_model):
    report = in_child(auto_report, trained_model[0])
    assert set(report["candidates"]) == {"torch-cuda", "torch-cuda-fp16", "torch-cuda-bf16"}
    assert "agreement" not in report["candidates"]["torch-cuda"]
    for name in ("torch-cuda-fp16", "torch-cuda-bf16"):
        assert "agreement" in report["candidates"][name]
    assert report["chosen"] in report["candidates"] and "refused" not in report["candidates"][report["chosen"]]


def test_cuda_runtimes_are_refused_with_a_reason_without_a_gpu(trained_model):
    from service.inference.runtimes import build_runtime

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="torch-cuda-fp16 needs a CUDA GPU"):
        build_runtime("torch-cuda-fp16", load_model(trained_model[0]), threads=1)


def test_auto_measures_every_candidate_and_int8_is_calibrated_on_validation_images(trained_model):
    tag = trained_model[0]
    chosen = in_child(auto_choice, tag)
    report = chosen["report"]
    assert set(report["candidates"]) >= {"torch", "onnx", "openvino", "openvino-int8"}
    assert report["chosen"] == chosen["runtime"]
    int8 = report["candidates"]["openvino-int8"]
    assert "agreement" in int8 and ("img_per_s" in int8 or int8["refused"].startswith("ValueError: top-1"))
    np.testing.assert_array_equal(chosen["int8_calibration"], np.concatenate(split_batches(tag, "val")))


def test_a_runtime_below_the_agreement_threshold_is_refused(trained_model):
    answer = in_child(named_int8_with_a_perfect_bar, trained_model[0])
    if "error" in answer:
        assert "agreement with fp32" in answer["error"] and "< 1.0" in answer["error"]
    else:
        assert answer["report"]["agreement"] == 1.0  # int8 happened to agree on every test image


def without_split(tag: str, samples: list | None) -> str:
    """``tag``'s model saved under another name with no recorded split (as an imported model has), and
    ``samples``."""
    from training import store

    stored = load_model(tag)
    meta = stored.metadata
    saved = store.save_model("colours-unrecorded", stored.model, architecture=meta["architecture"],
                             model_kwargs=meta["model_kwargs"], classes=stored.classes,
                             preprocessing=stored.preprocessing, metrics={}, config={}, fingerprint="none",
                             samples=samples)  # fmt: skip
    return str(saved.tag)


def test_a_model_without_a_recorded_split_is_checked_on_its_sample_images(trained_model, tmp_path):
    from conftest import colour_image

    from training.weights import representative_images

    for i in range(40):
        colour_image((30 + 5 * i, 200 - 4 * i, 90), 32, seed=500 + i).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    samples = representative_images(tmp_path)
    assert len(samples) == 40
    tag = without_split(trained_model[0], samples)
    assert len(load_model(tag).sample_images()) == 40
    report = in_child(auto_choice, tag)["report"]
    int8 = report["candidates"]["openvino-int8"]
    assert "agreement" in int8, int8  # judged, not refused for lack of images
    assert report["agreement_images"] == "40 sample images stored with the model"

    bare = in_child(auto_report, without_split(trained_model[0], None))
    assert "no images to measure agreement with fp32 on" in bare["candidates"]["openvino-int8"]["refused"]


def auto_report_with_feedback(tag: str, feedback_dir: str) -> dict[str, Any]:
    from service.inference.selection import choose_runtime
    from service.settings import Settings

    settings = Settings(model_name=tag.split(":")[0], max_batch_size=8, feedback_dir=feedback_dir)
    return choose_runtime(load_model(tag), settings.inference(), 1)[1]


def test_with_nothing_else_the_feedback_store_s_live_images_judge_reduced_precision(trained_model, tmp_path):
    from conftest import COLOURS, colour_image

    tag = without_split(trained_model[0], None)
    for name, rgb in COLOURS.items():  # <feedback_dir>/<model>/<label>/<hash>.png, as feedback is kept
        folder = tmp_path / tag.split(":")[0] / name
        folder.mkdir(parents=True)
        for i in range(10):
            colour_image(rgb, 40, seed=900 + i).save(folder / f"{i:02d}.png")
    report = in_child(auto_report_with_feedback, tag, str(tmp_path))
    assert "agreement" in report["candidates"]["openvino-int8"], report  # judged, not refused for lack of images
    assert report["agreement_images"] == "30 feedback images"
