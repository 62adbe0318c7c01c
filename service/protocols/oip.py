"""The Open Inference Protocol (KServe v2, as Triton speaks it) for the served classifier, transport-free.

One model, named by ``IMGCLF_MODEL_NAME``, its version the served tag's version. Inputs (exactly one):

- ``image``: BYTES ``[N]``, encoded image files (JPEG, PNG, ...), decoded and preprocessed by the service;
- ``input``: FP32 ``[N, C, H, W]``, already preprocessed as ``GET /model`` describes.

Outputs (all of them unless the request names some):

- ``probabilities``: FP32 ``[N, num_classes]`` (multi-label models: each label's sigmoid score);
- multi-label models: ``labels``, BOOL ``[N, num_classes]``, true where a score reaches its threshold;
- hierarchical models: ``level_<d>``, FP32 ``[N, nodes at depth d]``, each node's probability (the
  sum of its leaves'); the node names are in the model metadata's ``parameters.levels``.

Requested with the classification extension (``classification: k``) an FP32 output is BYTES
``[N, k]`` of ``"score:index:label"``, best first. Both the gRPC server and the ``/v2`` HTTP routes
call :func:`infer`, which goes through the same batcher as ``/classify``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput, ServiceError
from service.inference.classifier import Classifier
from service.serving import ClassifyPath

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
OUTPUT = "probabilities"
LABELS_OUTPUT = "labels"
LEVEL_OUTPUT = "level_{}"
SERVER_NAME = "imgclf"
EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "model_repository"]
ENDPOINT = "/v2/infer"  # the metrics label for images arriving through the protocol


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: Any  # list[bytes] for BYTES, np.ndarray otherwise


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0
    binary: bool = True  # HTTP only: answer in the binary tensor extension


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


def version_of(clf: Classifier) -> str:
    return clf.tag.split(":", 1)[1]


def server_metadata() -> dict[str, Any]:
    from importlib.metadata import version

    return {"name": SERVER_NAME, "version": version("imgclf"), "extensions": EXTENSIONS}


def repository_index(path: ClassifyPath, ready_only: bool = False) -> list[dict[str, str]]:
    """The model repository as Triton lists it: the one served model, its version and state.

    ``READY`` with the served version once loaded; ``LOADING`` (no version yet) before. ``ready_only``
    (the request's ``ready`` flag) leaves out a model that is not ready.
    """
    clf = path.classifier
    name = path.model_name
    if clf is not None:
        return [{"name": name, "version": version_of(clf), "state": "READY", "reason": ""}]
    if ready_only:
        return []
    return [{"name": name, "version": "", "state": "LOADING", "reason": "the model is still loading"}]


def check_model(path: ClassifyPath, name: str, version: str = "") -> Classifier:
    """The served classifier if ``name`` (and ``version``, when given) is what this server serves."""
    clf = path.require()
    served = path.model_name
    if name != served:
        raise InvalidInput(f"unknown model {name!r}; this server serves {served!r}", reason="unknown_model")
    if version and version != version_of(clf):
        raise InvalidInput(f"model {name!r} version {version!r} is not served; the served version is "
                           f"{version_of(clf)!r}", reason="unknown_version")  # fmt: skip
    return clf


def output_names(clf: Classifier) -> dict[str, list[str]]:
    """Each output's column names: the classes, or a tree level's nodes."""
    task = clf.task
    out = {OUTPUT: clf.classes}
    if task.multilabel:
        out[LABELS_OUTPUT] = clf.classes
    if task.taxonomy is not None:
        out |= {LEVEL_OUTPUT.format(d): nodes for d, nodes in enumerate(task.levels(), start=1)}
    return out


def outputs_of(clf: Classifier) -> list[dict[str, Any]]:
    return [{"name": name, "datatype": "BOOL" if name == LABELS_OUTPUT else "FP32", "shape": [-1, len(cols)]}
            for name, cols in output_names(clf).items()]  # fmt: skip


def task_parameters(clf: Classifier) -> dict[str, Any]:
    """What a client needs to read the outputs: task, thresholds, taxonomy and the levels' nodes."""
    out = clf.task.metadata()
    if clf.task.taxonomy is not None:
        out["levels"] = clf.task.levels()
    return out


def model_metadata(clf: Classifier, name: str) -> dict[str, Any]:
    c, h, w = clf.input_shape
    return {
        "name": name,
        "versions": [version_of(clf)],
        "platform": f"imgclf_{clf.runtime.name}",
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": outputs_of(clf),
        "parameters": {"classes": clf.classes, "tag": clf.tag, **task_parameters(clf),
                       "preprocessing": clf.stored.preprocessing.model_dump(mode="json")},
    }  # fmt: skip


async def infer(path: ClassifyPath, req: InferRequest) -> InferResponse:
    """Run one request. Raises :class:`ServiceError` (mapped to a gRPC code or HTTP status by the caller)."""
    check_model(path, req.model_name, req.model_version)
    if len(req.inputs) != 1:
        raise InvalidInput(f"send exactly one input, got {len(req.inputs)}: '{IMAGE_INPUT}' (BYTES [N], encoded "
                           f"image files) or '{TENSOR_INPUT}' (FP32 [N, C, H, W], preprocessed)",
                           reason="bad_inputs")  # fmt: skip
    tensor = req.inputs[0]
    if tensor.name == IMAGE_INPUT:
        clf, probs = await _infer_images(path, tensor)
    elif tensor.name == TENSOR_INPUT:
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input '{TENSOR_INPUT}' must be FP32, got {tensor.datatype}", reason="bad_datatype")
        clf, probs = await path.probabilities_of_tensors(tensor.data, ENDPOINT)
    else:
        raise InvalidInput(f"unknown input {tensor.name!r}; inputs are '{IMAGE_INPUT}' (BYTES) and "
                           f"'{TENSOR_INPUT}' (FP32)", reason="bad_inputs")  # fmt: skip
    requested = req.outputs or [RequestedOutput(name) for name in output_names(clf)]
    outputs = [_output(clf, probs, o) for o in requested]
    return InferResponse(req.model_name, version_of(clf), req.id, outputs)


async def _infer_images(path: ClassifyPath, tensor: Tensor) -> tuple[Classifier, np.ndarray]:
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{IMAGE_INPUT}' must be BYTES (encoded image files), got {tensor.datatype}",
                           reason="bad_datatype")  # fmt: skip
    clf, results = await path.probabilities(list(tensor.data), ENDPOINT)  # admitted there, as for every protocol
    for i, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise type(result)(f"{IMAGE_INPUT}[{i}]: {result.message}", reason=result.reason)
    return clf, np.stack(results)


def _output(clf: Classifier, probs: np.ndarray, requested: RequestedOutput) -> Tensor:
    names = output_names(clf)
    name = requested.name
    if name not in names:
        raise InvalidInput(f"unknown output {name!r}; this model's outputs are {', '.join(names)}",
                           reason="bad_outputs")  # fmt: skip
    if name == LABELS_OUTPUT:
        if requested.classification:
            raise InvalidInput(f"the classification extension applies to '{OUTPUT}' and level outputs, not "
                               f"'{LABELS_OUTPUT}'", reason="bad_outputs")  # fmt: skip
        decided = clf.task.decisions(probs)
        return Tensor(name, "BOOL", list(decided.shape), decided)
    values = probs if name == OUTPUT else probs @ clf.task.level(int(name.rsplit("_", 1)[1]))[1]
    if not requested.classification:
        return Tensor(name, "FP32", list(values.shape), values.astype(np.float32))
    cols = names[name]
    k = min(requested.classification, len(cols))
    order = np.argsort(-values, axis=1)[:, :k]
    rows = [[f"{values[n, i]:f}:{i}:{cols[i]}".encode() for i in order[n]] for n in range(len(values))]
    return Tensor(name, "BYTES", [len(values), k], [item for row in rows for item in row])
