"""The Open Inference Protocol (KServe v2, as Triton speaks it) for the served classifier, transport-free.

One model, named by ``IMGCLF_MODEL_NAME``, its version the served tag's version. Inputs (exactly one):

- ``image``: BYTES ``[N]``, encoded image files (JPEG, PNG, ...), decoded and preprocessed by the service;
- ``input``: FP32 ``[N, C, H, W]``, already preprocessed as ``GET /model`` describes.

Output ``probabilities``: FP32 ``[N, num_classes]``; requested with the classification extension
(``classification: k``) it is BYTES ``[N, k]`` of ``"score:index:label"``, best first. Both the gRPC
server and the ``/v2`` HTTP routes call :func:`infer`, which goes through the same batcher as
``/classify``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInput, PayloadTooLarge, ServiceError
from .inference import Classifier
from .serving import ServingState

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
OUTPUT = "probabilities"
SERVER_NAME = "imgclf"
EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration"]
ENDPOINT = "/v2/infer"  # the metrics label for images arriving through the protocol
DTYPES = {"FP32": np.dtype("<f4")}


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


def check_model(state: ServingState, name: str, version: str = "") -> Classifier:
    """The served classifier if ``name`` (and ``version``, when given) is what this server serves."""
    clf = state.require()
    served = state.settings.model_name
    if name != served:
        raise InvalidInput(f"unknown model {name!r}; this server serves {served!r}", reason="unknown_model")
    if version and version != version_of(clf):
        raise InvalidInput(f"model {name!r} version {version!r} is not served; the served version is "
                           f"{version_of(clf)!r}", reason="unknown_version")  # fmt: skip
    return clf


def model_metadata(clf: Classifier, name: str) -> dict[str, Any]:
    c, h, w = clf.input_shape
    return {
        "name": name,
        "versions": [version_of(clf)],
        "platform": f"imgclf_{clf.runtime.name}",
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(clf.classes)]}],
        "parameters": {"classes": clf.classes, "tag": clf.tag,
                       "preprocessing": clf.stored.preprocessing.model_dump(mode="json")},
    }  # fmt: skip


async def infer(state: ServingState, req: InferRequest) -> InferResponse:
    """Run one request. Raises :class:`ServiceError` (mapped to a gRPC code or HTTP status by the caller)."""
    check_model(state, req.model_name, req.model_version)
    if len(req.inputs) != 1:
        raise InvalidInput(f"send exactly one input, got {len(req.inputs)}: '{IMAGE_INPUT}' (BYTES [N], encoded "
                           f"image files) or '{TENSOR_INPUT}' (FP32 [N, C, H, W], preprocessed)",
                           reason="bad_inputs")  # fmt: skip
    tensor = req.inputs[0]
    if tensor.name == IMAGE_INPUT:
        clf, probs = await _infer_images(state, tensor)
    elif tensor.name == TENSOR_INPUT:
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input '{TENSOR_INPUT}' must be FP32, got {tensor.datatype}", reason="bad_datatype")
        clf, probs = await state.probabilities_of_tensors(tensor.data, ENDPOINT)
    else:
        raise InvalidInput(f"unknown input {tensor.name!r}; inputs are '{IMAGE_INPUT}' (BYTES) and "
                           f"'{TENSOR_INPUT}' (FP32)", reason="bad_inputs")  # fmt: skip
    outputs = [_output(clf, probs, o) for o in req.outputs or [RequestedOutput(OUTPUT)]]
    return InferResponse(req.model_name, version_of(clf), req.id, outputs)


async def _infer_images(state: ServingState, tensor: Tensor) -> tuple[Classifier, np.ndarray]:
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{IMAGE_INPUT}' must be BYTES (encoded image files), got {tensor.datatype}",
                           reason="bad_datatype")  # fmt: skip
    images = list(tensor.data)
    if not images:
        raise InvalidInput(f"input '{IMAGE_INPUT}' holds no images", reason="bad_shape")
    limit = state.settings.max_batch_images
    if len(images) > limit:
        raise PayloadTooLarge(f"{len(images)} images in one request; the maximum is {limit}", reason="too_many_images")
    clf, results = await state.probabilities(images, ENDPOINT)
    for i, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise type(result)(f"{IMAGE_INPUT}[{i}]: {result.message}", reason=result.reason)
    return clf, np.stack(results)


def _output(clf: Classifier, probs: np.ndarray, requested: RequestedOutput) -> Tensor:
    if requested.name != OUTPUT:
        raise InvalidInput(f"unknown output {requested.name!r}; the output is '{OUTPUT}'", reason="bad_outputs")
    if not requested.classification:
        return Tensor(OUTPUT, "FP32", list(probs.shape), probs.astype(np.float32))
    k = min(requested.classification, len(clf.classes))
    order = np.argsort(-probs, axis=1)[:, :k]
    rows = [[f"{probs[n, i]:f}:{i}:{clf.classes[i]}".encode() for i in order[n]] for n in range(len(probs))]
    return Tensor(OUTPUT, "BYTES", [len(probs), k], [item for row in rows for item in row])


# ---------------------------------------------------------------- wire encodings shared by gRPC and HTTP
def decode_bytes(raw: bytes) -> list[bytes]:
    """The protocol's raw BYTES encoding: each element a little-endian uint32 length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("malformed BYTES tensor: truncated length prefix", reason="bad_tensor")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise InvalidInput("malformed BYTES tensor: an element runs past the end", reason="bad_tensor")
        items.append(raw[offset : offset + n])
        offset += n
    return items


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_numeric(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"datatype {datatype} is not accepted here; use FP32 or BYTES", reason="bad_datatype")
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise InvalidInput(f"{datatype} tensor of shape {shape} needs {int(np.prod(shape)) * dtype.itemsize} bytes, "
                           f"got {len(raw)}", reason="bad_shape")  # fmt: skip
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def tensor_bytes(t: Tensor) -> bytes:
    """A response tensor in the raw encoding."""
    return encode_bytes(t.data) if t.datatype == "BYTES" else np.ascontiguousarray(t.data, "<f4").tobytes()
