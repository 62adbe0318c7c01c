"""Inference runtimes behind one interface: ``runtime(batch NCHW float32) -> logits (N, C) float32``, and
``runtime.with_embedding(batch)`` for the logits and the penultimate-layer embedding from the same pass (the
drift monitor watches those). Every runtime runs :class:`~training.models.WithEmbedding` around the network.

torch eager (the baseline), torch bf16 + channels-last, ONNX Runtime, OpenVINO (fp32, bf16, int8), and on a
GPU torch CUDA (fp32, fp16, bf16).
Exported artefacts are cached per model version under ``$BENTOML_HOME/exports/<name>/<version>/``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training._env import bentoml_home
from training.models import WithEmbedding
from training.stored import StoredModel

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

CPU_RUNTIMES = ("torch", "torch-bf16", "onnx", "openvino", "openvino-bf16", "openvino-int8")
CUDA_DTYPES = {"torch-cuda": torch.float32, "torch-cuda-fp16": torch.float16, "torch-cuda-bf16": torch.bfloat16}
CUDA_RUNTIMES = tuple(CUDA_DTYPES)
ALL_RUNTIMES = (*CPU_RUNTIMES, *CUDA_RUNTIMES)
REDUCED_PRECISION = ("torch-bf16", "openvino-bf16", "openvino-int8", "torch-cuda-fp16", "torch-cuda-bf16")


@dataclass
class InferenceRuntime:
    """``run(batch) -> (N, classes + embedding)``: the logits in the first ``classes`` columns."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)
    classes: int = 0  # set by build_runtime from the stored model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[:, : self.classes]

    def with_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.run(batch)
        return out[:, : self.classes], out[:, self.classes :]


def export_dir(stored: StoredModel) -> Path:
    name, version = stored.tag.split(":")
    path = bentoml_home() / "exports" / name / version
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(directory: Path, name: str = ".lock") -> Iterator[None]:
    """Serialise exports (or, under another ``name``, anything else) across worker processes that start together."""
    with open(directory / name, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_record(path: Path) -> dict:
    """A JSON record kept beside the exports; empty when absent or unreadable (then measure again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_record(path: Path, record: dict) -> None:
    """Replace ``path`` with ``record`` at once (another worker never reads half of it); hold :func:`locked`."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _example(stored: StoredModel, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *stored.input_shape)


# ---------------------------------------------------------------- torch
def torch_runtime(model: nn.Module, bf16: bool, threads: int) -> InferenceRuntime:
    torch.set_num_threads(threads)
    model = WithEmbedding(model).eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x).float().numpy()

    return InferenceRuntime("torch-bf16" if bf16 else "torch", run, {"channels_last": True})


def cuda_runtime(model: nn.Module, name: str) -> InferenceRuntime:
    """Batched CUDA inference: weights and inputs in the runtime's dtype, channels-last, pinned-memory copies.

    torch-cuda means float32: TF32 is turned off for the process (it would round convolutions to 10 bits of
    mantissa without the agreement check that fp16 and bf16 have to pass).
    """
    dtype = CUDA_DTYPES[name]
    if dtype is torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = WithEmbedding(model).eval().to("cuda", dtype=dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).pin_memory().to("cuda", non_blocking=True)
        logits = model(x.to(dtype=dtype, memory_format=torch.channels_last))
        return logits.float().cpu().numpy()

    return InferenceRuntime(name, run, {"dtype": str(dtype), "device": torch.cuda.get_device_name()})


# ---------------------------------------------------------------- ONNX Runtime
def with_static_padding(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``model``, or a copy whose TF-style "same" convolutions (timm's ``Conv2dSame``) pad by amounts fixed for
    ``input_shape``. Traced, ``Conv2dSame`` computes its padding from the input's size (Shape, Gather, Ceil, ...,
    Pad), which ONNX Runtime cannot fold with a free batch: it ran the Pads and the layout reorders around them,
    30% of EfficientNet-Lite0's time. Constant pads fold into the convolutions. The same weights and answers."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding

    if not any(isinstance(m, Conv2dSame) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sizes[conv] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    for conv, (h, w) in sizes.items():
        pad_h, pad_w = (get_same_padding(n, k, s, d) for n, k, s, d in
                        zip((h, w), conv.kernel_size, conv.stride, conv.dilation, strict=True))  # fmt: skip
        conv.forward = functools.partial(_padded_conv, conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2,
                                                              pad_h - pad_h // 2))  # fmt: skip
    return model


def _padded_conv(conv: nn.Conv2d, pads: tuple[int, int, int, int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _drop_empty_trailing_inputs(path: Path) -> None:
    """Omit the optional inputs the exporter writes as empty names (the same graph in ONNX's semantics): ONNX
    Runtime fuses a Pad into the next convolution only when its optional ``constant_value`` is a constant or
    absent, and torch writes it as ``""``."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            del node.input[-1]
    onnx.save(model, str(path))


def export_onnx(stored: StoredModel) -> Path:
    out = export_dir(stored) / "network-v2.onnx"  # v2: static "same" padding (``with_static_padding``)
    with locked(out.parent):
        if not out.is_file():
            tmp = out.with_suffix(".tmp.onnx")
            model = with_static_padding(stored.model, stored.input_shape)
            torch.onnx.export(
                WithEmbedding(model).eval(), (_example(stored),), str(tmp), input_names=["input"],
                output_names=["outputs"], dynamic_axes={"input": {0: "batch"}, "outputs": {0: "batch"}},
                opset_version=17, dynamo=False,
            )  # fmt: skip
            _drop_empty_trailing_inputs(tmp)
            tmp.replace(out)
    return out


def onnx_runtime(stored: StoredModel, threads: int, spin: bool = True) -> InferenceRuntime:
    """``spin=False`` for threads that share their cores with other workers: idle ONNX Runtime threads
    otherwise spin-wait for the next run, burning the cores the other workers need."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(export_onnx(stored)), opts, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": batch})[0]

    return InferenceRuntime("onnx", run)


# ---------------------------------------------------------------- OpenVINO
def export_openvino(stored: StoredModel, calibration: Callable[[], Iterator[np.ndarray]] | None = None) -> Path:
    """OpenVINO IR (fp32 weights); with ``calibration``, the NNCF int8-quantised IR instead."""
    import openvino as ov

    name = "network-int8.xml" if calibration else "network.xml"
    out = export_dir(stored) / name
    with locked(out.parent):
        if not out.is_file():
            ov_model = ov.convert_model(WithEmbedding(stored.model).eval(), example_input=_example(stored))
            if calibration is not None:
                import nncf

                ov_model = nncf.quantize(ov_model, nncf.Dataset(list(calibration())), subset_size=300)
            tmp = out.with_name("tmp-" + name)
            ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
            tmp.replace(out)
            tmp.with_suffix(".bin").replace(out.with_suffix(".bin"))
    return out


def read_openvino(core: ov.Core, xml: Path, input_shape: tuple[int, ...]) -> ov.Model:
    """The IR with the model's image shape fixed and the batch left free. Exported, it takes any shape; fixed
    sides make the "same" padding of TF-ported networks (an explicit Pad before each strided convolution in
    EfficientNet-Lite) constant, so it folds into the convolutions instead of copying every feature map
    (EfficientNet-Lite0: ~15% of its time, batch 16)."""
    import openvino as ov

    model = core.read_model(str(xml))
    model.reshape(ov.PartialShape([-1, *input_shape]))
    return model


def openvino_runtime(stored: StoredModel, precision: str, threads: int,
                     calibration: Callable[[], Iterator[np.ndarray]] | None = None) -> InferenceRuntime:  # fmt: skip
    import openvino as ov

    xml = export_openvino(stored, calibration if precision == "int8" else None)
    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_CPU_PINNING": False,  # several worker processes share the cores
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    compiled = core.compile_model(read_openvino(core, xml, stored.input_shape), "CPU", config)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: batch})[0], dtype=np.float32)

    name = "openvino" if precision == "fp32" else f"openvino-{precision}"
    return InferenceRuntime(name, run)


def bf16_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Runtimes with a thread pool of their own, so one process can hold two instances with different thread counts
# (torch's threads are one setting for the whole process).
OWN_THREAD_POOL = ("onnx", "openvino", "openvino-bf16", "openvino-int8")


def build_runtime(name: str, stored: StoredModel, threads: int,
                  calibration: Callable[[], Iterator[np.ndarray]] | None = None,
                  shared_cores: bool = False) -> InferenceRuntime:  # fmt: skip
    """Build one runtime by name (``shared_cores``: its threads share their cores with other workers').
    Raises ValueError for a runtime this machine cannot run."""
    runtime = _build(name, stored, threads, calibration, shared_cores)
    runtime.classes = len(stored.classes)
    return runtime


def _build(name: str, stored: StoredModel, threads: int, calibration: Callable[[], Iterator[np.ndarray]] | None,
           shared_cores: bool) -> InferenceRuntime:  # fmt: skip
    if name in ("torch-bf16", "openvino-bf16") and not bf16_supported():
        raise ValueError(f"{name} needs a CPU with bf16 support")
    if name in CUDA_RUNTIMES:
        if not torch.cuda.is_available():
            raise ValueError(f"{name} needs a CUDA GPU")
        if name == "torch-cuda-bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{name} needs a GPU with bf16 support")
        return cuda_runtime(copy.deepcopy(stored.model), name)
    if name == "torch":
        return torch_runtime(stored.model, bf16=False, threads=threads)
    if name == "torch-bf16":
        return torch_runtime(stored.model, bf16=True, threads=threads)
    if name == "onnx":
        return onnx_runtime(stored, threads, spin=not shared_cores)
    if name.startswith("openvino"):
        precision = name.partition("-")[2] or "fp32"
        if precision == "int8" and calibration is None:
            raise ValueError("openvino-int8 needs calibration images (the model's recorded split)")
        return openvino_runtime(stored, precision, threads, calibration)
    raise ValueError(f"unknown runtime {name!r}; choose from auto, {', '.join(ALL_RUNTIMES)}")
